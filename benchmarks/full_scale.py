"""Full scale: the two-stage pipeline with full-size models, its memory, arithmetic and time.

Usage:
  python benchmarks/full_scale.py [--device cpu|cuda] [--steps N] [--warmup N]
                                  [--models DIR] [--json PATH] [--config PATH]
                                  [--guidances stabledreamer|threestudio|both] [override ...]

``configs/stabledreamer.yaml`` (or ``--config``) trains through threestudio's Trainer set-up
(system, random-camera data module, manual optimisation) with the full-size random models
of ``full_size_models`` (built once under ``--models``, default ``.cache/full-size-models``)
and bfloat16 guidance weights, for ``--warmup`` + ``--steps`` steps of stage 1, then the
stage switch, then as many steps of stage 2. Further ``key=value`` overrides go to the
config (tests run the CPU config on the tiny models this way).

Per stage it reports:
- peak memory: on CPU the process's peak resident set (``VmHWM``, reset when the stage
  starts; the text encoder's own process, when threestudio spawns one, is measured apart);
  on CUDA ``max_memory_allocated`` since the stage started; both also during the text
  embeddings and across the switch (releasing stage 1, building stage 2);
- the arithmetic of one step (the first measured step of the stage): the FLOPs of
  ``torch.utils.flop_counter`` (matrix products, convolutions, attention; the CPU
  attention kernel given the CUDA kernels' formula) plus one per output element of every
  pointwise operator (``PointwiseCounter``), split into: ``guidance_network`` (the UNet's forward passes), ``vae`` (VAE
  encode and its backward, counted on the ``meta`` device at the step's shapes),
  ``density_control``, ``optimizer``, ``render`` (the rest: rasterisation forward and
  backward, losses), and ``text_embeddings`` (0 per step: computed once, reported apart);
- step time: the median over the measured steps (on CUDA after ``--warmup`` steps, with the
  device synchronised at step boundaries), and on CUDA the guidance network's own forward
  time in the same steps (CUDA events): the limit score distillation cannot beat.

Projections, labelled as such: a lower bound on a full run's time (``FULL_RUN``: 4000 steps
per stage, text embeddings, the 120-view test renders) on each GPU of
``PEAK_HALF_PRECISION_TFLOPS`` at its peak dense half-precision rate, from the arithmetic;
on CUDA also the measured step times times the full run's steps plus the measured model
loading and text embedding times.

``--guidances threestudio`` runs the same pipeline with threestudio's own
``deep-floyd-guidance`` and ``stable-diffusion-guidance`` on the same models
(``use_threestudio_guidances``); ``--guidances both`` runs ours and then theirs and adds
the ratios of their step times, guidance-network times and peaks (``compare``).

Prints one table and writes the figures as JSON (``--json``).
"""
import argparse
import contextlib
import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = REPO / ".cache" / "full-size-models"
# Peak dense float16/bfloat16 tensor rates with float32 accumulation, from the vendors'
# data sheets (H100 SXM5, A100 SXM4, GeForce RTX 4090), in TFLOP/s.
PEAK_HALF_PRECISION_TFLOPS = {"H100 SXM": 989.4, "A100 SXM": 312.0, "RTX 4090": 165.2}
FULL_RUN = {"stage1_steps": 4000, "stage2_steps": 4000, "test_views": 120}
# Steps at the start of stage 2 that still run stage 1's batch size and resolution.
ENTRY_STEPS = 2
PHASES = ("render", "text_embeddings", "guidance_network", "vae", "density_control", "optimizer")


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """PyTorch counts the CUDA attention kernels only; the CPU kernel does the same work."""
    return sdpa_flop_count(query, key, value)


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# ----------------------------------------------------------------------------- arithmetic


