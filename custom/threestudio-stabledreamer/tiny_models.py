"""Tiny, randomly initialised stand-ins for DeepFloyd IF stage I, Stable Diffusion and CLIP.

They use the real classes and the real on-disk layout (``save_pretrained``), so the calls
that load ``DeepFloyd/IF-I-XL-v1.0`` and ``stabilityai/stable-diffusion-2-1-base`` load them
by path instead, on CPU, in well under a second and without any network access. They
produce noise, not images: they exist to exercise shapes, dtypes, configs and plumbing.

Directories written under ``root``:

* ``deepfloyd-if``: ``IFPipeline`` layout. ``unet/`` pixel-space ``UNet2DConditionModel``
  (3 -> 6 channels: epsilon and the learned-range variance interpolation, 64x64,
  text-conditioned), ``scheduler/`` IF's ``DDPMScheduler`` settings, ``text_encoder/``
  ``T5EncoderModel``, ``tokenizer/`` ``T5Tokenizer`` on a locally trained sentencepiece
  model. Weights are also stored as the ``fp16`` variant (IF is loaded with
  ``variant="fp16"``) and the text encoder also as the ``8bit`` variant file name that
  threestudio's DeepFloyd prompt processor requests.
* ``stable-diffusion``: ``StableDiffusionPipeline`` layout with an epsilon-predicting
  ``DDIMScheduler`` (SD 2.1-base settings), ``vae/`` ``AutoencoderKL`` with downsampling
  factor 8 and ``scaling_factor`` 0.18215, ``text_encoder/`` ``CLIPTextModel``,
  ``tokenizer/`` ``CLIPTokenizer`` on a locally learned byte-level BPE vocabulary.
* ``stable-diffusion-v``: the same weights with a ``v_prediction`` scheduler.
* ``clip``: ``CLIPModel`` with ``CLIPProcessor`` files (image processor and tokenizer).

Every weight is rounded to float16 precision before saving, so the ``fp16`` and full
precision files hold identical values. The tokenizer files are written by hand
(``spiece.model``; ``vocab.json`` + ``merges.txt``) so that both current transformers and
transformers 4.28 (threestudio's pin) read them.
"""
import argparse
import io
import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

FORMAT_VERSION = 3
SEED = 0
MARKER_NAME = "tiny-models.json"
MODEL_NAMES = ("deepfloyd-if", "stable-diffusion", "stable-diffusion-v", "clip")

TEXT_MAX_LENGTH = 77
T5_WIDTH = 32
CLIP_TEXT_WIDTH = 32
CLIP_IMAGE_SIZE = 32
SD_VAE_SCALING_FACTOR = 0.18215
IF_SAMPLE_SIZE = 64
SD_LATENT_SAMPLE_SIZE = 64
# Stable Diffusion's time-embedding width (4 x 320). threestudio's
# stable-diffusion-vsd-guidance adds a camera embedding of this fixed width to it.
SD_TIME_EMBEDDING_WIDTH = 1280

CORPUS = (
    "a hamburger",
    "a delicious hamburger",
    "a DSLR photo of a corgi wearing a party hat",
    "a zoomed out DSLR photo of a squirrel playing the guitar",
    "a plate piled high with chocolate chip cookies",
    "a bald eagle carved out of wood",
    "a beautiful rainbow fish swimming in the ocean",
    "an astronaut riding a horse on the moon, 3d render",
    "a highly detailed sand castle next to the waves",
    "a ripe strawberry, a blue vase and a yellow cup on a table",
    "a small kitten, front view",
    "a small kitten, side view",
    "a small kitten, back view",
    "a small kitten, overhead view",
    "front view of a cute robot",
    "side view of a cute robot",
    "backside view of a cute robot",
    "overhead view of a cute robot",
    "ugly, blurry, low quality, oversaturated, deformed",
    "the quick brown fox jumps over the lazy dog",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789",
    ". , ; : ! ? ' \" ( ) [ ] - _ / & + = * # @ % $",
)


