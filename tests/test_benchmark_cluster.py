"""The comparison on every executor, end to end through the launcher in use
(``conftest.LAUNCHER``: the stand-in's, or real threestudio's) with tiny models:
local, Ray (a local cluster started by the runner) and SLURM (submitit's local executor)
give the same runs and metrics; Ray retries a failed run and resumes an interrupted one;
SLURM does not submit finished runs again; results.html opens cleanly in headless Chromium.

The comparison runs once per executor (module-scoped fixtures) and the tests share it."""
import csv
import json
import shutil
from pathlib import Path

import pytest

from browser_page import assert_relative_and_present, needs_chromium, open_page
from conftest import LAUNCHER
from threestudio_stabledreamer.benchmark import cli
from threestudio_stabledreamer.benchmark.runs import RunRecord, prompt_slug

REPO_ROOT = Path(__file__).resolve().parents[1]
METHOD = "stabledreamer-cpu"
PROMPTS = ["a hamburger", "a zoomed out DSLR photo of a corgi wearing a top hat"]
TEST_VIEWS = 5  # azimuths 0, 90, 180, 270, 360: front, side, back, side, front

# A launcher that fails the first launch of each run, then runs the launcher in use.
FLAKY_LAUNCHER = """
import os, runpy, sys
if __name__ == "__main__":
    tag = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("tag="))
    marker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "failed-once-" + tag.strip('"'))
    if not os.path.exists(marker):
        open(marker, "w").close()
        sys.exit("failing this run's first launch on purpose")
    sys.argv[0] = {launcher!r}
    sys.path[0] = os.path.dirname({launcher!r})
    runpy.run_path({launcher!r}, run_name="__main__")
"""


def comparison_argv(out, tiny_models, prompts_file, options=(), launcher=LAUNCHER):
    return [
        *options,
        "--launcher", str(launcher), "--launcher-cwd", str(REPO_ROOT),
        "--configs", str(REPO_ROOT / "configs" / f"{METHOD}.yaml"),
        "--prompts", str(prompts_file), "--out", str(out), "--gpus", "cpu",
        "--clip-model", str(tiny_models["clip"]), "--progress-interval", "30", "--fps", "5",
        "--",
        "trainer.max_steps=2", "system.stage2_start_step=1", f"data.n_test_views={TEST_VIEWS}",
        "system.export_on_fit_end=false", "checkpoint.every_n_train_steps=1",
    ]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("cluster")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return root, prompts, tiny_models


