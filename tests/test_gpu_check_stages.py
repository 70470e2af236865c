"""The CPU-side parts of benchmarks/gpu_check.py's launch stages (smoke and threestudio):
the check of a trial's outputs, and the threestudio stage without gathered wheels."""
import json
import sys

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import gpu_check  # noqa: E402


@pytest.fixture
def log(tmp_path):
    return gpu_check.Log(tmp_path / "stage.log")


def fake_trial(outputs, device="cuda:0", steps=(10, 10), video=True):
    save = outputs / "stabledreamer-cpu" / "a_hamburger@20260101-000000" / "save"
    (save / "recon").mkdir(parents=True)
    (save / "it20-export").mkdir()
    for name in ("stage1-it0.png", "stage1-it5.png", "stage2-it10.png", "stage2-it15.png"):
        (save / "recon" / name).write_bytes(b"png")
    for name in ("model.ply", "model-mesh.obj", "model-mesh.glb"):
        (save / "it20-export" / name).write_bytes(b"x")
    if video:
        (save / "it20-test.mp4").write_bytes(b"mp4")
    stages = {f"stage{i + 1}": {"steps": n, "peak_memory_mib": 12.5} for i, n in enumerate(steps)}
    (save / "metrics.json").write_text(json.dumps({"device": device, "stages": stages, "test": {"frames": 120}}))


def test_a_complete_cuda_trial_passes(tmp_path, log):
    fake_trial(tmp_path / "outputs")
    result = gpu_check.trial_result(tmp_path / "outputs", 0, 12.34, log, "threestudio")
    assert result["status"] == "ok" and result["seconds"] == 12.3
    assert result["checks"] == dict.fromkeys(
        ["both stages trained", "ran on cuda", "peak CUDA memory measured", "120 test frames", "turntable video",
         "reconstruction views", "PLY export", "mesh export"], True)
    assert result["metrics"]["device"] == "cuda:0"


def test_a_cpu_trial_without_video_fails_naming_both(tmp_path, log):
    fake_trial(tmp_path / "outputs", device="cpu", video=False)
    result = gpu_check.trial_result(tmp_path / "outputs", 0, 1.0, log, "threestudio")
    assert result["status"] == "failed (ran on cuda, turntable video)"


def test_a_launch_without_trial_reports_its_exit(tmp_path, log):
    assert gpu_check.trial_result(tmp_path, 0, 1.0, log, "smoke")["status"] == "failed (no trial directory)"
    assert gpu_check.trial_result(tmp_path, 2, 1.0, log, "smoke")["status"] == "failed (exit 2)"


def test_threestudio_stage_without_gathered_wheels_is_skipped(tmp_path, log):
    result = gpu_check.run_threestudio(tmp_path / "deps", {}, tmp_path / "work", log)
    assert result["status"].startswith("skipped (no threestudio-wheels/ or src/threestudio.tar.gz in ")
    assert "scripts/gather_gpu_deps.sh --threestudio" in result["status"]
    assert not (tmp_path / "work").exists()


def test_side_by_side_without_threestudios_set_up_is_skipped_naming_why(tmp_path, log):
    threestudio = gpu_check.run_threestudio(tmp_path / "deps", {}, tmp_path / "work", log)
    result = gpu_check.run_side_by_side(threestudio, {}, tmp_path / "work", log)
    assert result["status"] == ("skipped (threestudio's guidances need the threestudio stage's set-up, "
                                f"which ended: {threestudio['status']})")
    assert not (tmp_path / "work").exists()


def test_chosen_stages_run_in_order_and_only_where_they_can():
    assert gpu_check.chosen_stages(gpu_check.STAGES, cuda=True) == list(gpu_check.STAGES)
    assert gpu_check.chosen_stages(gpu_check.STAGES, cuda=False) == ["tests", "backends"]
    assert gpu_check.chosen_stages(["switches", "full_scale"], cuda=True) == ["full_scale", "switches"]
    with pytest.raises(ValueError, match="side_by_side needs threestudio in the same run"):
        gpu_check.chosen_stages(["full_scale", "side_by_side"], cuda=True)
    with pytest.raises(ValueError, match=r"unknown \['compile'\]"):
        gpu_check.chosen_stages(["compile"], cuda=True)


def test_a_bad_stage_choice_is_refused_before_anything_runs(tmp_path, capsys):
    code = gpu_check.main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                           "--stages", "side_by_side"])
    assert code == gpu_check.EXIT_USAGE
    assert "side_by_side needs threestudio" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_the_setup_module_loads_by_path_and_names_what_lies_outside_the_pins():
    setup = gpu_check.load_setup_module()
    pins = setup.parse_constraints((REPO_ROOT / setup.CONSTRAINTS_NAME).read_text())
    outside = setup.outside_pins({"numpy": "2.4.0", "diffusers": "0.19.3", "huggingface-hub": "0.36.0"}, pins)
    assert [(name, version) for name, version, _ in outside] == [("huggingface-hub", "0.36.0"), ("numpy", "2.4.0")]


def test_summary_says_what_the_threestudio_stage_stubbed():
    stage = {"status": "ok", "seconds": 80.0, "setup_s": 50.0, "stubbed": "tinycudann, nvdiffrast, envlight",
             "checks": {"ran on cuda": True}}
    table = gpu_check.summary_table({"stages": {"threestudio": stage}, "verdict": "PASSED"}).splitlines()
    row = table.index(next(line for line in table if line.startswith("threestudio ")))
    assert table[row + 1].split() == ["set-up", "50.0", "s;", "stubbed,", "not", "built", "here:", "tinycudann,",
                                      "nvdiffrast,", "envlight"]
    assert table[row + 2].strip() == "ran on cuda: yes"
