"""The multi-face indicator: threestudio's azimuth bins, and view agreement on renders whose
answer is known (a CLIP stand-in with fixed embeddings: a view's colour says which side it
shows, a prompt's suffix which side it names)."""
import numpy as np
import pytest
import torch
from PIL import Image

from threestudio_stabledreamer.benchmark.multiface import (
    VIEW_CLASSES,
    azimuth_bins,
    classify_views,
    turntable_azimuths,
    view_agreement,
    view_prompts,
)
from threestudio_stabledreamer.benchmark.report import evaluate_runs, summarize
from threestudio_stabledreamer.benchmark.runs import RunRecord


def test_azimuth_bins_follow_threestudios_strict_thresholds():
    # threestudio: front iff -45 < a < 45, back iff a > 135 or a < -135 (a shifted to [-180, 180))
    azimuths = [0, 44.9, 45, 90, 134.9, 135, 135.1, 180, 224.9, 225, 315, 315.1, 360, -170, -44, 719]  # 719 = 359
    expected = ["front", "front", "side", "side", "side", "side", "back", "back", "back", "side",
                "side", "front", "front", "back", "front", "front"]
    assert azimuth_bins(azimuths) == expected


def test_turntable_azimuths_are_threestudios_test_split():
    assert turntable_azimuths(5).tolist() == [0.0, 90.0, 180.0, 270.0, 360.0]
    assert azimuth_bins(turntable_azimuths(5)) == ["front", "side", "back", "side", "front"]
    assert azimuth_bins(turntable_azimuths(4)) == ["front", "side", "side", "front"]  # 0, 120, 240, 360
    with pytest.raises(ValueError, match="num_views"):
        turntable_azimuths(0)


def test_view_prompts_use_threestudios_suffixes():
    assert view_prompts("a corgi") == ["a corgi, front view", "a corgi, side view", "a corgi, back view"]


AXES = torch.eye(3)  # front, side, back text directions


def test_classification_and_agreement_on_known_embeddings():
    # a consistent object: every view looks like its own bin (slightly off-axis)
    honest = torch.stack([AXES[0] + 0.1, AXES[1] + 0.2, AXES[2] + 0.1, AXES[1], AXES[0]])
    result = view_agreement(honest, AXES * 3.0, turntable_azimuths(5))
    assert result.predicted == ["front", "side", "back", "side", "front"]
    assert result.agreement == 1.0 and result.back_as_front == 0.0

    # a Janus object: a front face from every side
    janus = torch.stack([AXES[0]] * 5) + torch.tensor([0.0, 0.3, 0.2])
    result = view_agreement(janus, AXES, turntable_azimuths(5))
    assert result.predicted == ["front"] * 5
    assert result.agreement == pytest.approx(2 / 5) and result.back_as_front == 1.0

    # no back view among 0, 120, 240, 360: the back-as-front share is undefined
    assert view_agreement(janus[:4], AXES, turntable_azimuths(4)).back_as_front is None


def test_classification_uses_cosine_not_length():
    # the long vector is closer in angle to "side"; a dot product would pick "front"
    views = torch.tensor([[10.0, 11.0, 0.0]])
    texts = torch.tensor([[1.0, 0.0, 0.0], [0.1, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert classify_views(views, texts) == ["side"]


def test_bad_inputs_name_the_field():
    with pytest.raises(ValueError, match="view_text_embeds: expected 3 rows"):
        classify_views(torch.ones(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="azimuth_deg: 4 azimuths for 5 views"):
        view_agreement(torch.ones(5, 3), AXES, turntable_azimuths(4))


COLOURS = {"front": (255, 0, 0), "side": (0, 255, 0), "back": (0, 0, 255)}


class ColourClip:
    """Embeds a render by its mean colour (red = front, green = side, blue = back) and a
    text by its view suffix, so the right answer of every view is known."""

    def embed_images(self, images):
        return torch.stack([torch.tensor(np.asarray(i, dtype=np.float32).reshape(-1, 3).mean(0) + 1.0) for i in images])

    def embed_texts(self, texts):
        rows = []
        for text in texts:
            row = torch.full((3,), 0.01)
            for index, name in enumerate(VIEW_CLASSES):
                if text.endswith(f", {name} view"):
                    row[index] = 1.0
            rows.append(row)
        return torch.stack(rows)


def write_run(tmp_path, method, sides):
    """A finished run whose i-th test render shows side ``sides[i]`` (rgb panel | grey panel)."""
    directory = tmp_path / method / "save" / "it2-test"
    directory.mkdir(parents=True)
    paths = []
    for index, side in enumerate(sides):
        frame = np.full((8, 16, 3), 128, np.uint8)
        frame[:, :8] = COLOURS[side]
        path = directory / f"{index}.png"
        Image.fromarray(frame).save(path)
        paths.append(str(path))
    return RunRecord(method, "c.yaml", "a corgi", 0, str(tmp_path / method), 1.0, 1, "cpu-rss", paths)


def test_report_scores_janus_and_consistent_runs_from_their_renders(tmp_path):
    consistent = write_run(tmp_path, "consistent", ["front", "side", "back", "side", "front"])
    janus = write_run(tmp_path, "janus", ["front", "front", "front", "front", "front"])
    half = write_run(tmp_path, "half", ["front", "side", "front", "back", "side", "back", "front"])
    results = evaluate_runs([consistent, janus, half], ["a corgi"], ColourClip())
    by_method = {r.record.method: r.views for r in results}
    assert by_method["consistent"].agreement == 1.0 and by_method["consistent"].back_as_front == 0.0
    assert by_method["janus"].agreement == pytest.approx(0.4) and by_method["janus"].back_as_front == 1.0
    # 7 views at 0, 60, ..., 360; the views at 120 and 300 show the wrong side
    assert by_method["half"].expected == ["front", "side", "side", "back", "side", "side", "front"]
    assert by_method["half"].agreement == pytest.approx(5 / 7)
    assert by_method["half"].back_as_front == 0.0
    summaries = {s.method: s for s in summarize(results, ["consistent", "janus", "half"], 1)}
    assert summaries["janus"].mean_view_agreement == pytest.approx(0.4)
    assert summaries["janus"].mean_back_as_front == 1.0
