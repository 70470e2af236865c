"""Resuming interrupted runs: a launcher killed with SIGKILL after a checkpoint resumes from
it when the runner runs again, and a checkpoint cut short by the kill is skipped.

The launcher here keeps threestudio's checkpoint contract (``<trial>/ckpts/last.ckpt`` and
``epoch=0-step=<s>.ckpt`` written with torch.save, continuation from ``resume=<ckpt>``) and
kills itself with SIGKILL at a configured step, so the kill lands at a known point."""
import os
import textwrap

import pytest
import torch

from threestudio_stabledreamer.benchmark import cli
from threestudio_stabledreamer.benchmark.executor import resume_checkpoint
from threestudio_stabledreamer.benchmark.runs import RunRecord, prompt_slug

CHECKPOINTING_LAUNCHER = """
import argparse, io, os, signal
import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

parser = argparse.ArgumentParser()
parser.add_argument("--config", required=True)
parser.add_argument("--train", action="store_true")
args, extras = parser.parse_known_args()
cfg = OmegaConf.merge(OmegaConf.load(args.config), OmegaConf.from_cli(extras))
trial = os.path.join(cfg.exp_root_dir, cfg.name, cfg.tag)
ckpts = os.path.join(trial, "ckpts")
os.makedirs(ckpts, exist_ok=True)
start = 0 if cfg.resume is None else torch.load(cfg.resume, weights_only=False)["global_step"]
with open("launches.txt", "a") as f:
    f.write(f"{cfg.name}|{start}|{cfg.resume}\\n")

def checkpoint_bytes(step):
    buffer = io.BytesIO()
    torch.save({"global_step": step, "state_dict": {"w": torch.full((256,), float(step))}}, buffer)
    return buffer.getvalue()

for step in range(start + 1, cfg.trainer.max_steps + 1):
    data = checkpoint_bytes(step)
    if step == cfg.kill_at_step and start == 0:
        if cfg.cut_short:  # killed in the middle of writing this step's checkpoints
            for name in (f"epoch=0-step={step}.ckpt", "last.ckpt"):
                with open(os.path.join(ckpts, name), "wb") as f:
                    f.write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    for name in (f"epoch=0-step={step}.ckpt", "last.ckpt"):
        with open(os.path.join(ckpts, name), "wb") as f:
            f.write(data)

test_dir = os.path.join(trial, "save", f"it{cfg.trainer.max_steps}-test")
os.makedirs(test_dir, exist_ok=True)
for index in range(3):
    Image.fromarray(np.full((16, 16, 3), 40 * index, np.uint8)).save(os.path.join(test_dir, f"{index}.png"))
"""


def setup_comparison(tmp_path, tiny_models, kill_at_step, cut_short):
    launcher_dir = tmp_path / "launcher"
    launcher_dir.mkdir()
    (launcher_dir / "launch.py").write_text(CHECKPOINTING_LAUNCHER)
    config = tmp_path / "method.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            name: unset
            tag: unset
            use_timestamp: true
            exp_root_dir: outputs
            resume: null
            kill_at_step: {kill_at_step}
            cut_short: {str(cut_short).lower()}
            trainer:
              max_steps: 4
            system:
              prompt_processor:
                prompt: ???
            """
        )
    )
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a corgi\n")
    out = tmp_path / "out"
    argv = [
        "--launcher", str(launcher_dir / "launch.py"), "--configs", str(config),
        "--prompts", str(prompts), "--out", str(out), "--gpus", "cpu",
        "--clip-model", str(tiny_models["clip"]), "--progress-interval", "0",
    ]
    return argv, launcher_dir / "launches.txt", out


def test_run_killed_after_a_checkpoint_resumes_from_it_on_the_next_invocation(tmp_path, tiny_models, capsys):
    argv, launches, out = setup_comparison(tmp_path, tiny_models, kill_at_step=2, cut_short=False)
    trial = out / "runs" / "method" / prompt_slug("a corgi")

    assert cli.main(argv) == 1  # SIGKILL during step 2, after step 1's checkpoint
    assert "FAILED: method | a corgi" in capsys.readouterr().err
    assert sorted(p.name for p in (trial / "ckpts").iterdir()) == ["epoch=0-step=1.ckpt", "last.ckpt"]

    assert cli.main(argv) == 0
    output = capsys.readouterr().out
    first, second = launches.read_text().splitlines()
    assert first == "method|0|None"
    name, start, resume = second.split("|")
    assert start == "1" and os.path.dirname(resume) == str(trial / "ckpts")
    assert "resuming method | a corgi from" in output
    record = RunRecord.load(out / "records" / "method" / f"{prompt_slug('a corgi')}.json")
    assert record.resumed_from == resume
    log = (out / "logs" / "method" / f"{prompt_slug('a corgi')}.log").read_text()
    assert log.count("$ ") == 2  # the resumed launch appends to the killed one's log
    assert torch.load(trial / "ckpts" / "last.ckpt", weights_only=False)["global_step"] == 4


def test_checkpoint_cut_short_by_the_kill_is_skipped_and_logged(tmp_path, tiny_models, capsys):
    argv, launches, out = setup_comparison(tmp_path, tiny_models, kill_at_step=3, cut_short=True)
    # one invocation: the retry resumes from step 2, the last checkpoint written whole
    assert cli.main([*argv, "--retries", "1"]) == 0
    output = capsys.readouterr().out
    first, second = launches.read_text().splitlines()
    assert first == "method|0|None"
    assert second.startswith("method|2|") and second.endswith("epoch=0-step=2.ckpt")
    assert "does not load" in output and "retry 1/1" in output
    log = (out / "logs" / "method" / f"{prompt_slug('a corgi')}.log").read_text()
    assert "last.ckpt does not load" in log and "epoch=0-step=3.ckpt does not load" in log
    assert "using an earlier one" in log


def test_resume_checkpoint_prefers_the_newest_loadable_file(tmp_path):
    ckpts = tmp_path / "ckpts"
    assert resume_checkpoint(tmp_path) == (None, [])
    ckpts.mkdir()
    for step in (1, 2):
        torch.save({"global_step": step}, ckpts / f"epoch=0-step={step}.ckpt")
        os.utime(ckpts / f"epoch=0-step={step}.ckpt", ns=(step * 10**9, step * 10**9))
    (ckpts / "last.ckpt").write_bytes((ckpts / "epoch=0-step=2.ckpt").read_bytes()[:100])
    os.utime(ckpts / "last.ckpt", ns=(3 * 10**9, 3 * 10**9))
    (ckpts / "notes.txt").write_text("not a checkpoint")
    path, skipped = resume_checkpoint(tmp_path)
    assert path == ckpts / "epoch=0-step=2.ckpt"
    assert [s.path.name for s in skipped] == ["last.ckpt"]
    torch.save({"state_dict": {}}, ckpts / "epoch=0-step=2.ckpt")  # loads, but holds no step
    path, skipped = resume_checkpoint(tmp_path)
    assert path == ckpts / "epoch=0-step=1.ckpt"
    assert "no 'global_step'" in skipped[0].reason
    for ckpt in ckpts.glob("*.ckpt"):
        ckpt.write_bytes(b"")
    path, skipped = resume_checkpoint(tmp_path)
    assert path is None and len(skipped) == 3


def test_retries_must_not_be_negative(tmp_path, tiny_models):
    argv, _, _ = setup_comparison(tmp_path, tiny_models, kill_at_step=0, cut_short=False)
    with pytest.raises(SystemExit, match="--retries: expected a number >= 0, got -1"):
        cli.main([*argv, "--retries", "-1"])
