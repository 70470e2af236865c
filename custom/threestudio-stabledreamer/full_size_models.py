"""Full-size, randomly initialised DeepFloyd IF-I-XL stage I and Stable Diffusion 2.1-base.

What a network costs in memory and arithmetic does not depend on its weights, so models
built from the published configurations with random weights cost what the real ones cost.
The configurations below are the values of the models' ``config.json`` files on the
Hugging Face Hub (the repository and file are named above each); every value not given
keeps the class default, which is the published value too.

Two uses:

* :func:`build_on_meta` builds a model on PyTorch's ``meta`` device: no memory, no
  arithmetic, only the structure, so its parameter count can be checked against the
  published figure (``PUBLISHED_PARAMETERS``) anywhere.
* :func:`build_full_size_models` builds them for real in half precision and saves them
  with the on-disk layouts of ``DeepFloyd/IF-I-XL-v1.0`` and
  ``stabilityai/stable-diffusion-2-1-base`` (the folders ``tiny_models`` writes), so the
  guidances and prompt processors load them through their usual ``from_pretrained``
  calls. Each model is constructed with half precision as the default dtype, so no
  float32 copy ever exists (the IF UNet and T5 encoder hold about 8.6 and 9.5 GB in half
  precision). The text encoders are saved in 1 GB shards, so saving adds at most one
  shard to the model's own memory; the UNets and the VAE are saved as one file each,
  because threestudio pins diffusers 0.19.3, which reads no sharded diffusers checkpoint
  (diffusers shards from 0.26 on, at 10 GB by default). Only one model is held at a time.

The tokenizers and schedulers are ``tiny_models``' (the tokenizers produce ids within the
full vocabularies; their vocabularies are smaller, which changes no cost).
"""
import argparse
import contextlib
import gc
import inspect
import json
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from . import tiny_models

FORMAT_VERSION = 2
MARKER_NAME = "full-size-models.json"
SHARD_SIZE = "1GB"  # transformers' text encoders
WHOLE_FILE = "64GB"  # diffusers' models: larger than any of them, so one file each

# DeepFloyd/IF-I-XL-v1.0, unet/config.json.
IF_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=3,
    out_channels=6,
    layers_per_block=3,
    block_out_channels=(704, 1408, 2112, 2816),
    down_block_types=(
        "ResnetDownsampleBlock2D",
        "SimpleCrossAttnDownBlock2D",
        "SimpleCrossAttnDownBlock2D",
        "SimpleCrossAttnDownBlock2D",
    ),
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    up_block_types=(
        "SimpleCrossAttnUpBlock2D",
        "SimpleCrossAttnUpBlock2D",
        "SimpleCrossAttnUpBlock2D",
        "ResnetUpsampleBlock2D",
    ),
    attention_head_dim=64,
    cross_attention_dim=2816,
    encoder_hid_dim=4096,
    addition_embed_type="text",
    addition_embed_type_num_heads=64,
    cross_attention_norm="group_norm",
    resnet_time_scale_shift="scale_shift",
    act_fn="gelu",
    norm_num_groups=32,
)

# DeepFloyd/IF-I-XL-v1.0, text_encoder/config.json (google/t5-v1_1-xxl's encoder).
T5_ENCODER_CONFIG = dict(
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    layer_norm_epsilon=1e-6,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)

# stabilityai/stable-diffusion-2-1-base, unet/config.json.
SD_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    act_fn="silu",
    norm_num_groups=32,
)

# stabilityai/stable-diffusion-2-1-base, vae/config.json.
SD_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=768,
    scaling_factor=tiny_models.SD_VAE_SCALING_FACTOR,
)

# stabilityai/stable-diffusion-2-1-base, text_encoder/config.json (OpenCLIP ViT-H/14's
# text tower, 23 of its 24 layers as SD 2.x uses them).
CLIP_TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
)

CONFIGS: Dict[str, dict] = {
    "if_unet": IF_UNET_CONFIG,
    "t5_encoder": T5_ENCODER_CONFIG,
    "sd_unet": SD_UNET_CONFIG,
    "sd_vae": SD_VAE_CONFIG,
    "clip_text_encoder": CLIP_TEXT_CONFIG,
}

# The published sizes, rounded as published: IF-I-XL stage I 4.3B (its model card, "Num
# Parameters"); T5-v1.1-XXL's encoder 4.7B (its encoder-only float16 file, 9.4 GB at 2
# bytes a parameter); SD 2.1-base's UNet 865M, its VAE 83.7M (kept from SD 1.x) and its
# OpenCLIP ViT-H/14 text encoder 340M, as cited for Stable Diffusion 2.x.
PUBLISHED_PARAMETERS: Dict[str, int] = {
    "if_unet": 4_300_000_000,
    "t5_encoder": 4_700_000_000,
    "sd_unet": 865_000_000,
    "sd_vae": 83_700_000,
    "clip_text_encoder": 340_000_000,
}


def _if_unet(config: dict):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**config)


def _t5_encoder(config: dict):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**config))


def _sd_unet(config: dict):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**config)


def _sd_vae(config: dict):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**config)


def _clip_text_encoder(config: dict):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**config))


BUILDERS: Dict[str, Callable[[dict], torch.nn.Module]] = {
    "if_unet": _if_unet,
    "t5_encoder": _t5_encoder,
    "sd_unet": _sd_unet,
    "sd_vae": _sd_vae,
    "clip_text_encoder": _clip_text_encoder,
}


def _check_name(name: str) -> None:
    if name not in BUILDERS:
        raise ValueError(f"model name must be one of {sorted(BUILDERS)}, got {name!r}")


