"""The CPU main job (``python -m threestudio_stabledreamer.run`` without a GPU): the
known-answer run of the config on a known object, its outputs and scores, bad input; the
lab's pictures, the figure command and the lab's results.html."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from browser_page import assert_relative_and_present, needs_chromium, open_page
from threestudio_stabledreamer import run
from threestudio_stabledreamer.lab.cli import main as lab_main
from threestudio_stabledreamer.lab.pictures import grid_picture, reconstruction_picture, reconstruction_steps

KNOWN_ANSWER_STEPS = 60
FIGURE_STEPS = 12
# small, short runs for the figure command: 32-pixel renders of 1000 Gaussians, no densification
FIGURE_OVERRIDES = ["data.width=32", "data.height=32", "system.guidance.render_resolution=32",
                    "system.geometry.init.num_points=1000", "system.geometry.densify_until=0"]


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("argv, expected", [
    (["--object", "teapot"], "--object must be one of ['duck', 'head', 'house'], got 'teapot'"),
    (["--steps", "0"], "--steps must be a positive number of training steps, got 0"),
])
def test_bad_known_answer_input_is_named_with_what_was_expected(argv, expected, no_gpu, tmp_path, capsys):
    assert run.main([*argv, "--known-answer-dir", str(tmp_path)]) == 1
    assert expected in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_known_answer_options_are_refused_where_they_would_be_ignored(tmp_path, monkeypatch, capsys):
    assert run.main(["--smoke", "--prompt", "a hamburger", "--object", "duck"]) == 1
    assert "--object only apply to the known-answer run on a CPU, not to --smoke" in capsys.readouterr().err

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(run, "threestudio_checkout", lambda value: tmp_path)
    monkeypatch.setattr(run, "set_up_threestudio", lambda root: pytest.fail("set up despite a refused option"))
    assert run.main(["--prompt", "a hamburger", "--threestudio", str(tmp_path), "--object", "duck",
                     "--steps", "50"]) == 1
    assert "--object and --steps only apply to the known-answer run on a CPU, not to the GPU run" in (
        capsys.readouterr().err)


def test_smoke_run_needs_a_prompt(no_gpu, capsys):
    assert run.main(["--smoke"]) == 1
    assert "--prompt is empty or missing" in capsys.readouterr().err


def test_cpu_main_job_rebuilds_the_head_and_reports_its_outputs_and_scores(no_gpu, tmp_path, capsys):
    root = tmp_path / "known-answer"
    # short: 8 turntable views instead of the job's 120, and no densification, which a
    # 60-step compression of stage 1 would run every other step
    code = run.main(["--steps", str(KNOWN_ANSWER_STEPS), "--known-answer-dir", str(root), "data.n_test_views=8",
                     "system.geometry.densify_until=0"])
    output = capsys.readouterr().out
    assert code == 0, output
    assert "the text prompt cannot be honoured" in output and "known object (head)" in output
    out = root / f"head-{KNOWN_ANSWER_STEPS}-steps"
    listed = dict(re.findall(r"^  (\S.*?)\s{2,}(/\S+)$", output, flags=re.M))
    for label in ("turntable video", "Gaussians (3DGS PLY)", "mesh (OBJ)", "mesh (GLB)", "ground truth vs result",
                  "scores", "page (results.html)"):
        assert label in listed and str(out) in listed[label], (label, output)
        assert (tmp_path / listed[label]).stat().st_size > 0, label
    video = listed["turntable video"]
    assert video.endswith(f"it{KNOWN_ANSWER_STEPS}-test.mp4")
    frames = sorted((tmp_path / video).parent.glob(f"it{KNOWN_ANSWER_STEPS}-test/*.png"))
    assert len(frames) == 8 and Image.open(frames[0]).height >= 128
    picture = Image.open(listed["ground truth vs result"])
    assert picture.width >= 4 * 128 and picture.height >= 2 * 128

    scores = json.loads((out / "scores.json").read_text())
    assert scores["object"] == "head" and scores["steps"] == KNOWN_ANSWER_STEPS
    # the initial grey ball scores about 14.6 dB; 60 steps reach about 17.6 dB, with the
    # silhouette nearly right (the 500-step job's figures are in the README)
    assert scores["psnr"] > 16.5 and scores["iou"] > 0.85 and 0.0 <= scores["multi_face"] <= 1.0, scores
    assert scores["num_gaussians"] == 5000  # the config's initial count, no densification
    assert f"PSNR {scores['psnr']:.2f} dB" in output


def test_grid_rows_must_hold_as_many_views_as_columns(tmp_path):
    with pytest.raises(ValueError, match=r"every row needs 2 views \(\['a', 'b'\]\), got \[2, 3\]"):
        grid_picture(tmp_path / "grid.png", [("x", np.zeros((2, 8, 8, 3))), ("y", np.zeros((3, 8, 8, 3)))], ["a", "b"])


def test_reconstruction_picture_takes_the_first_view_of_spread_steps(tmp_path):
    recon = tmp_path / "save" / "recon"
    recon.mkdir(parents=True)
    tile = 16
    for step in range(0, 90, 10):  # nine saved steps; each: two views of render | x_t | x0_hat
        image = np.zeros((2 * tile, 3 * tile, 3), dtype=np.uint8)
        image[:tile, :tile] = step  # the first view's render carries the step
        Image.fromarray(image).save(recon / f"stage1-it{step:06d}-t{900 - step:04d}-0500.png")
    assert [s[:2] for s in reconstruction_steps(tmp_path)][:2] == [(0, 900), (10, 890)]
    path = reconstruction_picture(tmp_path / "recon.png", tmp_path, max_rows=3, scale=1)
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape[0] >= 3 * 64 and picture.shape[1] >= 3 * 64


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    root = tmp_path_factory.mktemp("figures")
    code = lab_main(["--figures", str(root / "images"), "--objects", "head", "--steps", str(FIGURE_STEPS),
                     "--eval-every", str(FIGURE_STEPS), "--eval-resolution", "32", "--out", str(root / "runs"), *FIGURE_OVERRIDES])
    return code, root


def test_figure_command_writes_the_three_pictures_from_its_runs(figures, capsys):
    code, root = figures
    assert code == 0
    pictures = {p.name: Image.open(p) for p in (root / "images").iterdir()}
    assert sorted(pictures) == ["multiface.png", "objects.png", "reconstruction.png"]
    # rows of 128-pixel tiles: objects 3 per object, multi-face 1 + 2 schedules, four views each
    assert pictures["objects.png"].height >= 3 * 128 and pictures["objects.png"].width >= 4 * 128
    assert pictures["multiface.png"].height >= 3 * 128
    assert sum(p.stat().st_size for p in (root / "images").iterdir()) < 2_000_000
    runs = sorted(p.parent.name for p in (root / "runs" / "records").glob("*/*.json"))
    assert runs == ["biased-none-s0", "biased-sqrt-s0", "oracle-s0", "stage1-s0"]

    stamps = [p.stat().st_mtime_ns for p in (root / "runs" / "records").glob("*/*.json")]
    assert lab_main(["--figures", str(root / "images"), "--objects", "head", "--steps", str(FIGURE_STEPS),
                     "--eval-every", str(FIGURE_STEPS), "--eval-resolution", "32", "--out", str(root / "runs"), *FIGURE_OVERRIDES]) == 0
    assert capsys.readouterr().out.count("skip (finished earlier)") == 4
    assert [p.stat().st_mtime_ns for p in (root / "runs" / "records").glob("*/*.json")] == stamps


def test_lab_page_links_its_pictures_and_turntables_relatively(figures):
    _, root = figures
    page = root / "runs" / "results.html"
    html = page.read_text()
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    videos = re.findall(r'<video [^>]*src="([^"]+)"', html)
    assert len(videos) == 4 and html.count("truth-vs-result.png") == 4
    for source in sources:
        assert not source.startswith("/") and (page.parent / source).exists(), source


@needs_chromium
def test_lab_page_opens_cleanly_in_headless_chromium(figures, tmp_path):
    _, root = figures
    page = root / "runs" / "results.html"
    view = open_page(page, tmp_path / "lab.png")
    assert view.errors == [], view.messages
    assert view.failed == []
    assert len(view.images) == 2 + 4 and all(complete and width > 100 for _, complete, width in view.images)
    assert len(view.videos) == 4
    assert_relative_and_present(page, view)
