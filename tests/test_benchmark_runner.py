"""The benchmark runner: run planning, the measuring wrapper, the whole runner on a fake
launcher (fast), and end to end through the launcher in use (``conftest.LAUNCHER``) with
the real configs."""
import csv
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from threestudio_stabledreamer.benchmark import cli
from threestudio_stabledreamer.benchmark.executor import MEASURE_SCRIPT
from threestudio_stabledreamer.benchmark.progress import StepProgress, parse_progress
from threestudio_stabledreamer.benchmark.runs import (
    Method,
    Run,
    find_test_renders,
    launcher_overrides,
    prompt_slug,
    read_prompts,
    rgb_panel,
)
from threestudio_stabledreamer.benchmark.video_grid import MIN_TILE_HEIGHT, read_video_frames

from conftest import LAUNCHER
from tiny_run_overrides import CONFIGS, GUIDANCE_SYSTEM_KEYS, cpu_size_overrides, tiny_model_overrides

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- planning and parsing


def test_prompt_slug_is_safe_and_distinguishes_prompts():
    a = prompt_slug("a dslr photo of a tarantula, highly detailed")
    b = prompt_slug("a DSLR photo of a tarantula; highly detailed")
    assert re.fullmatch(r"[a-z0-9_]+-[0-9a-f]{8}", a)
    assert a.startswith("a_dslr_photo_of_a_tarantula_highly_detailed-")
    assert a != b
    assert len(prompt_slug("word " * 100)) <= 60 + 9