def projected_full_run_s(step_flops: Dict[str, float], one_off_flops: float, peak_tflops: float,
                         steps: Optional[Dict[str, int]] = None) -> float:
    """Lower bound (seconds) on a full run at ``peak_tflops``: every FLOP at the peak rate.

    ``step_flops``: FLOPs of one step per stage (``stage1``, ``stage2``); ``steps``: steps
    per stage (default ``FULL_RUN``); ``one_off_flops``: work done once (text embeddings,
    test renders)."""
    if peak_tflops <= 0:
        raise ValueError(f"peak_tflops must be positive, got {peak_tflops}")
    steps = steps or {"stage1": FULL_RUN["stage1_steps"], "stage2": FULL_RUN["stage2_steps"]}
    total = sum(step_flops[stage] * count for stage, count in steps.items()) + one_off_flops
    return total / (peak_tflops * 1e12)


class PointwiseCounter(TorchDispatchMode):
    """One FLOP per output element of every pointwise operator (``torch.Tag.pointwise``):
    the additions, multiplications and activations that ``FlopCounterMode`` (matrix
    products, convolutions, attention) leaves out; most of the rasteriser's, Adam's and
    density control's work is of this kind."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if torch.Tag.pointwise in func.tags and func.overloadpacket not in flop_registry:
            outputs = out if isinstance(out, (tuple, list)) else (out,)
            self.flops += sum(t.numel() for t in outputs if isinstance(t, torch.Tensor))
        return out


class CountFlops:
    """Context manager: ``FlopCounterMode``'s FLOPs plus ``PointwiseCounter``'s, in ``total``
    once it exits (nested counters all count what runs inside the innermost)."""

    def __enter__(self):
        self._matrix, self._pointwise = FlopCounterMode(display=False), PointwiseCounter()
        self._matrix.__enter__()
        self._pointwise.__enter__()
        self.total = 0
        return self

    def __exit__(self, *exc):
        self._pointwise.__exit__(*exc)
        self._matrix.__exit__(*exc)
        self.matrix_flops = self._matrix.get_total_flops()
        self.total = self.matrix_flops + self._pointwise.flops
        return False


def projected_from_measured_s(stages: Dict[str, Dict[str, Any]]) -> Optional[float]:
    """Median step time of each stage times its steps in ``FULL_RUN``, plus each stage's
    build (text embeddings and model loading); None unless both stages were measured."""
    if not all((stages.get(s) or {}).get("step_s") for s in ("stage1", "stage2")):
        return None
    return sum(stages[s]["step_s"] * FULL_RUN[f"{s}_steps"] + (stages[s]["build_s"] or 0.0)
               for s in ("stage1", "stage2"))


def flops_of(function: Callable[[], Any]) -> int:
    with CountFlops() as counter:
        function()
    return counter.total


def vae_encode_backward_flops(vae_config: dict, batch_size: int, resolution: int) -> int:
    """FLOPs of the VAE encode of ``batch_size`` images at ``resolution`` and its backward
    to the images, counted on the ``meta`` device (shapes only: nothing is computed)."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(vae_config).requires_grad_(False)
        images = torch.empty(batch_size, 3, resolution, resolution, requires_grad=True)

    def encode_and_backward():
        latents = vae.encode(images).latent_dist.sample()
        latents.backward(torch.empty_like(latents))

    return flops_of(encode_and_backward)


def text_encoder_flops(model_dir: str, processor_type: str, num_prompts: int, max_length: int = 77) -> int:
    """FLOPs of encoding ``num_prompts`` prompts of ``max_length`` tokens with the text
    encoder in ``model_dir/text_encoder``, counted on the ``meta`` device."""
    from transformers import CLIPTextModel, T5EncoderModel

    # the model's own config class: transformers 4.28's AutoConfig knows no "clip_text_model"
    model_class = T5EncoderModel if "deep-floyd" in processor_type else CLIPTextModel
    config = model_class.config_class.from_pretrained(model_dir, subfolder="text_encoder")
    with torch.device("meta"):
        encoder = model_class(config)
        ids = torch.zeros(num_prompts, max_length, dtype=torch.long)
    with torch.no_grad():
        return flops_of(lambda: encoder(ids))


