"""benchmarks/full_scale.py on the tiny models: FLOP counts positive and scaling with batch
and resolution as they must, the projections' arithmetic, the memory probes."""
import importlib.util
import json
import mmap
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO_ROOT, THREESTUDIO_ROOT, USES_REAL_THREESTUDIO

spec = importlib.util.spec_from_file_location("full_scale", REPO_ROOT / "benchmarks" / "full_scale.py")
full_scale = importlib.util.module_from_spec(spec)
sys.modules["full_scale"] = full_scale
spec.loader.exec_module(full_scale)

CPU_CONFIG = REPO_ROOT / "configs" / "stabledreamer-cpu.yaml"


def test_projection_is_the_full_runs_flops_at_the_peak_rate():
    step_flops = {"stage1": 2e12, "stage2": 1e12}
    # (2e12 * 4000 + 1e12 * 4000 + 5e12) FLOP / 100e12 FLOP/s
    assert full_scale.projected_full_run_s(step_flops, 5e12, 100.0) == pytest.approx(120.05)
    assert full_scale.projected_full_run_s(step_flops, 0.0, 50.0, steps={"stage1": 10, "stage2": 0}) == \
        pytest.approx(0.4)
    with pytest.raises(ValueError, match="peak_tflops must be positive, got 0"):
        full_scale.projected_full_run_s(step_flops, 0.0, 0)
    assert full_scale.FULL_RUN == {"stage1_steps": 4000, "stage2_steps": 4000, "test_views": 120}


def test_projection_from_measured_steps():
    stages = {"stage1": {"step_s": 0.05, "build_s": 30.0}, "stage2": {"step_s": 0.1, "build_s": 10.0}}
    assert full_scale.projected_from_measured_s(stages) == pytest.approx(0.05 * 4000 + 30 + 0.1 * 4000 + 10)
    assert full_scale.projected_from_measured_s({"stage1": stages["stage1"]}) is None


def test_cpu_attention_is_counted_as_the_cuda_kernels_are():
    batch, heads, length, width = 2, 4, 64, 32
    q = torch.randn(batch, heads, length, width, requires_grad=True)
    forward = full_scale.flops_of(lambda: F.scaled_dot_product_attention(q, q, q))
    # two matrix products of 2 * L * L * D multiply-adds per head (the pointwise softmax adds none
    # here: the fused kernel is one operator)
    assert forward == 2 * (2 * batch * heads * length * length * width)


def test_pointwise_operators_count_one_per_output_element():
    x = torch.randn(10, 20)
    assert full_scale.flops_of(lambda: (x * 2 + 1).relu()) == 3 * 200
    assert full_scale.flops_of(lambda: x @ x.T) == 2 * 10 * 10 * 20


def test_vae_flops_scale_with_batch_and_resolution(tiny_models):
    from diffusers import AutoencoderKL

    config = dict(AutoencoderKL.load_config(tiny_models["stable-diffusion"], subfolder="vae"))
    one = full_scale.vae_encode_backward_flops(config, 1, 64)
    assert one > 0
    # per-image work: twice the images, twice the FLOPs (to a few shared elementwise terms)
    assert full_scale.vae_encode_backward_flops(config, 2, 64) == pytest.approx(2 * one, rel=1e-4)
    # convolutions scale with the pixels (4x), the mid-block attention with their square
    assert full_scale.vae_encode_backward_flops(config, 1, 128) > 4 * one


def test_text_encoder_flops_scale_with_the_prompts(tiny_models):
    one = full_scale.text_encoder_flops(str(tiny_models["deepfloyd-if"]), "deep-floyd-prompt-processor", 1)
    assert one > 0
    # each prompt attends within itself: linear in the prompts (T5's relative position bias
    # is computed once for all of them)
    six = full_scale.text_encoder_flops(str(tiny_models["deepfloyd-if"]), "deep-floyd-prompt-processor", 6)
    assert six == pytest.approx(6 * one, rel=0.02)
    clip = full_scale.text_encoder_flops(str(tiny_models["stable-diffusion"]), "stable-diffusion-prompt-processor", 2)
    assert clip > 0


def test_expected_batches_per_stage():
    from omegaconf import OmegaConf

    data = OmegaConf.create({"batch_size": [4, 2], "width": [64, 512], "height": [64, 512]})
    assert full_scale.expected_batches(data) == {1: (4, 64, 64), 2: (2, 512, 512)}
    data = OmegaConf.create({"batch_size": 1, "width": 32, "height": 32})
    assert full_scale.expected_batches(data) == {1: (1, 32, 32), 2: (1, 32, 32)}