def read_csv(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def run_metrics(out):
    """{(method, prompt): (clip score, view agreement, back as front)} of runs.csv."""
    return {
        (row["method"], row["prompt"]): (float(row["clip_score"]), float(row["view_agreement"]), row["back_as_front"])
        for row in read_csv(out / "runs.csv")
    }


@pytest.fixture(scope="module")
def local_comparison(workspace):
    root, prompts, tiny_models = workspace
    out = root / "local"
    assert cli.main(comparison_argv(out, tiny_models, prompts)) == 0
    return out


@pytest.fixture(scope="module")
def ray_comparison(workspace):
    """The comparison on a local Ray cluster with every run's first launch failing (one
    retry each), then again after one run lost its test renders and its last checkpoint."""
    pytest.importorskip("ray", reason="the Ray executor needs ray (pip install -e '.[ray]')")
    root, prompts, tiny_models = workspace
    launcher_dir = root / "flaky"
    launcher_dir.mkdir()
    launcher = launcher_dir / "launch.py"
    launcher.write_text(FLAKY_LAUNCHER.format(launcher=str(LAUNCHER)))
    out = root / "ray"
    options = ("--executor", "ray", "--ray-num-cpus", "2", "--retries", "1")
    argv = comparison_argv(out, tiny_models, prompts, options, launcher)
    first_code = cli.main(argv)
    first_metrics = run_metrics(out)

    # interrupt one run after its step-1 checkpoint: no record, no renders, no later checkpoints
    interrupted = out / "runs" / METHOD / prompt_slug(PROMPTS[1])
    (out / "records" / METHOD / f"{prompt_slug(PROMPTS[1])}.json").unlink()
    shutil.rmtree(interrupted / "save")
    for ckpt in (interrupted / "ckpts").iterdir():
        if ckpt.name != "epoch=0-step=1.ckpt":
            ckpt.unlink()
    second_code = cli.main(argv)
    return out, first_code, first_metrics, second_code, interrupted


@pytest.fixture(scope="module")
def slurm_comparison(workspace):
    pytest.importorskip("submitit", reason="the SLURM executor needs submitit (pip install -e '.[slurm]')")
    root, prompts, tiny_models = workspace
    out = root / "slurm"
    options = ("--executor", "slurm", "--slurm-cluster", "local", "--slurm-poll-interval", "1",
               "--slurm-partition", "ignored-by-the-local-executor", "--slurm-sbatch", "qos=low")
    argv = comparison_argv(out, tiny_models, prompts, options)
    first_code = cli.main(argv)
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    job_folders = sorted(p.name for p in (out / "slurm").iterdir() if p.name.isdigit())
    second_code = cli.main(argv)
    return out, first_code, jobs, job_folders, second_code


def test_every_executor_gives_the_same_runs_and_metrics(local_comparison, ray_comparison, slurm_comparison):
    ray_out, ray_code, ray_metrics, _, _ = ray_comparison
    slurm_out, slurm_code, _, _, _ = slurm_comparison
    assert ray_code == 0 and slurm_code == 0
    local = run_metrics(local_comparison)
    assert sorted(local) == sorted((METHOD, p) for p in PROMPTS)
    for other in (ray_metrics, run_metrics(slurm_out)):
        assert sorted(other) == sorted(local)
        for key, (score, agreement, back_as_front) in local.items():
            assert other[key][0] == pytest.approx(score, abs=1e-4)
            assert other[key][1:] == (agreement, back_as_front)
    for out in (local_comparison, ray_out, slurm_out):
        rows = read_csv(out / "results.csv")
        assert [r["method"] for r in rows] == [METHOD] and rows[0]["finished_runs"] == "2"
        assert 0 <= float(rows[0]["mean_view_agreement"]) <= 1
        assert rows[0]["mean_back_as_front"] in ("0.0000", "0.5000", "1.0000")  # one back view per run


def test_ray_retries_a_failed_launch_and_resumes_an_interrupted_run(ray_comparison):
    out, first_code, _, second_code, interrupted = ray_comparison
    assert first_code == 0  # every run failed once and succeeded on its retry
    for prompt in PROMPTS:
        log = (out / "logs" / METHOD / f"{prompt_slug(prompt)}.log").read_text()
        assert "$ " in log
    assert second_code == 0
    resumed = RunRecord.load(out / "records" / METHOD / f"{prompt_slug(PROMPTS[1])}.json")
    assert resumed.resumed_from == str(interrupted / "ckpts" / "epoch=0-step=1.ckpt")
    assert len(resumed.test_renders) == TEST_VIEWS
    kept = RunRecord.load(out / "records" / METHOD / f"{prompt_slug(PROMPTS[0])}.json")
    assert kept.resumed_from is None  # finished before: skipped, not run again
    log = (out / "logs" / METHOD / f"{prompt_slug(PROMPTS[1])}.log").read_text()
    assert f"resuming {METHOD} | {PROMPTS[1]} from" in log


def test_slurm_rerun_submits_nothing_for_finished_runs(slurm_comparison):
    out, first_code, jobs, job_folders, second_code = slurm_comparison
    assert first_code == 0 and second_code == 0
    assert sorted(jobs) == sorted(f"{METHOD}/{prompt_slug(p)}" for p in PROMPTS)
    assert len(job_folders) == 2
    assert json.loads((out / "slurm" / "jobs.json").read_text()) == jobs
    assert sorted(p.name for p in (out / "slurm").iterdir() if p.name.isdigit()) == job_folders


@needs_chromium
def test_results_page_opens_cleanly_in_headless_chromium(local_comparison, tmp_path):
    page_path = local_comparison / "results.html"
    html = page_path.read_text()
    assert "view agreement" in html and "back as front" in html
    view = open_page(page_path, tmp_path / "results.png")
    assert view.errors == [], view.messages
    assert view.failed == []
    assert len(view.images) == 3 and all(complete and width > 100 for _, complete, width in view.images), view.images
    assert len(view.videos) == len(PROMPTS)
    assert len(view.links) == 2 * len(PROMPTS)
    assert_relative_and_present(page_path, view)
    assert view.screenshot.stat().st_size > 10_000