def unique_prompts(processor) -> int:
    """Number of distinct prompts a threestudio prompt processor encodes."""
    prompts = [processor.prompt, processor.negative_prompt, *processor.prompts_vd, *processor.negative_prompts_vd]
    return len(dict.fromkeys(prompts))


# ----------------------------------------------------------------------------- memory


def reset_peak_rss() -> bool:
    """Reset the process's VmHWM (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_gib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def children_peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


class Memory:
    """Peak memory of a period: resident set on CPU, allocated CUDA memory on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()

    def peak_gib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return peak_rss_gib()


# ----------------------------------------------------------------------------- the run


class PipelineProbe:
    """Instruments a ``stabledreamer-system`` (before fitting): per-step time, FLOPs by
    phase, per-stage peak memory, the text embeddings and the stage switch."""

    def __init__(self, system, device: torch.device, warmup: int, expected_batches: Dict[int, tuple]):
        self.system, self.device, self.warmup = system, device, warmup
        self.expected_batches = expected_batches
        self.memory = Memory(device)
        self.stages: Dict[str, Dict[str, Any]] = {}
        self.text_embeddings: List[Dict[str, Any]] = []
        self.switch: Optional[Dict[str, Any]] = None
        self._phase_flops: Optional[Dict[str, int]] = None
        self._unet_events: List[Any] = []
        self._wrap_system()

    # -- wrapping

    def _wrap_system(self) -> None:
        system = self.system
        train_step, activate = system.training_step, system._activate_stage

        def activate_stage(stage, *args, **kwargs):
            switching = system._active_stage is not None and system._active_stage != stage
            if system._active_stage == stage:
                return activate(stage, *args, **kwargs)
            self.memory.reset()
            started = time.perf_counter()
            with self._text_embeddings_probe(stage):
                activate(stage, *args, **kwargs)
            record = {"seconds": time.perf_counter() - started, "peak_gib": self.memory.peak_gib()}
            self._stage(stage)["build"] = record
            if switching:
                self.switch = record
            self._wrap_guidance(system._active_guidance())
            self.memory.reset()  # the stage's own peak: its models held, its steps

        def training_step(batch, batch_idx):
            stage = self._stage(system._active_stage)
            shape = (batch["c2w"].shape[0], batch["height"], batch["width"])
            if shape != self.expected_batches[system._active_stage]:
                # threestudio's data module takes the new stage's batch size and resolution in
                # on_train_batch_start, after this step's batch was drawn and the next one
                # prefetched: the stage's first ENTRY_STEPS steps run the previous stage's
                # batches. Run, not measured.
                stage["entry_steps"].append(shape)
                out = train_step(batch, batch_idx)
                stage["entry_peak_gib"] = max(stage.get("entry_peak_gib", 0.0), self.memory.peak_gib())
                self.memory.reset()
                return out
            measured = stage["warmup_done"] >= self.warmup
            count = measured and "flops" not in stage
            self._unet_events = []
            self._sync()
            started = time.perf_counter()
            if count:
                self._phase_flops = defaultdict(int)
                with CountFlops() as counter:
                    out = train_step(batch, batch_idx)
                stage["flops"] = self._split(counter.total, batch)
                self._phase_flops = None
            else:
                out = train_step(batch, batch_idx)
            self._sync()
            seconds = time.perf_counter() - started
            if not measured:
                stage["warmup_done"] += 1
            elif not count or self.device.type != "cuda":
                stage["step_s"].append(seconds)
                stage["guidance_network_s"].append(self._unet_seconds())
            stage["peak_gib"] = max(stage.get("peak_gib", 0.0), self.memory.peak_gib())
            return out

        system._activate_stage, system.training_step = activate_stage, training_step
        density = system.geometry.density_control

        def density_control(*args, **kwargs):
            return self._in_phase("density_control", density, *args, **kwargs)

        system.geometry.density_control = density_control

    def _wrap_guidance(self, guidance) -> None:
        for name in ("unet", "unet_lora"):
            unet = getattr(guidance, name, None)
            if unet is not None and not getattr(unet, "_full_scale_wrapped", False):
                unet.forward = self._timed_unet_forward(unet.forward)
                unet._full_scale_wrapped = True
        optimizer = self.system._optimizer
        if not getattr(optimizer, "_full_scale_wrapped", False):
            step = optimizer.step

            def optimizer_step(*args, **kwargs):
                return self._in_phase("optimizer", step, *args, **kwargs)

            optimizer.step = optimizer_step
            optimizer._full_scale_wrapped = True

    def _timed_unet_forward(self, forward):
        """The UNet's forward, counted as ``guidance_network`` and timed (CUDA events on CUDA)."""

        def timed_forward(*args, **kwargs):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = self._in_phase("guidance_network", forward, *args, **kwargs)
                end.record()
                self._unet_events.append((start, end))
            else:
                started = time.perf_counter()
                out = self._in_phase("guidance_network", forward, *args, **kwargs)
                self._unet_events.append(time.perf_counter() - started)
            return out

        return timed_forward

    def _in_phase(self, phase: str, function, *args, **kwargs):
        if self._phase_flops is None:
            return function(*args, **kwargs)
        with CountFlops() as counter:
            out = function(*args, **kwargs)
        self._phase_flops[phase] += counter.total
        return out

    @contextlib.contextmanager
    def _text_embeddings_probe(self, stage: int):
        """Time and peak memory of the prompt processor's text embeddings during a build."""
        from threestudio.models.prompt_processors.base import PromptProcessor

        prepare = PromptProcessor.prepare_text_embeddings
        probe = self

        def prepare_text_embeddings(processor, *args, **kwargs):
            probe.memory.reset()
            started = time.perf_counter()
            out = prepare(processor, *args, **kwargs)
            probe.text_embeddings.append({
                "stage": stage,
                "processor": type(processor).__name__,
                "model": processor.cfg.pretrained_model_name_or_path,
                "prompts": unique_prompts(processor),
                "seconds": time.perf_counter() - started,
                "peak_gib": probe.memory.peak_gib(),
                "child_process_peak_rss_gib": children_peak_rss_gib(),
            })
            return out

        PromptProcessor.prepare_text_embeddings = prepare_text_embeddings
        try:
            yield
        finally:
            PromptProcessor.prepare_text_embeddings = prepare

    # -- figures

    def _stage(self, stage: int) -> Dict[str, Any]:
        return self.stages.setdefault(
            f"stage{stage}", {"warmup_done": 0, "step_s": [], "guidance_network_s": [], "entry_steps": []}
        )

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _unet_seconds(self) -> float:
        if self.device.type == "cuda":
            seconds = sum(start.elapsed_time(end) for start, end in self._unet_events) / 1e3
        else:
            seconds = sum(self._unet_events)
        self._unet_events = []
        return seconds

    def _split(self, total: int, batch: Dict[str, Any]) -> Dict[str, int]:
        phases = dict(self._phase_flops)
        guidance = self.system._active_guidance()
        vae = getattr(guidance, "vae", None)
        phases["vae"] = 0
        if vae is not None:
            # threestudio's SD guidance has no render_resolution: it encodes at 512
            resolution = getattr(guidance.cfg, "render_resolution", 512)
            phases["vae"] = vae_encode_backward_flops(dict(vae.config), batch["c2w"].shape[0], resolution)
        phases["text_embeddings"] = 0
        accounted = sum(phases.get(p, 0) for p in PHASES if p != "render")
        phases["render"] = total - accounted
        return {**{p: phases.get(p, 0) for p in PHASES}, "total": total}