def build_tiny_models(root: Path) -> Dict[str, Path]:
    """Build the tiny models under ``root`` once; return ``{name: directory}``.

    A marker file with the format version marks a complete build; when it matches, nothing
    is rebuilt. Otherwise everything is built in a temporary sibling directory that then
    replaces ``root`` by a rename, so an interrupted build never looks complete.
    """
    root = Path(root).resolve()
    paths = {name: root / name for name in MODEL_NAMES}
    if _is_complete(root):
        return paths
    build_then_rename(root, _build_all, _is_complete)
    return paths


def build_then_rename(root: Path, build: Callable[[Path], None], is_complete: Callable[[Path], bool]) -> None:
    """``build(staging)`` in a temporary sibling of ``root``, then rename it to ``root``
    (replacing an older one) unless ``is_complete(root)`` by then, i.e. another process
    finished first. An interrupted build is removed and never looks complete."""
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-building-", dir=root.parent))
    try:
        build(staging)
        if not is_complete(root):
            if root.exists():
                shutil.rmtree(root)
            os.replace(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _is_complete(root: Path) -> bool:
    marker = root / MARKER_NAME
    if not marker.is_file():
        return False
    try:
        content = json.loads(marker.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    return content.get("format_version") == FORMAT_VERSION


def _build_all(out: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        _build_deepfloyd_if(out / "deepfloyd-if")
        _build_stable_diffusion(out / "stable-diffusion", out / "stable-diffusion-v")
        _build_clip(out / "clip")
    marker = {"format_version": FORMAT_VERSION, "seed": SEED, "models": list(MODEL_NAMES)}
    (out / MARKER_NAME).write_text(json.dumps(marker, indent=2), encoding="utf-8")


def _round_to_half_precision(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    return module.eval()


# ----------------------------------------------------------------------------- tokenizers


def _train_sentencepiece_model() -> bytes:
    """Unigram sentencepiece model with T5's special ids (pad 0, eos 1, unk 2, no bos)."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=model,
        model_type="unigram",
        vocab_size=128,
        hard_vocab_limit=False,
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def _write_t5_tokenizer(directory: Path) -> int:
    """Write ``spiece.model`` and configs as in IF's ``tokenizer/``; return the vocab size."""
    import sentencepiece

    directory.mkdir(parents=True, exist_ok=True)
    model = _train_sentencepiece_model()
    (directory / "spiece.model").write_bytes(model)
    special = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    config = {
        "tokenizer_class": "T5Tokenizer",
        "model_max_length": TEXT_MAX_LENGTH,
        "extra_ids": 0,
        "additional_special_tokens": [],
        **special,
    }
    _write_json(directory / "tokenizer_config.json", config)
    _write_json(directory / "special_tokens_map.json", special)
    return sentencepiece.SentencePieceProcessor(model_proto=model).get_piece_size()


def _byte_to_unicode() -> Dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _learn_bpe_merges(words: List[str], num_merges: int) -> List[Tuple[str, str]]:
    """Greedy byte-pair merges over CLIP-style symbols (last symbol of a word ends in ``</w>``)."""
    word_counts = Counter(words)
    segmentations = {w: [*w[:-1], w[-1] + "</w>"] for w in word_counts}
    merges: List[Tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for word, symbols in segmentations.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += word_counts[word]
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for word, symbols in segmentations.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            segmentations[word] = merged
    return merges


def _write_clip_tokenizer(directory: Path) -> Dict[str, int]:
    """Write ``vocab.json``/``merges.txt`` in CLIP's layout; return the vocab and special ids.

    Ids: the 256 byte symbols, the same with ``</w>``, one id per merge, then
    ``<|startoftext|>`` and ``<|endoftext|>`` last (CLIP's order, which transformers 4.28
    relies on when it pools at the highest token id). Padding uses ``!`` as in SD 2.x.
    """
    import re

    byte_symbols = list(_byte_to_unicode().values())
    words = []
    for line in CORPUS:
        for word in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", line.lower()):
            words.append("".join(_byte_to_unicode()[b] for b in word.encode("utf-8")))
    merges = _learn_bpe_merges(words, num_merges=160)
    tokens = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}

    directory.mkdir(parents=True, exist_ok=True)
    _write_json(directory / "vocab.json", vocab)
    merge_lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (directory / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "!",
    }
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": TEXT_MAX_LENGTH,
        "do_lower_case": True,
        **special,
    }
    _write_json(directory / "tokenizer_config.json", config)
    _write_json(directory / "special_tokens_map.json", special)
    return {
        "vocab_size": len(vocab),
        "bos_token_id": vocab["<|startoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"],
        "pad_token_id": vocab["!"],
    }


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- DeepFloyd IF


def _tiny_t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=T5_WIDTH,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(SEED)
    return _round_to_half_precision(T5EncoderModel(config))


def _tiny_if_unet():
    """IF stage I's UNet structure (simple cross-attention blocks with added K/V from the
    projected T5 states, attention-pooled text added to the time embedding, scale-shift
    ResNets), at toy width, attending at the coarsest level only (16x16 for 64x64 input).
    ``encoder_hid_dim`` is the T5 width; the projection maps it to ``cross_attention_dim``,
    which differs from it as in IF."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=IF_SAMPLE_SIZE,
        in_channels=3,
        out_channels=6,
        layers_per_block=1,
        block_out_channels=(16, 32, 32),
        down_block_types=(
            "ResnetDownsampleBlock2D",
            "ResnetDownsampleBlock2D",
            "SimpleCrossAttnDownBlock2D",
        ),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=(
            "SimpleCrossAttnUpBlock2D",
            "ResnetUpsampleBlock2D",
            "ResnetUpsampleBlock2D",
        ),
        cross_attention_dim=64,
        encoder_hid_dim=T5_WIDTH,
        attention_head_dim=8,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
        norm_num_groups=8,
    )
    return _round_to_half_precision(unet)


def if_stage1_scheduler():
    """DDPM with IF stage I's settings (as in diffusers' IF conversion script)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        variance_type="learned_range",
        prediction_type="epsilon",
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=1.5,
    )


def _build_deepfloyd_if(out: Path) -> None:
    from diffusers import IFPipeline
    from transformers import T5Tokenizer

    with tempfile.TemporaryDirectory() as tokenizer_dir:
        vocab_size = _write_t5_tokenizer(Path(tokenizer_dir))
        tokenizer = T5Tokenizer.from_pretrained(tokenizer_dir)
    text_encoder = _tiny_t5_encoder(vocab_size)
    pipe = IFPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=_tiny_if_unet(),
        scheduler=if_stage1_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )
    # Half-precision variant first: transformers records the dtype in the shared
    # config.json, which must end up saying float32. ``to(None, dtype)`` is the form
    # that diffusers 0.19.3 (device first) and current releases both accept.
    pipe.to(None, torch.float16)
    pipe.save_pretrained(out, variant="fp16", safe_serialization=True)
    text_encoder.save_pretrained(out / "text_encoder", variant="8bit", safe_serialization=True)
    pipe.to(None, torch.float32)
    pipe.save_pretrained(out, safe_serialization=True)
    _replace_tokenizer_files(out / "tokenizer", _write_t5_tokenizer)