def test_peak_resident_memory_resets():
    if not full_scale.reset_peak_rss():
        pytest.skip("/proc/self/clear_refs is not writable here (not Linux): VmHWM cannot be reset")
    # an anonymous mapping, every page touched: resident until closed, whatever the heap
    # allocator caches (torch's or the C library's)
    size = 64 * 2**20
    block = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        block[offset] = 1
    high = full_scale.peak_rss_gib()
    block.close()
    assert full_scale.reset_peak_rss()
    assert full_scale.peak_rss_gib() < high - 0.03


def _run(tmp_path_factory, tiny_models, *overrides):
    workdir = tmp_path_factory.mktemp("full-scale")
    models = tiny_models["deepfloyd-if"].parent
    raw = full_scale.run_pipeline(CPU_CONFIG, [
        f"system.prompt_processor.pretrained_model_name_or_path={models / 'deepfloyd-if'}",
        f"system.guidance.pretrained_model_name_or_path={models / 'deepfloyd-if'}",
        f"system.prompt_processor_stage2.pretrained_model_name_or_path={models / 'stable-diffusion'}",
        f"system.guidance_stage2.pretrained_model_name_or_path={models / 'stable-diffusion'}",
        "data.width=[32,48]", "data.height=[32,48]", *overrides,
    ], torch.device("cpu"), steps=1, warmup=1, workdir=workdir)
    return full_scale.summarise(raw, torch.device("cpu"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_models):
    return {
        "base": _run(tmp_path_factory, tiny_models, "data.batch_size=[1,1]"),
        "batch": _run(tmp_path_factory, tiny_models, "data.batch_size=[2,2]"),
        "resolution": _run(tmp_path_factory, tiny_models, "data.batch_size=[1,1]", "data.width=[64,96]",
                           "data.height=[64,96]", "data.eval_width=64", "data.eval_height=64",
                           "system.guidance.render_resolution=64",
                           "system.guidance_stage2.render_resolution=128"),
    }


def test_every_stage_is_measured_with_positive_flops(runs):
    summary = runs["base"]
    assert set(summary["stages"]) == {"stage1", "stage2"}
    for name, stage in summary["stages"].items():
        assert stage["measured_steps"] == 1 and stage["step_s"] > 0 and stage["peak_gib"] > 0, name
        # stage 2 starts with ENTRY_STEPS batches drawn at stage 1's size (not measured)
        assert stage["entry_steps_not_measured"] == ([] if name == "stage1" else [[1, 32, 32]] * 2), name
        assert (stage["entry_steps_peak_gib"] is None) == (name == "stage1"), name
        assert stage["build_s"] > 0, name
        flops = stage["flops"]
        assert set(flops) == {*full_scale.PHASES, "total"}
        assert flops["total"] == sum(flops[p] for p in full_scale.PHASES), name
        for phase in ("render", "guidance_network", "optimizer"):
            assert flops[phase] > 0, (name, phase)
        assert flops["text_embeddings"] == 0  # computed once, reported apart
    assert summary["stages"]["stage1"]["flops"]["vae"] == 0  # IF works in pixel space
    assert summary["stages"]["stage2"]["flops"]["vae"] > 0
    assert [t["prompts"] for t in summary["text_embeddings"]] == [6, 6]
    assert all(t["flops"] > 0 for t in summary["text_embeddings"])
    assert summary["switch"]["seconds"] > 0 and summary["test_render_flops"] > 0
    assert set(summary["projection_lower_bound_s"]) == set(full_scale.PEAK_HALF_PRECISION_TFLOPS)
    expected = full_scale.projected_full_run_s(
        {s: summary["stages"][s]["flops"]["total"] for s in ("stage1", "stage2")},
        summary["one_off_flops"], full_scale.PEAK_HALF_PRECISION_TFLOPS["H100 SXM"])
    assert summary["projection_lower_bound_s"]["H100 SXM"] == pytest.approx(expected)
    table = full_scale.table(summary)
    assert "PROJECTION (lower bound" in table and "stage2" in table


def test_flops_scale_with_batch(runs):
    for stage in ("stage1", "stage2"):
        one, two = runs["base"]["stages"][stage]["flops"], runs["batch"]["stages"][stage]["flops"]
        # the guidance network and the VAE see each view apart: twice the work (to a few
        # elementwise terms shared by the batch)
        assert two["guidance_network"] == pytest.approx(2 * one["guidance_network"], rel=1e-3), stage
        assert two["vae"] == pytest.approx(2 * one["vae"], rel=1e-3), stage
        # the rest (rendering, losses) grows; how much depends on the Gaussians the random
        # cameras see (test_test_render_flops_scale_with_resolution checks fixed cameras)
        assert two["render"] > one["render"], stage


def test_flops_scale_with_resolution(runs):
    for stage in ("stage1", "stage2"):
        low, high = runs["base"]["stages"][stage]["flops"], runs["resolution"]["stages"][stage]["flops"]
        # twice the side: 4x the convolutions' work, up to 16x where attention runs over the
        # pixels; the time-embedding MLPs do not grow (at toy width they are a large share)
        assert 2 * low["guidance_network"] < high["guidance_network"] <= 16 * low["guidance_network"], stage
        assert high["render"] > low["render"], stage
    assert runs["resolution"]["stages"]["stage2"]["flops"]["vae"] > 4 * runs["base"]["stages"]["stage2"]["flops"]["vae"]


def test_test_render_flops_scale_with_resolution(runs):
    # the same turntable cameras at twice the side: per-pixel work 4x, per-Gaussian work
    # (projection, activations, sorting) unchanged
    low, high = runs["base"]["test_render_flops"], runs["resolution"]["test_render_flops"]
    assert low < high <= 4 * low


NEEDS_REAL_THREESTUDIO = pytest.mark.skipif(
    not USES_REAL_THREESTUDIO,
    reason="threestudio's own guidances and spawned text-encoder process: the stand-in has neither")


@NEEDS_REAL_THREESTUDIO
def test_threestudio_guidances_take_the_settings_they_have():
    from threestudio.utils.config import load_config

    cfg = load_config(str(CPU_CONFIG), cli_args=["system.prompt_processor.prompt=a corgi"])
    ours = {block: dict(cfg.system[block]) for block in full_scale.THREESTUDIO_GUIDANCES}
    dropped = full_scale.use_threestudio_guidances(cfg.system)
    assert (cfg.system.guidance_type, cfg.system.guidance_stage2_type) == (
        "deep-floyd-guidance", "stable-diffusion-guidance")
    for block in full_scale.THREESTUDIO_GUIDANCES:
        theirs = cfg.system[block]
        assert theirs.guidance_scale == ours[block]["guidance_scale"]
        assert theirs.pretrained_model_name_or_path == ours[block]["pretrained_model_name_or_path"]
        assert theirs.half_precision_weights is True
        assert "anneal" in dropped[block] and "anneal" not in theirs
        assert set(theirs) | set(dropped[block]) == set(ours[block]) | {"half_precision_weights"}


@NEEDS_REAL_THREESTUDIO
def test_the_benchmark_runs_both_guidances_with_threestudios_spawned_text_encoder(tiny_models, tmp_path):
    """The benchmark as a command on real threestudio with ``spawn=true`` and
    ``--guidances both``: the spawned child re-imports the script and needs the CPU shims
    there too; its peak is measured apart; threestudio's guidances train on the same models."""
    models = tiny_models["deepfloyd-if"].parent
    summary_path = tmp_path / "full-scale.json"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "full_scale.py"), "--no-full-size", "--guidances", "both",
         "--config", str(CPU_CONFIG), "--workdir", str(tmp_path / "work"), "--json", str(summary_path),
         f"system.prompt_processor.pretrained_model_name_or_path={models / 'deepfloyd-if'}",
         f"system.guidance.pretrained_model_name_or_path={models / 'deepfloyd-if'}",
         f"system.prompt_processor_stage2.pretrained_model_name_or_path={models / 'stable-diffusion'}",
         f"system.guidance_stage2.pretrained_model_name_or_path={models / 'stable-diffusion'}",
         "system.prompt_processor.spawn=true", "system.prompt_processor_stage2.spawn=true",
         "data.batch_size=[1,1]", "data.width=[32,48]", "data.height=[32,48]"],
        capture_output=True, text=True, env={**os.environ, "THREESTUDIO_ROOT": str(THREESTUDIO_ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    runs = summary["runs"]
    assert runs["threestudio"]["guidance_types"] == ["deep-floyd-guidance", "stable-diffusion-guidance"]
    assert runs["stabledreamer"]["guidance_types"] == ["stabledreamer-deep-floyd-guidance",
                                                       "stabledreamer-stable-diffusion-guidance"]
    for run in runs.values():
        assert [t["prompts"] for t in run["text_embeddings"]] == [6, 6]
        assert all(t["child_process_peak_rss_gib"] > 0 for t in run["text_embeddings"])
    for stage in ("stage1", "stage2"):
        step = summary["comparison"][stage]["step_s"]
        assert step["ratio"] == pytest.approx(step["threestudio"] / step["stabledreamer"])
    assert "SIDE BY SIDE" in result.stdout
