"""The multi-face boundary sweep (``lab.boundary``): the high-noise analysis against a closed
form, the grid, the choice of cells for more seeds, the verdicts, the outputs, and the two
phases of the command with the runs replaced by a known table."""
import csv
from pathlib import Path

import pytest

from threestudio_stabledreamer.lab import boundary, cli
from threestudio_stabledreamer.lab.boundary import Cell, CellResult
from threestudio_stabledreamer.lab.report import LabResult
from threestudio_stabledreamer.lab.suites import NO_ANNEAL


def closed_form_shares(front_bias, leak, scale):
    """Guided front and back shares for a back view with the lab's 8 references every 45
    degrees: 2 front, 2 back and 4 side references whatever the back view's azimuth."""
    conditional = {"front": 2 * leak * front_bias, "back": 2.0, "side": 4 * leak}
    unconditional = {"front": 2 * front_bias, "back": 2.0, "side": 4.0}
    zc, zu = sum(conditional.values()), sum(unconditional.values())
    return tuple(unconditional[b] / zu + scale * (conditional[b] / zc - unconditional[b] / zu)
                 for b in ("front", "back"))


@pytest.mark.parametrize("front_bias, leak, scale", [(4.0, 0.5, 20.0), (16.0, 0.75, 20.0), (64.0, 0.25, 7.5),
                                                     (1.0, 1.0, 20.0), (2.0, 0.0, 1.0)])
def test_high_noise_shares_match_the_closed_form(front_bias, leak, scale):
    assert boundary.high_noise_shares(front_bias, leak, scale) == pytest.approx(
        closed_form_shares(front_bias, leak, scale), rel=1e-5, abs=1e-6)  # float32 prior


def test_prior_back_view_turns_front_only_with_both_biases():
    # the view prompt obeyed fully: the conditional prior has no front at all
    assert not boundary.prior_back_view_is_front(64.0, 0.0, 20.0)
    # the prompt ignored: guidance adds nothing to the front-biased prior
    assert boundary.prior_back_view_is_front(4.0, 1.0, 20.0)
    # no front bias: front and back weigh the same, never more front
    assert not boundary.prior_back_view_is_front(1.0, 1.0, 20.0)
    # the lab's front-biased, leaky prior (front x4, leak 0.5) still points back views back at CFG 20
    assert not boundary.prior_back_view_is_front(4.0, 0.5, 20.0)
    # without guidance the leak alone decides: 2 L F front against 2 back
    assert boundary.prior_back_view_is_front(4.0, 0.5, 1.0)


def test_grid_cells_and_their_variants():
    cells = boundary.grid([1.0, 4.0], [0.25, 0.5, 1.0])
    assert len(cells) == 2 * 3 * len(boundary.SCHEDULES)
    assert len({c.name for c in cells}) == len(cells)
    uniform = Cell(4.0, 0.5, "uniform").variant()
    assert uniform.name == "fb4-leak0.5-uniform"
    assert uniform.overrides == ("system.guidance.front_bias=4.0", "system.guidance.view_leak=0.5", *NO_ANNEAL)
    assert Cell(4.0, 0.5, "annealed").variant().overrides == ("system.guidance.front_bias=4.0",
                                                              "system.guidance.view_leak=0.5")


def result(cell, seed, multi_face, psnr=20.0):
    return LabResult(cell.name, "head", seed, {"multi_face": multi_face, "psnr": psnr}, 1.0)


def outcomes_where(fail, biases, leaks, schedule="annealed"):
    """One seed a cell of ``schedule``; ``fail(fb, leak)`` says which cells show a face on the back."""
    cells = [Cell(fb, leak, schedule) for fb in biases for leak in leaks]
    return boundary.cell_results([result(c, 0, 0.9 if fail(c.front_bias, c.view_leak) else 0.0) for c in cells], cells)


def test_boundary_cells_are_the_neighbours_whose_verdicts_differ():
    biases, leaks = [1.0, 4.0, 16.0], [0.25, 0.5, 0.75]
    outcomes = outcomes_where(lambda fb, leak: leak > 0.5, biases, leaks)
    outcomes.update(outcomes_where(lambda fb, leak: leak > 0.25, biases, leaks, "uniform"))
    chosen = boundary.boundary_cells(outcomes, biases, leaks)
    assert chosen == [Cell(fb, leak, "annealed") for fb in biases for leak in (0.5, 0.75)]
    chosen = boundary.boundary_cells(outcomes, biases, leaks, "uniform")
    assert chosen == [Cell(fb, leak, "uniform") for fb in biases for leak in (0.25, 0.5)]

    staircase = outcomes_where(lambda fb, leak: fb * leak >= 3.0, biases, leaks)
    chosen = {(c.front_bias, c.view_leak) for c in boundary.boundary_cells(staircase, biases, leaks)}
    # failing (4, 0.75), (16, *); (16, 0.75) has only failing neighbours, (1, 0.25) and (1, 0.5) only keeping ones
    assert chosen == {(4.0, 0.75), (16.0, 0.25), (16.0, 0.5), (1.0, 0.75), (4.0, 0.5), (4.0, 0.25)}