def _replace_tokenizer_files(directory: Path, write) -> None:
    """Swap what ``save_pretrained`` wrote for the hand-written, version-independent files."""
    shutil.rmtree(directory)
    write(directory)


# ----------------------------------------------------------------------------- Stable Diffusion


def _tiny_clip_text_config(ids: Dict[str, int]) -> dict:
    return dict(
        vocab_size=ids["vocab_size"],
        hidden_size=CLIP_TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TEXT_MAX_LENGTH,
        hidden_act="gelu",
        projection_dim=CLIP_TEXT_WIDTH,
        bos_token_id=ids["bos_token_id"],
        eos_token_id=ids["eos_token_id"],
        pad_token_id=ids["pad_token_id"],
    )


def _prefix_clip_text_weights(weights_file: Path) -> None:
    """Store ``CLIPTextModel`` weights under ``text_model.*``, the key layout of the released
    SD checkpoints. transformers 5 writes them without the prefix, which transformers 4.28
    would skip (leaving the encoder randomly initialised); both versions read the prefixed
    layout."""
    from safetensors.torch import load_file, save_file

    prefix = "text_model."
    state = load_file(weights_file)
    if all(key.startswith(prefix) for key in state):
        return
    prefixed = {k if k.startswith(prefix) else prefix + k: v for k, v in state.items()}
    save_file(prefixed, weights_file, metadata={"format": "pt"})