def _threestudio_on_path() -> None:
    """threestudio importable before the extension is imported (which registers its classes
    only then): ``THREESTUDIO_ROOT`` with the tests' CPU shims, or the stand-in."""
    if "threestudio" in sys.modules:
        return
    root = os.environ.get("THREESTUDIO_ROOT")
    if root:
        sys.path.insert(0, str(REPO / "tests"))
        import threestudio_cpu_shims

        if os.environ.get("STABLEDREAMER_STUB_MISSING_CUDA_BUILDS") == "1":
            threestudio_cpu_shims.stub_missing_cuda_builds()  # as tests/threestudio_cpu_launch.py
        threestudio_cpu_shims.install(Path(root))
    elif importlib.util.find_spec("threestudio") is None:
        sys.path.insert(0, str(REPO / "tests" / "threestudio_standin"))


def model_overrides(models: Dict[str, Path], weights_dtype: str) -> List[str]:
    if_dir, sd_dir = models["deepfloyd-if"], models["stable-diffusion"]
    return [
        f"system.prompt_processor.pretrained_model_name_or_path={if_dir}",
        f"system.guidance.pretrained_model_name_or_path={if_dir}",
        f"system.prompt_processor_stage2.pretrained_model_name_or_path={sd_dir}",
        f"system.guidance_stage2.pretrained_model_name_or_path={sd_dir}",
        f"system.guidance.weights_dtype={weights_dtype}",
        f"system.guidance_stage2.weights_dtype={weights_dtype}",
    ]