def build_on_meta(name: str, config: Optional[dict] = None) -> torch.nn.Module:
    """Model ``name`` (a key of ``CONFIGS``) on the ``meta`` device: structure only."""
    _check_name(name)
    with torch.device("meta"):
        return BUILDERS[name](CONFIGS[name] if config is None else config)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_in_half_precision(name: str, dtype: torch.dtype, config: Optional[dict] = None, seed: int = 0):
    """Model ``name`` on the CPU with every floating-point tensor created in ``dtype``
    (float16 or bfloat16) and initialised by its class: never a float32 copy."""
    _check_name(name)
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")
    torch.manual_seed(seed)
    with _default_dtype(dtype), torch.no_grad():
        model = BUILDERS[name](CONFIGS[name] if config is None else config)
    return model.eval()


def build_full_size_models(
    root: Path, dtype: torch.dtype = torch.float16, configs: Optional[Dict[str, dict]] = None
) -> Dict[str, Path]:
    """Build and save the models under ``root`` once; return ``{"deepfloyd-if": dir,
    "stable-diffusion": dir}``.

    Layouts as ``tiny_models``: ``deepfloyd-if`` holds ``unet/`` as the ``fp16`` variant
    (the files the IF guidances request) and ``text_encoder/`` as the default files and
    the ``8bit`` variant (the files threestudio's DeepFloyd prompt processor requests), all
    stored in ``dtype``;
    ``stable-diffusion`` holds ``unet/``, ``vae/`` and ``text_encoder/`` as the default
    files in ``dtype``. ``configs`` replaces ``CONFIGS`` entries (scaled-down models for
    tests). A marker file marks a complete build; the build happens in a sibling
    directory renamed into place, so an interrupted build never looks complete.
    """
    root = Path(root).resolve()
    configs = {**CONFIGS, **(configs or {})}
    paths = {"deepfloyd-if": root / "deepfloyd-if", "stable-diffusion": root / "stable-diffusion"}
    marker = {"format_version": FORMAT_VERSION, "dtype": str(dtype), "configs": _jsonable(configs)}
    if _marker(root) == marker:
        return paths

    def build(staging: Path) -> None:
        _save_deepfloyd_if(staging / "deepfloyd-if", dtype, configs)
        _save_stable_diffusion(staging / "stable-diffusion", dtype, configs)
        (staging / MARKER_NAME).write_text(json.dumps(marker, indent=2), encoding="utf-8")

    tiny_models.build_then_rename(root, build, lambda folder: _marker(folder) == marker)
    return paths


def _jsonable(configs: Dict[str, dict]) -> dict:
    return json.loads(json.dumps(configs, default=list))


def _marker(root: Path) -> Optional[dict]:
    try:
        return json.loads((root / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _save_and_free(name: str, dtype: torch.dtype, config: dict, directory: Path, variants=(None,)) -> None:
    """Build ``name``, save it as each of ``variants`` (None: the default files), free it."""
    model = build_in_half_precision(name, dtype, config)
    from diffusers import ModelMixin

    kwargs = {"safe_serialization": True}
    if "max_shard_size" in inspect.signature(model.save_pretrained).parameters:
        # (diffusers before 0.26 has no max_shard_size and writes one file)
        kwargs["max_shard_size"] = WHOLE_FILE if isinstance(model, ModelMixin) else SHARD_SIZE
    for variant in variants:
        model.save_pretrained(directory, variant=variant, **kwargs)
    del model
    gc.collect()


def _save_deepfloyd_if(out: Path, dtype: torch.dtype, configs: Dict[str, dict]) -> None:
    _save_and_free("if_unet", dtype, configs["if_unet"], out / "unet", variants=("fp16",))
    _save_and_free("t5_encoder", dtype, configs["t5_encoder"], out / "text_encoder", variants=(None, "8bit"))
    tiny_models.if_stage1_scheduler().save_pretrained(out / "scheduler")
    tiny_models._write_t5_tokenizer(out / "tokenizer")
    _write_model_index(out, "IFPipeline", {
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "watermarker": [None, None],
        "requires_safety_checker": False,
    })


def _save_stable_diffusion(out: Path, dtype: torch.dtype, configs: Dict[str, dict]) -> None:
    ids = tiny_models._write_clip_tokenizer(out / "tokenizer")
    _save_and_free("sd_unet", dtype, configs["sd_unet"], out / "unet")
    _save_and_free("sd_vae", dtype, configs["sd_vae"], out / "vae")
    clip_config = {
        **configs["clip_text_encoder"],
        "bos_token_id": ids["bos_token_id"],
        "eos_token_id": ids["eos_token_id"],
        "pad_token_id": ids["pad_token_id"],
    }
    _save_and_free("clip_text_encoder", dtype, clip_config, out / "text_encoder")
    tiny_models.sd_scheduler("epsilon").save_pretrained(out / "scheduler")
    _write_model_index(out, "StableDiffusionPipeline", {
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    })


def _write_model_index(out: Path, pipeline_class: str, components: dict) -> None:
    import diffusers

    index = {"_class_name": pipeline_class, "_diffusers_version": diffusers.__version__, **components}
    tiny_models._write_json(out / "model_index.json", index)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Build full-size, randomly initialised DeepFloyd IF-I-XL and Stable Diffusion 2.1-base."
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to build into")
    parser.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16")
    args = parser.parse_args(argv)
    paths = build_full_size_models(args.out, getattr(torch, args.dtype))
    print(json.dumps({name: str(path) for name, path in paths.items()}, indent=2))


if __name__ == "__main__":
    main()