def test_cell_results_group_seeds_and_ignore_other_variants():
    cell = Cell(4.0, 0.5, "annealed")
    results = [result(cell, 2, 0.3, 18.0), result(cell, 0, 0.0, 30.0), result(cell, 1, 0.0, 31.0),
               LabResult("stage1", "head", 0, {"multi_face": 1.0, "psnr": 1.0}, 1.0)]
    grouped = boundary.cell_results(results, [cell, Cell(4.0, 0.5, "uniform")])
    assert list(grouped) == [cell]
    assert grouped[cell].multi_face == [0.0, 0.0, 0.3] and grouped[cell].psnr == [30.0, 31.0, 18.0]
    assert grouped[cell].one_face  # mean 0.1 is at the threshold


@pytest.mark.parametrize("annealed, uniform, verdict", [
    (0.0, 0.0, "both schedules keep one face"), (0.0, 0.9, "annealing keeps one face"),
    (0.9, 0.9, "neither schedule keeps one face"), (0.9, 0.0, "only uniform keeps one face"), (None, 0.0, "not run"),
])
def test_region_verdicts(annealed, uniform, verdict):
    def entry(score):
        return None if score is None else CellResult(Cell(1.0, 1.0, "annealed"), [score], [20.0])

    assert boundary.region(entry(annealed), entry(uniform)) == verdict


def test_command_runs_every_cell_then_more_seeds_either_side_of_the_boundary(tmp_path, monkeypatch, capsys):
    """The runs are replaced by a table: annealing fails where front_bias * leak >= 16,
    uniform noise levels where front_bias * leak >= 1."""
    calls = []

    def fake_run_lab(settings):
        names = {v.name: v for v in settings.variants}
        results = []
        for name in names:
            cell = next(c for c in boundary.grid([1.0, 4.0, 16.0, 64.0], [0.25, 0.5, 0.75, 1.0]) if c.name == name)
            limit = 16.0 if cell.schedule == "annealed" else 1.0
            for seed in settings.variant_seeds.get(name, settings.seeds):
                results.append(result(cell, seed, 0.8 if cell.front_bias * cell.view_leak >= limit else 0.01))
        calls.append(settings)
        return cli.LabOutcome(results, [], settings.out)

    monkeypatch.setattr(cli, "run_lab", fake_run_lab)
    assert boundary.main(["--out", str(tmp_path), "--steps", "50"]) == 0

    assert len(calls) == 2
    assert len(calls[0].variants) == 32 and calls[0].seeds == (0,) and calls[0].variant_seeds == {}
    assert calls[0].steps == 50 and calls[0].objects == ("head",)
    assert not any(name.endswith("uniform") for name in calls[1].variant_seeds)
    extra = calls[1].variant_seeds
    assert all(seeds == (0, 1, 2) for seeds in extra.values())
    # either side of fb * leak = 16, annealing's boundary; uniform cells keep one seed
    assert set(extra) == {
        "fb4-leak1-annealed", "fb16-leak0.25-annealed", "fb16-leak0.5-annealed", "fb16-leak0.75-annealed",
        "fb16-leak1-annealed", "fb64-leak0.25-annealed", "fb64-leak0.5-annealed", "fb64-leak0.75-annealed"}

    with open(tmp_path / "boundary.csv", encoding="utf-8") as stream:
        rows = {(r["front_bias"], r["view_leak"]): r for r in csv.DictReader(stream)}
    assert len(rows) == 16
    assert rows["4", "0.5"]["region"] == "annealing keeps one face"
    assert rows["64", "0.5"]["region"] == "neither schedule keeps one face"
    assert rows["1", "0.25"]["annealed_runs"] == "1" and rows["16", "1"]["annealed_runs"] == "3"
    assert (tmp_path / "boundary.png").stat().st_size > 10_000
    table = (tmp_path / "boundary.md").read_text(encoding="utf-8")
    assert "| 16 | 1 | 0.800 | 0.800 | 3 + 1 |" in table
    assert "| 4 | 0.5 | 0.010 | 0.800 | 1 + 1 |" in table


def test_a_sweep_split_by_schedule_runs_only_its_cells(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "run_lab", lambda settings: seen.append(settings) or cli.LabOutcome([], [], tmp_path))
    assert boundary.main(["--out", str(tmp_path), "--schedules", "uniform", "--front-biases", "1", "4",
                          "--view-leaks", "0.5"]) == 0
    assert [v.name for v in seen[0].variants] == ["fb1-leak0.5-uniform", "fb4-leak0.5-uniform"]
    assert seen[0].steps == 500 and len(seen) == 1


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--front-biases", "0", "4"], "--front-biases must be > 0, got [0.0, 4.0]"),
    (["--view-leaks", "0.5", "1.5"], "--view-leaks must be in [0, 1], got [0.5, 1.5]"),
])
def test_bad_sweep_settings_are_named(argv, message, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "run_lab", lambda settings: pytest.fail("ran despite a bad setting"))
    with pytest.raises(SystemExit, match=message.replace("[", r"\[").replace("]", r"\]")):
        boundary.main(["--out", str(tmp_path), *argv])
