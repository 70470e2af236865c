"""benchmarks/bench_switches.py on the tiny models: each switch timed off and on at the
config's batch, with the switch really set in the guidance it times."""
import importlib.util
import sys

import pytest
import torch

from conftest import REPO_ROOT

spec = importlib.util.spec_from_file_location("bench_switches", REPO_ROOT / "benchmarks" / "bench_switches.py")
bench_switches = importlib.util.module_from_spec(spec)
sys.modules["bench_switches"] = bench_switches
spec.loader.exec_module(bench_switches)


def test_each_switch_is_measured_off_and_on_at_the_configs_batch(tiny_models):
    results = bench_switches.measure([2], bench_switches.SWITCHES, tiny_models, "float32", torch.device("cpu"),
                                     repeats=2)
    assert list(results) == ["stage2/compile_unet", "stage2/enable_channels_last_format"]
    for row in results.values():
        assert row["guidance"] == "StableDiffusionGuidance"
        assert row["batch_size"] == 2  # configs/stabledreamer.yaml: data.batch_size [4, 2]
        for setting in ("off", "on"):
            assert row[setting]["median_s"] > 0 and row[setting]["first_call_s"] > 0
        assert row["speedup"] == pytest.approx(row["off"]["median_s"] / row["on"]["median_s"])
    assert "stage2/compile_unet" in bench_switches.table(results, "CPU", 2)


@pytest.mark.parametrize("switch, value", [("compile_unet", True), ("enable_channels_last_format", False)])
def test_the_guidance_timed_has_the_switch_as_asked(tiny_models, switch, value):
    guidance, batch_size = bench_switches.stage_guidance(2, tiny_models, "float32", **{switch: value})
    assert getattr(guidance.cfg, switch) is value and batch_size == 2
    if switch == "compile_unet":
        assert guidance.unet._compiled_call_impl is not None
    else:
        assert not guidance.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