THREESTUDIO_GUIDANCES = {"guidance": "deep-floyd-guidance", "guidance_stage2": "stable-diffusion-guidance"}


def use_threestudio_guidances(system_cfg) -> Dict[str, List[str]]:
    """Swap threestudio's own guidances into ``system_cfg`` (in place), keeping each
    guidance block's settings that threestudio's class has (model, guidance scale, t range,
    weighting, precision switches); return the settings it lacks, per block, dropped.

    threestudio's guidances load in float16 (``half_precision_weights``), have no
    annealing (t ~ U[min, max]: a step costs the same at any t) and resize to their
    model's own size (64 for IF, 512 for SD)."""
    from omegaconf import OmegaConf

    import threestudio

    dropped = {}
    for block, name in THREESTUDIO_GUIDANCES.items():
        known = threestudio.find(name).Config.__dataclass_fields__
        ours = OmegaConf.to_container(system_cfg[block], resolve=True)
        system_cfg[f"{block}_type"] = name
        system_cfg[block] = {**{k: v for k, v in ours.items() if k in known}, "half_precision_weights": True}
        dropped[block] = sorted(k for k in ours if k not in known)
    return dropped


def run_pipeline(config: Path, overrides: List[str], device: torch.device, steps: int, warmup: int,
                 workdir: Path, guidances: str = "stabledreamer") -> Dict[str, Any]:
    """Train ``warmup + steps`` steps of each stage; return the probe's raw figures.

    ``guidances``: ``stabledreamer`` (the config's) or ``threestudio``
    (``use_threestudio_guidances``)."""
    _threestudio_on_path()
    import pytorch_lightning as pl

    import threestudio
    import threestudio_stabledreamer  # noqa: F401  (registers the extension)
    from threestudio.utils.config import load_config

    # On CUDA the counted step (FLOP counting slows it) is one more, untimed; stage 2 has
    # ENTRY_STEPS more (see PipelineProbe: they run stage 1's batches).
    per_stage = warmup + steps + (1 if device.type == "cuda" else 0)
    overrides = [
        "system.prompt_processor.prompt=a zoomed out DSLR photo of a corgi wearing a top hat",
        f"exp_root_dir={workdir / 'outputs'}",
        f"trainer.max_steps={2 * per_stage + ENTRY_STEPS}",
        f"system.stage2_start_step={per_stage}",
        "system.vis_interval=0",
        "system.export_on_fit_end=false",
        # embeddings computed in this run (once per stage), not read from an earlier run's cache
        "system.prompt_processor.use_cache=false",
        "system.prompt_processor_stage2.use_cache=false",
        *overrides,
    ]
    cfg = load_config(str(config), cli_args=overrides)
    dropped = use_threestudio_guidances(cfg.system) if guidances == "threestudio" else {}
    pl.seed_everything(cfg.seed)
    previous = os.getcwd()
    os.chdir(workdir)  # threestudio caches the text embeddings under the working directory
    try:
        data = threestudio.find(cfg.data_type)(cfg.data)
        system = threestudio.find(cfg.system_type)(cfg.system, resumed=False)
        system.set_save_dir(os.path.join(cfg.trial_dir, "save"))
        probe = PipelineProbe(system, device, warmup, expected_batches(cfg.data))
        accelerator = ("gpu", [device.index or 0]) if device.type == "cuda" else ("cpu", 1)
        trainer = pl.Trainer(max_steps=cfg.trainer.max_steps, accelerator=accelerator[0], devices=accelerator[1],
                             logger=False, enable_progress_bar=False, enable_model_summary=False,
                             enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
                             precision=cfg.trainer.get("precision", "32-true"))
        trainer.fit(system, datamodule=data)
    finally:
        os.chdir(previous)
    text = []
    for record in probe.text_embeddings:
        flops = text_encoder_flops(record["model"], cfg.system[
            "prompt_processor_type" if record["stage"] == 1 else "prompt_processor_stage2_type"], record["prompts"])
        text.append({**record, "flops": flops})
    test_flops = _test_render_flops(system, cfg)
    return {"config": str(config), "overrides": overrides, "guidances": guidances,
            "guidance_types": [cfg.system.guidance_type, cfg.system.guidance_stage2_type],
            "guidance_settings_dropped": dropped, "stages": probe.stages,
            "text_embeddings": text, "switch": probe.switch, "test_render_flops": test_flops,
            "num_gaussians": system.geometry.num_gaussians}