def test_read_prompts_skips_comments_and_rejects_duplicates(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# comment\n\na corgi\n  a hamburger  \n")
    assert read_prompts(path) == ["a corgi", "a hamburger"]
    path.write_text("a corgi\na corgi\n")
    with pytest.raises(ValueError, match="repeats"):
        read_prompts(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")


def test_default_prompt_file_holds_the_seven_comparison_prompts():
    assert cli.DEFAULT_PROMPTS == REPO_ROOT / "configs" / "stabledreamer-prompts.txt"
    prompts = read_prompts(cli.DEFAULT_PROMPTS)
    assert len(prompts) == 7
    assert "a zoomed out dslr photo of a corgi wearing a top hat" in prompts


def test_overrides_reach_omegaconf_verbatim(tmp_path):
    prompt = 'a "quoted" prompt: with colon, comma and back\\slash'
    method = Method("gaussian-hifa", tmp_path / "c.yaml", ("trainer.max_steps=3",))
    run = Run(method, prompt, 0)
    overrides = launcher_overrides(run, tmp_path / "out dir", extra=("trainer.max_steps=7", "seed=1"))
    parsed = OmegaConf.from_cli(overrides)
    assert parsed.system.prompt_processor.prompt == prompt
    assert parsed.name == "gaussian-hifa"
    assert parsed.tag == run.slug
    assert parsed.use_timestamp is False
    assert parsed.exp_root_dir == str(tmp_path / "out dir" / "runs")
    assert parsed.seed == 1
    assert parsed.trainer.max_steps == 3  # the method's own override wins over the global one
    numeric = Run(Method("1e5", tmp_path / "c.yaml"), "!!!", 0)  # a slug of hex digits only
    parsed = OmegaConf.from_cli(launcher_overrides(numeric, tmp_path))
    assert parsed.name == "1e5" and parsed.tag == numeric.slug and isinstance(parsed.tag, str)


def test_rgb_panel_is_the_leftmost_square():
    grid = np.zeros((8, 24, 3), dtype=np.uint8)
    grid[:, :8] = 10
    grid[:, 8:] = 200
    panel = rgb_panel(grid)
    assert panel.shape == (8, 8, 3) and (panel == 10).all()
    assert rgb_panel(grid, panel_width=12).shape == (8, 12, 3)
    with pytest.raises(ValueError, match="not a multiple of its height"):
        rgb_panel(np.zeros((8, 20, 3), dtype=np.uint8))


def test_test_renders_come_from_the_last_test_dir_in_index_order(tmp_path):
    for step, count in ((5, 2), (40, 12), (100, 0)):
        directory = tmp_path / "save" / f"it{step}-test"
        directory.mkdir(parents=True)
        for index in range(count):
            (directory / f"{index}.png").touch()
    (tmp_path / "save" / "it40-test" / "notes.txt").touch()
    assert find_test_renders(tmp_path) == []  # the latest test dir (it100) is empty
    (tmp_path / "save" / "it100-test").rmdir()
    names = [p.name for p in find_test_renders(tmp_path)]
    assert names == [f"{i}.png" for i in range(12)]


def test_progress_parsing_of_lightning_bars():
    train = "Epoch 0:  45%|####5     | 450/1000 [00:10<00:12, 45.0it/s, train/loss=1.2]"
    assert parse_progress(train) == StepProgress("train", 450, 1000)
    assert parse_progress("Epoch 0: | 12/? [00:01<00:00]") == StepProgress("train", 12, None)
    assert parse_progress("Testing DataLoader 0:  10%|#  | 12/120 [00:01<00:10]") == StepProgress("test", 12, 120)
    assert parse_progress("Import times for custom modules:") is None


# ---------------------------------------------------------------- the measuring wrapper

PROBE_LAUNCHER = """
import json, os, sys, time
argv = sys.argv[1:]
if "--allocate" in argv:
    block = b"x" * (64 * 1024 * 1024)  # 64 MiB, every page written
time.sleep(0.1)
with open(os.path.join(os.getcwd(), "probe.json"), "w") as f:
    json.dump({"argv": argv, "cwd": os.getcwd(), "path0": sys.path[0],
               "extension_imported": any(m.startswith("threestudio_stabledreamer") for m in sys.modules)}, f)
if "--raise" in argv:
    raise ValueError("launcher failed on purpose")
if "--exit" in argv:
    sys.exit(3)
"""


def run_wrapper(tmp_path, *launcher_args):
    launcher_dir = tmp_path / "launcher"
    launcher_dir.mkdir(exist_ok=True)
    (launcher_dir / "launch.py").write_text(PROBE_LAUNCHER)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    record = tmp_path / "record.json"
    completed = subprocess.run(
        [sys.executable, str(MEASURE_SCRIPT), "--record", str(record), "--cwd", str(work),
         str(launcher_dir / "launch.py"), *launcher_args],
        capture_output=True, text=True, timeout=120,
    )
    return completed, json.loads(record.read_text()), json.loads((work / "probe.json").read_text())


def test_wrapper_runs_the_launcher_in_process_and_records_time_and_memory(tmp_path):
    completed, record, probe = run_wrapper(tmp_path, "--config", "x.yaml", "--train", "a.b=c", "--allocate")
    assert completed.returncode == 0, completed.stderr
    assert probe["argv"] == ["--config", "x.yaml", "--train", "a.b=c", "--allocate"]
    assert probe["cwd"] == str(tmp_path / "work")
    assert probe["path0"] == str(tmp_path / "launcher")
    assert probe["extension_imported"] is False
    assert record["exit_code"] == 0 and record["error"] is None
    assert record["wall_time_s"] >= 0.1
    assert record["memory_kind"] == "cpu-rss"
    assert record["peak_memory_bytes"] == record["peak_rss_bytes"] >= 64 * 1024 * 1024
    assert record["peak_cuda_memory_bytes"] is None


def test_wrapper_peak_memory_is_the_launchers_not_its_parents(tmp_path):
    """This test process holds torch and more; the wrapper's figure must not inherit it."""
    _, idle, _ = run_wrapper(tmp_path)
    _, busy, _ = run_wrapper(tmp_path, "--allocate")
    mib = 1024 * 1024
    assert busy["peak_rss_bytes"] - idle["peak_rss_bytes"] >= 60 * mib
    assert idle["peak_rss_bytes"] < 64 * mib  # a bare Python interpreter


def test_wrapper_records_failures_and_exit_codes(tmp_path):
    completed, record, _ = run_wrapper(tmp_path, "--raise")
    assert completed.returncode == 1
    assert record["exit_code"] == 1 and "ValueError: launcher failed on purpose" in record["error"]
    completed, record, _ = run_wrapper(tmp_path, "--exit")
    assert completed.returncode == 3 and record["exit_code"] == 3


# ---------------------------------------------------------------- the runner on a fake launcher

FAKE_LAUNCHER = """
import argparse, os, sys
import numpy as np
from omegaconf import OmegaConf
from PIL import Image

parser = argparse.ArgumentParser()
parser.add_argument("--config", required=True)
parser.add_argument("--gpu", default="0")
parser.add_argument("--train", action="store_true")
args, extras = parser.parse_known_args()
cfg = OmegaConf.merge(OmegaConf.load(args.config), OmegaConf.from_cli(extras))
assert args.train and cfg.use_timestamp is False
with open("launches.txt", "a") as f:
    f.write(cfg.name + "|" + cfg.system.prompt_processor.prompt + "\\n")
if cfg.fail:
    raise RuntimeError("this method fails")
steps = cfg.trainer.max_steps
for step in range(1, steps + 1):
    sys.stderr.write(f"\\rEpoch 0: {100 * step // steps}%|##| {step}/{steps} [00:00<00:00]")
    sys.stderr.flush()
save = os.path.join(cfg.exp_root_dir, cfg.name, cfg.tag, "save")
os.makedirs(os.path.join(save, "it1-test"))
Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(os.path.join(save, "it1-test", "0.png"))
test_dir = os.path.join(save, f"it{steps}-test")
os.makedirs(test_dir)
for index in range(cfg.data.n_test_views):
    frame = np.zeros((32, 64, 3), np.uint8)
    frame[:, :32] = list(cfg.colour)   # rgb panel
    frame[:, 32:] = 128                # a second panel (e.g. opacity), not scored
    frame[index % 32, :32] = 255
    Image.fromarray(frame).save(os.path.join(test_dir, f"{index}.png"))
"""


def fake_config(path, colour, fail=False):
    path.write_text(
        textwrap.dedent(
            f"""\
            name: unset
            tag: unset
            use_timestamp: true
            exp_root_dir: outputs
            colour: {list(colour)}
            fail: {str(fail).lower()}
            data:
              n_test_views: 6
            trainer:
              max_steps: 4
            system:
              prompt_processor:
                prompt: ???
            """
        )
    )
    return path


def read_csv(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_runner_on_a_fake_launcher_measures_scores_and_resumes(tmp_path, tiny_models, capsys):
    launcher_dir = tmp_path / "launcher"
    launcher_dir.mkdir()
    (launcher_dir / "launch.py").write_text(FAKE_LAUNCHER)
    red = fake_config(tmp_path / "red.yaml", (220, 20, 20))
    blue = fake_config(tmp_path / "blue.yaml", (20, 20, 220))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a corgi, "zoomed out": top hat\na hamburger\n')
    out = tmp_path / "out"
    argv = [
        "--launcher", str(launcher_dir / "launch.py"),
        "--configs", str(red), f"bluish={blue}",
        "--prompts", str(prompts), "--out", str(out), "--gpus", "cpu",
        "--clip-model", str(tiny_models["clip"]), "--fps", "10", "--progress-interval", "0",
        "--method-override", "bluish", "data.n_test_views=3",
        "--", "trainer.max_steps=5",
    ]

    assert cli.main(argv) == 0
    first_output = capsys.readouterr().out
    launches = (launcher_dir / "launches.txt").read_text().splitlines()
    assert sorted(launches) == sorted(
        f"{m}|{p}" for m in ("red", "bluish") for p in ('a corgi, "zoomed out": top hat', "a hamburger")
    )
    assert "runs 4/4 done" in first_output
    assert "train 5/5" in first_output

    results = read_csv(out / "results.csv")
    assert [row["method"] for row in results] == ["red", "bluish"]
    for row in results:
        assert row["finished_runs"] == "2" and row["prompts"] == "2"
        assert float(row["mean_wall_time_s"]) > 0
        assert float(row["mean_peak_memory_mib"]) > 10  # a Python process with numpy and PIL
        assert row["memory_kind"] == "cpu-rss"
        assert -1 <= float(row["mean_clip_score"]) <= 1
        assert float(row["clip_r_precision"]) in (0.0, 0.5, 1.0)
    runs = read_csv(out / "runs.csv")
    assert len(runs) == 4
    markdown = (out / "results.md").read_text()
    assert "| red | 2/2 |" in markdown and "| bluish | 2/2 |" in markdown

    videos = sorted((out / "videos").glob("*.mp4"))
    assert len(videos) == 2
    frames = read_video_frames(videos[0])
    assert len(frames) == 6  # the longest method's test views; bluish's 3 views loop
    height, width = frames[0].shape[:2]
    tile = MIN_TILE_HEIGHT  # the 32-pixel rgb panels (the grey second panel cropped), enlarged
    assert width == 2 * tile
    label_height = height - tile
    red_tile = frames[2][label_height + 8 : height - 8, 8 : tile - 8].astype(int)
    blue_tile = frames[2][label_height + 8 : height - 8, tile + 8 : 2 * tile - 8].astype(int)
    assert red_tile[..., 0].mean() > 150 and blue_tile[..., 2].mean() > 150
    for x0, x1 in ((0, tile), (tile, 2 * tile)):
        assert np.abs(frames[0][:label_height, x0:x1].astype(int) - 255).max() > 100

    # second invocation: everything is finished, nothing is launched again
    assert cli.main(argv) == 0
    second_output = capsys.readouterr().out
    assert len((launcher_dir / "launches.txt").read_text().splitlines()) == 4
    assert second_output.count("skip (finished earlier)") == 4
    assert [row["method"] for row in read_csv(out / "results.csv")] == ["red", "bluish"]


def test_runner_reports_failed_runs_and_retries_them(tmp_path, tiny_models, capsys):
    launcher_dir = tmp_path / "launcher"
    launcher_dir.mkdir()
    (launcher_dir / "launch.py").write_text(FAKE_LAUNCHER)
    good = fake_config(tmp_path / "good.yaml", (200, 200, 0))
    bad = fake_config(tmp_path / "bad.yaml", (0, 0, 0), fail=True)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a corgi\n")
    out = tmp_path / "out"
    argv = [
        "--launcher", str(launcher_dir / "launch.py"), "--configs", str(good), str(bad),
        "--prompts", str(prompts), "--out", str(out), "--gpus", "cpu",
        "--clip-model", str(tiny_models["clip"]),
    ]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert "FAILED: bad | a corgi" in captured.err
    log = (out / "logs" / "bad" / f"{prompt_slug('a corgi')}.log").read_text()
    assert "RuntimeError: this method fails" in log
    results = read_csv(out / "results.csv")
    assert [row["method"] for row in results] == ["good"]
    assert results[0]["clip_r_precision"] == "n/a"  # one prompt: R-precision is undefined

    assert cli.main(argv) == 1
    launches = (launcher_dir / "launches.txt").read_text().splitlines()
    assert launches.count("bad|a corgi") == 2 and launches.count("good|a corgi") == 1


def test_runner_rejects_bad_arguments(tmp_path):
    config = fake_config(tmp_path / "c.yaml", (0, 0, 0))
    launcher = tmp_path / "launch.py"
    launcher.write_text("")
    base = ["--launcher", str(launcher), "--configs", str(config), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match="--gpus"):
        cli.main([*base, "--gpus", "0,x"])
    with pytest.raises(SystemExit, match="not one of the methods"):
        cli.main([*base, "--gpus", "cpu", "--method-override", "other", "a=b"])
    with pytest.raises(SystemExit, match="is not KEY=VALUE"):
        cli.main([*base, "--gpus", "cpu", "--", "max_steps"])
    with pytest.raises(SystemExit, match="names no file"):
        cli.main(["--launcher", str(launcher), "--configs", str(tmp_path / "nope.yaml"), "--gpus", "cpu"])


def test_missing_clip_model_fails_before_any_run(tmp_path):
    launcher_dir = tmp_path / "launcher"
    launcher_dir.mkdir()
    (launcher_dir / "launch.py").write_text(FAKE_LAUNCHER)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a corgi\n")
    argv = [
        "--launcher", str(launcher_dir / "launch.py"), "--configs", str(fake_config(tmp_path / "c.yaml", (0, 0, 0))),
        "--prompts", str(prompts), "--out", str(tmp_path / "out"), "--gpus", "cpu",
        "--clip-model", str(tmp_path / "no-clip-here"),
    ]
    with pytest.raises(SystemExit, match="--clip-model: CLIP model .*no-clip-here"):
        cli.main(argv)
    assert not (launcher_dir / "launches.txt").exists()


# ---------------------------------------------------------------- the comparison configs

# comparison config -> the StableDreamer config it changes the guidance of (VSD's LoRA must
# train throughout, so ProlificDreamer builds on the single-stage SD ablation)
COMPARISON_BASES = {
    "gaussian-dreamfusion": "stabledreamer",
    "gaussian-hifa": "stabledreamer",
    "gaussian-prolificdreamer": "stabledreamer-sd-only",
}
# What a comparison config may change: the stage slots' prompt processors and guidances,
# when stage 2 starts (GUIDANCE_SYSTEM_KEYS), the weights of the guidance's own loss terms,
# trainable guidance parameter groups, and its name.
GUIDANCE_LOSS_KEYS = ("lambda_sds", "lambda_sds_img", "lambda_vsd", "lambda_lora")


def without_guidance(config):
    config = OmegaConf.to_container(config, resolve=False)
    del config["name"]
    for key in GUIDANCE_SYSTEM_KEYS:
        config["system"].pop(key, None)
    for key in GUIDANCE_LOSS_KEYS:
        config["system"]["loss"].pop(key, None)
    config["system"]["optimizer"].pop("params", None)
    return config


@pytest.mark.parametrize("name", sorted(COMPARISON_BASES))
def test_comparison_configs_change_only_the_guidance(name):
    base = OmegaConf.load(CONFIGS / f"{COMPARISON_BASES[name]}.yaml")
    config = OmegaConf.load(CONFIGS / f"{name}.yaml")
    assert config.name == name
    assert without_guidance(config) == without_guidance(base)


def resolved(name, tmp_path):
    from threestudio.utils.config import load_config

    overrides = ['system.prompt_processor.prompt="a corgi"', "use_timestamp=false", f"exp_root_dir={tmp_path}"]
    return load_config(str(CONFIGS / f"{name}.yaml"), cli_args=overrides)


def test_dreamfusion_config_is_uniform_sds_throughout(tmp_path):
    from threestudio_stabledreamer.core.score_distillation import timestep_range
    from threestudio_stabledreamer.guidance.stable_diffusion import StableDiffusionGuidance

    system = resolved("gaussian-dreamfusion", tmp_path).system
    guidance = system.guidance
    assert system.guidance_type == system.guidance_stage2_type == "stabledreamer-stable-diffusion-guidance"
    assert system.prompt_processor_type == system.prompt_processor_stage2_type == "stable-diffusion-prompt-processor"
    assert system.guidance_stage2 == guidance and system.prompt_processor_stage2.prompt == "a corgi"
    StableDiffusionGuidance.Config(**guidance)  # every key is a guidance option
    assert (guidance.guidance_scale, guidance.weighting_strategy, guidance.use_img_loss) == (100.0, "sds", False)
    for step in (0, 4000, 8000):
        assert timestep_range(
            step, 1000, guidance.min_step_percent, guidance.max_step_percent, anneal=guidance.anneal
        ) == (20, 980)
    assert system.loss.lambda_sds_img == 0.0


def test_hifa_config_anneals_by_sqrt_with_the_image_loss(tmp_path):
    from threestudio_stabledreamer.core.score_distillation import timestep_range
    from threestudio_stabledreamer.guidance.stable_diffusion import StableDiffusionGuidance

    config = resolved("gaussian-hifa", tmp_path)
    system, guidance = config.system, config.system.guidance
    assert system.guidance_stage2 == guidance and system.guidance_type == "stabledreamer-stable-diffusion-guidance"
    StableDiffusionGuidance.Config(**guidance)
    assert guidance.use_img_loss and system.loss.lambda_sds_img > 0
    assert guidance.guidance_scale == 100.0

    def t(step):
        lo, hi = timestep_range(
            step, 1000, guidance.min_step_percent, guidance.max_step_percent, anneal=guidance.anneal,
            anneal_steps=guidance.anneal_steps, anneal_start_step=guidance.anneal_start_step,
        )
        assert lo == hi  # deterministic, as HiFA
        return lo

    total = config.trainer.max_steps
    # HiFA: t = 0.3 T + (0.98 T - 0.3 T)(1 - sqrt(step / total)), T = 1000
    assert [t(0), t(total // 4), t(total)] == [980, 640, 300]


def test_prolificdreamer_config_uses_vsd_with_its_lora_group(tmp_path):
    from threestudio.utils.misc import C

    system = resolved("gaussian-prolificdreamer", tmp_path).system
    assert system.stage2_start_step == 0
    assert system.guidance_stage2_type == "stabledreamer-vsd-guidance"
    assert system.prompt_processor_stage2_type == "stable-diffusion-prompt-processor"
    assert system.prompt_processor_stage2.prompt == "a corgi"
    assert system.guidance_stage2.guidance_scale == 7.5
    # ProlificDreamer's t range: U(0.02, 0.98) T, then U(0.02, 0.5) T after 5000 steps
    schedule = system.guidance_stage2.max_step_percent
    assert [C(schedule, 0, step) for step in (0, 5000, 5001, 8000)] == [0.98, 0.98, 0.5, 0.5]
    assert system.guidance_stage2.min_step_percent == 0.02
    assert system.optimizer.params.guidance_stage2.lr == pytest.approx(1e-4)
    assert system.loss.lambda_vsd > 0 and system.loss.lambda_lora > 0
    assert "lambda_sds" not in system.loss


# ---------------------------------------------------------------- end to end through the launcher

E2E_STEPS = 2
E2E_TEST_VIEWS = 4


def test_runner_end_to_end_through_the_launcher(tmp_path, tiny_models, capsys, monkeypatch):
    monkeypatch.setenv("STABLEDREAMER_TINY_MODELS", str(Path(tiny_models["clip"]).parent))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a hamburger\na zoomed out DSLR photo of a corgi wearing a top hat\n")
    out = tmp_path / "out"
    methods = ["stabledreamer-cpu", "gaussian-dreamfusion", "gaussian-hifa"]
    global_overrides = [
        f"trainer.max_steps={E2E_STEPS}",
        "system.stage2_start_step=1",
        f"data.n_test_views={E2E_TEST_VIEWS}",
        "system.export_on_fit_end=false",
    ]
    given = {item.split("=", 1)[0] for item in global_overrides}
    per_method = [
        arg
        for method in methods[1:]
        for item in cpu_size_overrides(given) + tiny_model_overrides(method, tiny_models)
        for arg in ("--method-override", method, item)
    ]
    argv = [
        "--launcher", str(LAUNCHER), "--launcher-cwd", str(REPO_ROOT),
        "--configs", *[str(CONFIGS / f"{m}.yaml") for m in methods],
        "--prompts", str(prompts), "--out", str(out), "--gpus", "cpu",
        "--clip-model", str(tiny_models["clip"]), "--progress-interval", "5",
        *per_method,
        "--",
        *global_overrides,
    ]

    assert cli.main(argv) == 0, capsys.readouterr().err
    output = capsys.readouterr().out
    assert f"runs {2 * len(methods)}/{2 * len(methods)} done" in output

    results = read_csv(out / "results.csv")
    assert [row["method"] for row in results] == methods
    for row in results:
        assert (row["finished_runs"], row["prompts"]) == ("2", "2")
        assert float(row["mean_wall_time_s"]) > 0
        assert float(row["mean_peak_memory_mib"]) > 100  # a process that imported torch
        assert row["memory_kind"] == "cpu-rss"
        assert -1 <= float(row["mean_clip_score"]) <= 1
        assert float(row["clip_r_precision"]) in (0.0, 0.5, 1.0)
    markdown = (out / "results.md").read_text()
    for method in methods:
        assert f"| {method} | 2/2 |" in markdown

    for method in methods:
        trial = out / "runs" / method / prompt_slug("a hamburger")
        assert len(find_test_renders(trial)) == E2E_TEST_VIEWS
        assert (trial / "save" / "metrics.json").is_file()

    videos = sorted((out / "videos").glob("*.mp4"))
    assert len(videos) == 2
    tile = max(MIN_TILE_HEIGHT, OmegaConf.load(CONFIGS / "stabledreamer-cpu.yaml").data.eval_height)
    for video in videos:
        frames = read_video_frames(video)
        assert len(frames) == E2E_TEST_VIEWS
        height, width = frames[0].shape[:2]
        assert width == len(methods) * tile
        label_height = height - tile
        for index in range(len(methods)):
            header = frames[0][:label_height, index * tile : (index + 1) * tile].astype(int)
            assert np.abs(header - 255).max() > 100, f"column {index} has no label"

    records = sorted((out / "records").rglob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in records]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.count("skip (finished earlier)") == 2 * len(methods)
    assert [p.stat().st_mtime_ns for p in records] == stamps
