"""Command-line overrides that turn any config in ``configs/`` into a CPU run of a few steps
on the tiny models, at the sizes of ``configs/stabledreamer-cpu.yaml``.

- every value that the CPU config changes relative to ``configs/stabledreamer.yaml``,
  except the guidance sections (``guidance_keys``) and keys the caller sets itself;
- each stage's prompt processor and guidance load the tiny model of their kind (DeepFloyd
  IF or Stable Diffusion), guidances at the CPU config's render resolution for that kind;
- VSD guidances with the tiny Stable Diffusion as their LoRA model as well, threestudio's
  ``stable-diffusion-vsd-guidance`` in float32 (its default is float16 weights, for a GPU).
"""
import json
from pathlib import Path
from typing import Dict, Iterable, List

from omegaconf import OmegaConf

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STAGE_SLOTS = (("prompt_processor", "guidance"), ("prompt_processor_stage2", "guidance_stage2"))
TINY_MODEL_OF_PROCESSOR = {
    "deep-floyd-prompt-processor": "deepfloyd-if",
    "stable-diffusion-prompt-processor": "stable-diffusion",
}
# The CPU config's guidance section for each tiny model (its render resolution).
CPU_GUIDANCE_OF_MODEL = {"deepfloyd-if": "guidance", "stable-diffusion": "guidance_stage2"}
# System keys that choose and configure a stage's guidance (a comparison config may change
# only these, besides loss weights and the guidance's parameter groups).
GUIDANCE_SYSTEM_KEYS = (
    "stage2_start_step",
    *(f"{name}{suffix}" for slot in STAGE_SLOTS for name in slot for suffix in ("_type", "")),
)


def flat_leaves(node, prefix: str = "") -> Dict[str, object]:
    """{dotted.key: value} of a YAML config's leaves (lists are leaves), interpolations kept."""
    if isinstance(node, dict) and node:
        leaves = {}
        for key, value in node.items():
            leaves.update(flat_leaves(value, f"{prefix}{key}."))
        return leaves
    return {prefix[:-1]: node}


def override(key: str, value) -> str:
    if isinstance(value, str):
        return f'{key}="{value}"'
    return f"{key}={json.dumps(value)}"


def load(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml"))


def cpu_size_overrides(given: Iterable[str] = ()) -> List[str]:
    """The CPU config's non-guidance values that differ from the main config's, except the
    keys in ``given``."""
    main, cpu = flat_leaves(load("stabledreamer")), flat_leaves(load("stabledreamer-cpu"))
    given = set(given)
    guidance_prefixes = tuple(f"system.{key}" for key in GUIDANCE_SYSTEM_KEYS)
    return [
        override(key, value)
        for key, value in cpu.items()
        if key != "name" and key not in given and not key.startswith(guidance_prefixes)
        and main.get(key, object()) != value
    ]


def tiny_model_overrides(config, tiny_models: Dict[str, Path]) -> List[str]:
    """Every stage of ``config`` (a config's name, or its loaded dict) on the tiny model its
    prompt processor names."""
    config = OmegaConf.load(CONFIGS / f"{config}.yaml") if isinstance(config, str) else OmegaConf.create(config)
    system = OmegaConf.to_container(config.system)
    cpu_system = load("stabledreamer-cpu")["system"]
    overrides = []
    for processor, guidance in STAGE_SLOTS:
        # resolved: a comparison config's stage 2 may name stage 1's types by interpolation
        processor_type = OmegaConf.select(config, f"system.{processor}_type")
        guidance_type = OmegaConf.select(config, f"system.{guidance}_type")
        if not processor_type or not guidance_type:
            continue
        kind = TINY_MODEL_OF_PROCESSOR[processor_type]
        model = str(tiny_models[kind])
        cpu_guidance = cpu_system[CPU_GUIDANCE_OF_MODEL[kind]]
        overrides += [
            override(f"system.{processor}.pretrained_model_name_or_path", model),
            override(f"system.{processor}.spawn", cpu_system["prompt_processor"]["spawn"]),
            override(f"system.{guidance}.pretrained_model_name_or_path", model),
        ]
        if "render_resolution" in system[guidance]:
            overrides.append(override(f"system.{guidance}.render_resolution", cpu_guidance["render_resolution"]))
        if "pretrained_model_name_or_path_lora" in system[guidance]:
            overrides.append(override(f"system.{guidance}.pretrained_model_name_or_path_lora", model))
        if guidance_type == "stable-diffusion-vsd-guidance":
            overrides.append(override(f"system.{guidance}.half_precision_weights", False))
    return overrides