def expected_batches(data_cfg) -> Dict[int, tuple]:
    """{stage: (views, height, width)} of the training batches from the data config, whose
    values are one number or one per stage (``resolution_milestones`` at the switch)."""

    def at(value, index):
        return value if isinstance(value, int) else value[min(index, len(value) - 1)]

    return {stage: (at(data_cfg.batch_size, stage - 1), at(data_cfg.height, stage - 1), at(data_cfg.width, stage - 1))
            for stage in (1, 2)}


def _test_render_flops(system, cfg) -> int:
    """FLOPs of the 120-view test: one render at the evaluation resolution, times the views."""
    import threestudio

    data = threestudio.find(cfg.data_type)(cfg.data)
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    batch = {k: v.to(system.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with torch.no_grad():
        one = flops_of(lambda: system(batch))
    return one * FULL_RUN["test_views"]


def summarise(raw: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    """The reported figures (medians, projections) from ``run_pipeline``'s raw figures."""
    stages = {}
    for name, stage in raw["stages"].items():
        stages[name] = {
            "build_s": stage.get("build", {}).get("seconds"),
            "build_peak_gib": stage.get("build", {}).get("peak_gib"),
            "peak_gib": stage.get("peak_gib"),
            "measured_steps": len(stage["step_s"]),
            "entry_steps_not_measured": [list(shape) for shape in stage["entry_steps"]],
            "entry_steps_peak_gib": stage.get("entry_peak_gib"),
            "step_s": statistics.median(stage["step_s"]) if stage["step_s"] else None,
            "guidance_network_s": statistics.median(stage["guidance_network_s"]) if stage["guidance_network_s"] else None,
            "flops": stage.get("flops"),
        }
    one_off = sum(t["flops"] for t in raw["text_embeddings"]) + raw["test_render_flops"]
    step_flops = {name: stage["flops"]["total"] for name, stage in stages.items() if stage["flops"]}
    projections = {}
    if set(step_flops) == {"stage1", "stage2"}:
        projections = {gpu: projected_full_run_s(step_flops, one_off, tflops)
                       for gpu, tflops in PEAK_HALF_PRECISION_TFLOPS.items()}
    measured_projection = projected_from_measured_s(stages) if device.type == "cuda" else None
    return {
        "device": _device_name(device),
        "guidance_types": raw["guidance_types"],
        "guidance_settings_dropped": raw["guidance_settings_dropped"],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "stages": stages,
        "text_embeddings": raw["text_embeddings"],
        "switch": raw["switch"],
        "one_off_flops": one_off,
        "test_render_flops": raw["test_render_flops"],
        "projection_lower_bound_s": projections,
        "projection_from_measured_steps_s": measured_projection,
        "full_run": FULL_RUN,
        "num_gaussians_at_end": raw["num_gaussians"],
        "memory_measure": ("torch.cuda.max_memory_allocated" if device.type == "cuda"
                           else "peak resident set (VmHWM), reset per period"),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def table(summary: Dict[str, Any]) -> str:
    tf = lambda flops: f"{flops / 1e12:.3g}" if flops is not None else "-"  # noqa: E731
    lines = [f"Full scale on {summary['device']} (torch {summary['torch']}, {summary['threads']} threads); "
             f"memory: {summary['memory_measure']}",
             f"guidances: {' + '.join(summary['guidance_types'])}"
             + "".join(f"; {block} settings they lack, dropped: {', '.join(keys)}"
                       for block, keys in summary["guidance_settings_dropped"].items()),
             f"{'stage':<8} {'build s':>8} {'peak GiB':>9} {'step s':>8} {'UNet s':>8} {'TFLOP/step':>11} "
             + " ".join(f"{p[:12]:>12}" for p in PHASES)]
    for name, stage in summary["stages"].items():
        flops = stage["flops"] or {}
        fmt = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
        lines.append(f"{name:<8} {fmt(stage['build_s']):>8} {fmt(stage['peak_gib']):>9} {fmt(stage['step_s']):>8} "
                     f"{fmt(stage['guidance_network_s']):>8} {tf(flops.get('total')):>11} "
                     + " ".join(f"{tf(flops.get(p)):>12}" for p in PHASES))
    for record in summary["text_embeddings"]:
        lines.append(f"text embeddings ({record['processor']}, {record['prompts']} prompts, once): "
                     f"{record['seconds']:.1f} s, {record['flops'] / 1e12:.3g} TFLOP, peak {record['peak_gib']:.2f} GiB "
                     f"(largest child process so far, e.g. threestudio's spawned encoder: "
                     f"{record['child_process_peak_rss_gib']:.2f} GiB)")
    for name, stage in summary["stages"].items():
        if stage["entry_steps_not_measured"]:
            lines.append(f"{name}: its first {len(stage['entry_steps_not_measured'])} steps ran the previous stage's "
                         f"batch (views, height, width) {stage['entry_steps_not_measured'][0]}, peak "
                         f"{stage['entry_steps_peak_gib']:.2f} GiB; not in the figures above")
    if summary["switch"]:
        lines.append(f"stage switch: {summary['switch']['seconds']:.1f} s, peak {summary['switch']['peak_gib']:.2f} GiB")
    if summary["projection_lower_bound_s"]:
        lines.append("PROJECTION (lower bound, every FLOP at the GPU's peak dense half-precision rate; "
                     f"{FULL_RUN['stage1_steps']}+{FULL_RUN['stage2_steps']} steps, text embeddings, "
                     f"{FULL_RUN['test_views']}-view test):")
        for gpu, seconds in summary["projection_lower_bound_s"].items():
            lines.append(f"  {gpu:<10} {PEAK_HALF_PRECISION_TFLOPS[gpu]:>7.1f} TFLOP/s  >= {seconds / 60:.1f} min")
    if summary["projection_from_measured_steps_s"] is not None:
        lines.append(f"PROJECTION from the measured median steps and builds: "
                     f"{summary['projection_from_measured_steps_s'] / 60:.1f} min")
    return "\n".join(lines)


COMPARED = ("step_s", "guidance_network_s", "peak_gib")


def compare(ours: Dict[str, Any], theirs: Dict[str, Any]) -> Dict[str, Dict[str, Dict[str, Optional[float]]]]:
    """Per stage and figure (``COMPARED``): ours, threestudio's and threestudio's / ours."""
    rows = {}
    for stage in ours["stages"]:
        rows[stage] = {}
        for figure in COMPARED:
            a, b = ours["stages"][stage][figure], theirs["stages"].get(stage, {}).get(figure)
            rows[stage][figure] = {"stabledreamer": a, "threestudio": b,
                                   "ratio": b / a if a and b is not None else None}
    return rows


def comparison_table(rows: Dict[str, Dict[str, Dict[str, Optional[float]]]]) -> str:
    fmt = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
    lines = ["SIDE BY SIDE (same models, same machine, one run after the other): ours | threestudio's | theirs/ours"]
    for stage, figures in rows.items():
        lines.append(f"{stage:<8} " + "   ".join(
            f"{figure} {fmt(v['stabledreamer'])} | {fmt(v['threestudio'])} | {fmt(v['ratio'])}"
            for figure, v in figures.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:index]")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per stage (CPU 1, CUDA 20)")
    parser.add_argument("--warmup", type=int, default=None, help="unmeasured steps per stage first (CPU 0, CUDA 3)")
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="full-size models (built if missing)")
    parser.add_argument("--weights-dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "stabledreamer.yaml")
    parser.add_argument("--no-full-size", action="store_true",
                        help="keep the config's model paths (e.g. the CPU config's tiny models)")
    parser.add_argument("--guidances", default="stabledreamer", choices=("stabledreamer", "threestudio", "both"),
                        help="the config's guidances, threestudio's deep-floyd-guidance and "
                        "stable-diffusion-guidance on the same models (float16: pass --weights-dtype float16 "
                        "to compare like with like), or both one after the other")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/stabledreamer-full-scale"))
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("full_scale: --device cuda but CUDA is not available here", file=sys.stderr)
        return 2
    cuda = device.type == "cuda"
    steps = args.steps if args.steps is not None else (20 if cuda else 1)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 0)
    if steps < 1 or warmup < 0:
        print(f"full_scale: --steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}", file=sys.stderr)
        return 2
    overrides = list(args.overrides)
    _threestudio_on_path()
    if not args.no_full_size:
        from threestudio_stabledreamer.full_size_models import build_full_size_models

        models = build_full_size_models(args.models, torch.float16)
        overrides = model_overrides(models, args.weights_dtype) + overrides
    if cuda:
        torch.cuda.set_device(device)
    args.workdir.mkdir(parents=True, exist_ok=True)
    kinds = ("stabledreamer", "threestudio") if args.guidances == "both" else (args.guidances,)
    summaries = {}
    for kind in kinds:
        raw = run_pipeline(args.config, overrides, device, steps, warmup, args.workdir / kind, kind)
        summaries[kind] = summarise(raw, device)
        print(table(summaries[kind]), flush=True)
    summary = summaries[kinds[0]]
    if len(kinds) == 2:
        summary = {"runs": summaries, "comparison": compare(summaries["stabledreamer"], summaries["threestudio"])}
        print(comparison_table(summary["comparison"]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    return 0


# threestudio's prompt processors encode in a ``spawn`` child, which re-imports this script
# as ``__mp_main__`` before it unpickles its target: the CPU shims must be in force there too.
if __name__ == "__mp_main__" and os.environ.get("THREESTUDIO_ROOT"):
    _threestudio_on_path()

if __name__ == "__main__":
    sys.exit(main())
