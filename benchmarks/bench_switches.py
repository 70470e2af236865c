"""The guidances' speed switches on and off: the guidance network's forward at a training step's batch.

Usage:
  python benchmarks/bench_switches.py [--device cpu|cuda] [--stages 1 2]
                                      [--switches compile_unet enable_channels_last_format]
                                      [--repeats N] [--models DIR] [--weights-dtype bfloat16]
                                      [--json PATH]

For each stage and switch, the guidance of ``configs/stabledreamer.yaml`` (stage 1:
IF-I-XL, stage 2: SD 2.1-base) is built from the full-size random models of
``full_size_models`` (built once under ``--models``) twice, with the switch off and on
(every other setting as the config has it), and its classifier-free ``guided_noise`` is
timed at the stage's training batch (the config's views, the model's input size; random
x_t, timesteps and text embeddings: the cost does not depend on them). The first call is
timed apart (with ``compile_unet`` on it compiles); then one more warm-up call and the
median of ``--repeats`` calls. On CUDA the device is synchronised around each call.

Prints one table and writes the figures as JSON (``--json``).
"""
import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = REPO / ".cache" / "full-size-models"
CONFIG = REPO / "configs" / "stabledreamer.yaml"
STAGES = {1: ("guidance_type", "guidance", "deepfloyd-if"),
          2: ("guidance_stage2_type", "guidance_stage2", "stable-diffusion")}
SWITCHES = ("compile_unet", "enable_channels_last_format")


def stage_guidance(stage: int, models: Dict[str, Path], weights_dtype: str, **settings):
    """(the config's stage-``stage`` guidance on ``models`` with ``settings`` on top, on
    threestudio's device, and the stage's batch size)."""
    from omegaconf import OmegaConf

    import threestudio
    from threestudio.utils.config import load_config

    cfg = load_config(str(CONFIG), cli_args=["system.prompt_processor.prompt=a corgi"])  # the config requires one
    type_key, block, model = STAGES[stage]
    guidance_cfg = OmegaConf.to_container(cfg.system[block], resolve=True)
    guidance_cfg.update(pretrained_model_name_or_path=str(models[model]), weights_dtype=weights_dtype, **settings)
    guidance = threestudio.find(cfg.system[type_key])(guidance_cfg)
    batch_size = cfg.data.batch_size
    return guidance, batch_size if isinstance(batch_size, int) else batch_size[stage - 1]


def time_guided_noise(guidance, batch_size: int, device: torch.device, repeats: int) -> Dict[str, float]:
    """Seconds of ``guided_noise`` at ``batch_size``: the first call, then the median of
    ``repeats`` calls after one more warm-up call."""
    config = guidance.unet.config
    size = config.sample_size
    width = config.encoder_hid_dim or config.cross_attention_dim
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(batch_size, config.in_channels, size, size, generator=generator).to(device)
    t = torch.randint(20, 980, (batch_size,), generator=generator).to(device)
    embeddings = torch.randn(2 * batch_size, 77, width, generator=generator).to(device)

    def call() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        guidance.guided_noise(x_t, t, embeddings)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    first = call()
    call()
    return {"first_call_s": first, "median_s": statistics.median(call() for _ in range(repeats))}


def measure(stages: Sequence[int], switches: Sequence[str], models: Dict[str, Path], weights_dtype: str,
            device: torch.device, repeats: int) -> Dict[str, Any]:
    """{``stage<n>/<switch>``: {"off": timings, "on": timings, "speedup", "guidance", "batch_size"}}."""
    results = {}
    for stage in stages:
        for switch in switches:
            row = {}
            for value in (False, True):
                guidance, batch_size = stage_guidance(stage, models, weights_dtype, **{switch: value})
                row["on" if value else "off"] = time_guided_noise(guidance, batch_size, device, repeats)
                row.update(guidance=type(guidance).__name__, batch_size=batch_size)
                del guidance
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                torch._dynamo.reset()
            row["speedup"] = row["off"]["median_s"] / row["on"]["median_s"]
            results[f"stage{stage}/{switch}"] = row
    return results


def table(results: Dict[str, Any], device_name: str, repeats: int) -> str:
    lines = [f"guidance switches on {device_name} (torch {torch.__version__}, {torch.get_num_threads()} threads): "
             f"guided_noise ([cond; uncond]) at the config's batch, median of {repeats} (first call apart)",
             f"{'stage/switch':<36} {'guidance':<24} {'views':>5} {'off s':>8} {'on s':>8} {'speed-up':>9} "
             f"{'1st off s':>10} {'1st on s':>9}"]
    for name, row in results.items():
        lines.append(f"{name:<36} {row['guidance']:<24} {row['batch_size']:>5} {row['off']['median_s']:>8.3f} "
                     f"{row['on']['median_s']:>8.3f} {row['speedup']:>8.2f}x {row['off']['first_call_s']:>10.1f} "
                     f"{row['on']['first_call_s']:>9.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:index]")
    parser.add_argument("--stages", nargs="+", type=int, default=[1, 2], choices=sorted(STAGES))
    parser.add_argument("--switches", nargs="+", default=list(SWITCHES), choices=SWITCHES)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per setting")
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="full-size models (built if missing)")
    parser.add_argument("--weights-dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_switches: --device cuda but CUDA is not available here", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print(f"bench_switches: --repeats must be >= 1, got {args.repeats}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO / "benchmarks"))
    from full_scale import _threestudio_on_path

    _threestudio_on_path()
    import threestudio_stabledreamer  # noqa: F401  (registers the extension)
    from threestudio_stabledreamer.full_size_models import build_full_size_models

    models = build_full_size_models(args.models, torch.float16)
    results = measure(args.stages, args.switches, models, args.weights_dtype, device, args.repeats)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(table(results, device_name, args.repeats), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": device_name, "torch": torch.__version__,
                                         "threads": torch.get_num_threads(), "repeats": args.repeats,
                                         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
