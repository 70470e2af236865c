"""Side-by-side video: labelled columns, column widths, looping of shorter methods, frame count."""
import numpy as np
import pytest

from threestudio_stabledreamer.benchmark.video_grid import (
    MIN_TILE_HEIGHT,
    Column,
    compose_frames,
    label_strip,
    plan_layout,
    read_video_frames,
    side_by_side_video,
)

RED = (200, 30, 30)
BLUE = (30, 30, 200)


def flat_frames(count, height, width, colour):
    frames = []
    for index in range(count):
        frame = np.empty((height, width, 3), dtype=np.uint8)
        frame[:] = colour
        frame[0, 0] = (index, index, index)  # marks which source frame a tile shows
        frames.append(frame)
    return frames


def test_layout_keeps_aspect_ratio_at_a_common_height():
    columns = [Column("A", flat_frames(1, 160, 160, RED)), Column("B", flat_frames(1, 320, 640, BLUE))]
    layout = plan_layout(columns, label_height=20)
    # common height = the smallest input height (160); B is 2:1 wide -> 320 columns
    assert layout.tile_height == 160
    assert layout.column_x == [(0, 160), (160, 480)]
    assert (layout.width, layout.height) == (480, 180)
    scaled = plan_layout(columns, tile_height=16, label_height=20)
    assert scaled.column_x == [(0, 16), (16, 48)]
    small = plan_layout([Column("A", flat_frames(1, 32, 32, RED))])
    assert small.tile_height == MIN_TILE_HEIGHT  # small renders are enlarged
    assert small.label_height == 24


def test_labels_are_drawn_over_their_own_columns():
    columns = [Column("dreamfusion", flat_frames(1, 48, 96, RED)), Column("", flat_frames(1, 48, 96, BLUE))]
    layout = plan_layout(columns, tile_height=48, label_height=24)
    strip = label_strip(layout, ["dreamfusion", ""])
    assert strip.shape == (24, 192, 3)
    labelled, unlabelled = strip[:, :96], strip[:, 96:]
    assert (labelled != 255).any(), "label text should mark its column's strip"
    assert (unlabelled == 255).all(), "an empty label leaves its column's strip blank"


def test_long_labels_stay_inside_narrow_columns():
    columns = [Column("a-very-long-method-name", flat_frames(1, 16, 16, RED)), Column("", flat_frames(1, 16, 16, BLUE))]
    layout = plan_layout(columns, tile_height=16, label_height=24)
    strip = label_strip(layout, ["a-very-long-method-name", ""])
    assert (strip[:, :16] != 255).any()
    assert (strip[:, 16:] == 255).all(), "a label must not spill into the next column"


def test_frames_place_columns_and_loop_shorter_methods():
    columns = [Column("A", flat_frames(5, 32, 32, RED)), Column("B", flat_frames(3, 32, 64, BLUE))]
    layout = plan_layout(columns, tile_height=32, label_height=20)
    frames = compose_frames(columns, layout)
    assert len(frames) == 5
    for index, frame in enumerate(frames):
        assert frame.shape == (52, 96, 3)
        tile_a, tile_b = frame[20:, 0:32], frame[20:, 32:96]
        assert tuple(tile_a[5, 5]) == RED and tuple(tile_b[5, 5]) == BLUE
        assert tile_a[0, 0, 0] == index
        assert tile_b[0, 0, 0] == index % 3  # B has 3 frames: 0 1 2 0 1


def test_video_round_trip_has_frame_count_and_labelled_columns(tmp_path):
    columns = [Column("A", flat_frames(6, 32, 32, RED)), Column("B", flat_frames(4, 32, 64, BLUE))]
    path = tmp_path / "grid.mp4"
    layout = side_by_side_video(path, columns, fps=10, tile_height=32, label_height=24)
    frames = read_video_frames(path)
    assert len(frames) == 6
    assert frames[0].shape == (layout.height, layout.width, 3) == (56, 96, 3)
    frame = frames[3].astype(int)
    # column interiors keep their colour through H.264 (away from edges and the marker pixel)
    assert np.abs(frame[24 + 8 : 24 + 24, 8:24] - RED).mean() < 12
    assert np.abs(frame[24 + 8 : 24 + 24, 40:88] - BLUE).mean() < 12
    # each header cell differs from a blank white strip: the labels are there
    for x0, x1 in layout.column_x:
        assert np.abs(frame[:24, x0:x1] - 255).max() > 100


def test_bad_columns_are_rejected():
    with pytest.raises(ValueError, match="at least one"):
        plan_layout([])
    with pytest.raises(ValueError, match="'A' has no frames"):
        plan_layout([Column("A", [])])
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        plan_layout([Column("A", [np.zeros((8, 8), dtype=np.uint8)])])