def _tiny_sd_unet():
    """SD 2.x UNet structure (linear-projection transformers, cross-attention on the CLIP
    hidden states) at toy width: latent 4 -> 4 channels, 64x64 latents for 512x512 images.
    Attention only at the coarsest level (16x16 for 64x64 latents) keeps it cheap on CPU.
    The time embedding keeps the real model's width (``SD_TIME_EMBEDDING_WIDTH``), so that
    guidances which add an embedding of that width to it (ProlificDreamer's camera
    embedding) run on it; only the per-ResNet projections from it grow."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=SD_LATENT_SAMPLE_SIZE,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=CLIP_TEXT_WIDTH,
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        norm_num_groups=8,
        time_embedding_dim=SD_TIME_EMBEDDING_WIDTH,
    )
    return _round_to_half_precision(unet)


def _tiny_vae():
    """AutoencoderKL with four resolution levels, i.e. SD's downsampling factor 8."""
    from diffusers import AutoencoderKL

    torch.manual_seed(SEED)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=SD_LATENT_SAMPLE_SIZE * 8,
        scaling_factor=SD_VAE_SCALING_FACTOR,
    )
    return _round_to_half_precision(vae)


def sd_scheduler(prediction_type: str):
    """DDIM with Stable Diffusion 2.1's training schedule."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def _build_stable_diffusion(out: Path, out_v_prediction: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tokenizer_dir:
        ids = _write_clip_tokenizer(Path(tokenizer_dir))
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(SEED)
    text_encoder = _round_to_half_precision(
        CLIPTextModel(CLIPTextConfig(**_tiny_clip_text_config(ids)))
    )
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=_tiny_sd_unet(),
        scheduler=sd_scheduler("epsilon"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    _replace_tokenizer_files(out / "tokenizer", _write_clip_tokenizer)
    _prefix_clip_text_weights(out / "text_encoder" / "model.safetensors")

    shutil.copytree(out, out_v_prediction)
    sd_scheduler("v_prediction").save_pretrained(out_v_prediction / "scheduler")


# ----------------------------------------------------------------------------- CLIP


def _write_clip_image_processor_config(directory: Path) -> None:
    """CLIP's preprocessing (resize shortest edge, centre crop, normalise) at the toy size."""
    config = {
        "image_processor_type": "CLIPImageProcessor",
        "feature_extractor_type": "CLIPFeatureExtractor",
        "processor_class": "CLIPProcessor",
        "do_resize": True,
        "size": {"shortest_edge": CLIP_IMAGE_SIZE},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True,
    }
    _write_json(directory / "preprocessor_config.json", config)


def _build_clip(out: Path) -> None:
    from transformers import CLIPConfig, CLIPModel

    ids = _write_clip_tokenizer(out)
    _write_clip_image_processor_config(out)
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=CLIP_IMAGE_SIZE,
        patch_size=8,
        projection_dim=16,
    )
    text = {**_tiny_clip_text_config(ids), "projection_dim": 16}
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    torch.manual_seed(SEED)
    _round_to_half_precision(CLIPModel(config)).save_pretrained(out, safe_serialization=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Build tiny offline DeepFloyd IF, Stable Diffusion and CLIP models."
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to build into")
    args = parser.parse_args(argv)
    paths = build_tiny_models(args.out)
    print(json.dumps({name: str(path) for name, path in paths.items()}, indent=2))


if __name__ == "__main__":
    main()
