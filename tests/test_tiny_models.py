"""Tiny offline models: they load through the calls used for the real checkpoints and run
with embeddings from the matching prompt processor, whose view-dependent prompts, output
order and cache are checked against direct tokenizer/encoder computations."""
import dataclasses
import functools
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, IFPipeline, StableDiffusionPipeline
from safetensors.torch import load_file
from transformers import (
    AutoTokenizer,
    CLIPModel,
    CLIPProcessor,
    CLIPTextModel,
    T5EncoderModel,
    T5Tokenizer,
)

import threestudio
from threestudio_stabledreamer.tiny_models import FORMAT_VERSION, MARKER_NAME, build_tiny_models

PROMPT = "a hamburger"
NEGATIVE = "ugly, blurry"


def load_if(path, variant="fp16"):
    return IFPipeline.from_pretrained(
        path,
        text_encoder=None,
        safety_checker=None,
        watermarker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        variant=variant,
        torch_dtype=torch.float32,
    )


def load_sd(path):
    return StableDiffusionPipeline.from_pretrained(
        path,
        tokenizer=None,
        text_encoder=None,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        torch_dtype=torch.float32,
    )


@functools.lru_cache(maxsize=None)
def clip_text_encoder(path):
    return (
        AutoTokenizer.from_pretrained(path, subfolder="tokenizer"),
        CLIPTextModel.from_pretrained(path, subfolder="text_encoder"),
    )


@functools.lru_cache(maxsize=None)
def t5_text_encoder(path, dtype=torch.float32):
    return (
        T5Tokenizer.from_pretrained(path, subfolder="tokenizer"),
        T5EncoderModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype),
    )


def encode_clip(path, prompts):
    """Direct CLIP encoding as Stable Diffusion conditions on it (last hidden states)."""
    tokenizer, encoder = clip_text_encoder(path)
    ids = tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids).last_hidden_state


def encode_t5(path, prompts, dtype=torch.float32):
    """Direct T5 encoding as DeepFloyd IF conditions on it (77 tokens, masked padding)."""
    tokenizer, encoder = t5_text_encoder(path, dtype)
    tokens = tokenizer(
        prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        return encoder(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state


def make_processor(name, model_path, **overrides):
    cfg = {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "pretrained_model_name_or_path": str(model_path),
        "spawn": False,
        **overrides,
    }
    return threestudio.find(name)(cfg)


def file_states(root: Path):
    return {
        p.relative_to(root): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def if_pipe(tiny_models):
    return load_if(tiny_models["deepfloyd-if"])


@pytest.fixture(scope="module")
def sd_pipe(tiny_models):
    return load_sd(tiny_models["stable-diffusion"])


@pytest.fixture(scope="module")
def sd_output(tiny_models, tmp_path_factory):
    """Output of a default-threshold SD prompt processor (front/back within 45 degrees of
    azimuth 0/180, overhead above 60 degrees of elevation)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("sd_prompt"))
        processor = make_processor(
            "stable-diffusion-prompt-processor", tiny_models["stable-diffusion"]
        )
    return processor()


@pytest.fixture
def in_tmp_dir(tmp_path, monkeypatch):
    """Prompt processors cache relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ----------------------------------------------------------------------------- building


def test_building_again_is_a_no_op(tiny_models):
    root = tiny_models["stable-diffusion"].parent
    before = file_states(root)
    assert build_tiny_models(root) == tiny_models
    assert file_states(root) == before
    assert json.loads((root / MARKER_NAME).read_text())["format_version"] == FORMAT_VERSION


def test_incomplete_or_outdated_build_is_replaced_by_identical_weights(tiny_models, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(tiny_models["clip"].parent, root)
    (root / MARKER_NAME).write_text(json.dumps({"format_version": -1}))
    stray = root / "deepfloyd-if" / "left-over.tmp"
    stray.write_text("partial")

    paths = build_tiny_models(root)

    assert not stray.exists()
    assert (root / MARKER_NAME).is_file()
    assert not list(tmp_path.glob(".models-building-*"))
    unet_file = Path("unet") / "diffusion_pytorch_model.safetensors"
    rebuilt = load_file(paths["deepfloyd-if"] / unet_file)
    original = load_file(tiny_models["deepfloyd-if"] / unet_file)
    assert rebuilt.keys() == original.keys()
    assert all(torch.equal(rebuilt[k], original[k]) for k in original)
    tokenizer_files = ["deepfloyd-if/tokenizer/spiece.model", "clip/vocab.json", "clip/merges.txt"]
    for name in tokenizer_files:
        assert (root / name).read_bytes() == (tiny_models["clip"].parent / name).read_bytes()


# ----------------------------------------------------------------------------- DeepFloyd IF


def test_if_pipeline_loads_with_the_deepfloyd_call(if_pipe):
    pipe = if_pipe
    unet, scheduler = pipe.unet, pipe.scheduler
    assert (unet.config.in_channels, unet.config.out_channels) == (3, 6)
    assert unet.config.sample_size == 64
    assert unet.config.addition_embed_type == "text"
    assert unet.dtype == torch.float32
    assert isinstance(scheduler, DDPMScheduler)
    assert scheduler.config.variance_type == "learned_range"
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert scheduler.config.num_train_timesteps == 1000
    assert scheduler.config.thresholding and scheduler.config.sample_max_value == 1.5
    assert pipe.text_encoder is None


def test_if_fp16_variant_holds_the_same_weights(tiny_models, if_pipe):
    half = if_pipe.unet.state_dict()
    full = load_if(tiny_models["deepfloyd-if"], variant=None).unet.state_dict()
    assert half.keys() == full.keys()
    assert all(torch.equal(half[k], full[k]) for k in full)


def test_if_unet_runs_on_deepfloyd_prompt_processor_embeddings(tiny_models, if_pipe, in_tmp_dir):
    path = tiny_models["deepfloyd-if"]
    processor = make_processor("deep-floyd-prompt-processor", path)
    elevation = torch.tensor([10.0, 70.0])
    azimuth = torch.tensor([0.0, 180.0])
    embeddings = processor().get_text_embeddings(elevation, azimuth, torch.ones(2))

    # threestudio encodes with T5 in float16 (the 8-bit model on CUDA)
    prompts = [f"{PROMPT}, front view", f"{PROMPT}, overhead view", NEGATIVE, NEGATIVE]
    expected = encode_t5(path, prompts, torch.float16)
    assert embeddings.shape == (4, 77, 32)
    assert embeddings.dtype == torch.float16
    torch.testing.assert_close(embeddings, expected)
    torch.testing.assert_close(embeddings.float(), encode_t5(path, prompts), atol=2e-2, rtol=2e-2)

    with torch.no_grad():
        out = if_pipe.unet(
            torch.randn(4, 3, 64, 64), torch.tensor([999, 500, 999, 500]), embeddings.float()
        )
    assert out.sample.shape == (4, 6, 64, 64)
    assert torch.isfinite(out.sample).all()


# ----------------------------------------------------------------------------- Stable Diffusion


def test_sd_pipeline_loads_with_the_stable_diffusion_call(tiny_models, sd_pipe):
    path = tiny_models["stable-diffusion"]
    pipe = sd_pipe
    assert (pipe.unet.config.in_channels, pipe.unet.config.out_channels) == (4, 4)
    assert pipe.vae.config.scaling_factor == pytest.approx(0.18215)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.prediction_type == "epsilon"
    ddpm = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    assert ddpm.config.prediction_type == "epsilon"
    assert ddpm.config.beta_schedule == "scaled_linear"
    v_pred = DDPMScheduler.from_pretrained(
        tiny_models["stable-diffusion-v"], subfolder="scheduler"
    )
    assert v_pred.config.prediction_type == "v_prediction"


def test_sd_vae_downsamples_by_eight(sd_pipe):
    vae = sd_pipe.vae
    with torch.no_grad():
        latents = vae.encode(torch.rand(1, 3, 64, 48) * 2 - 1).latent_dist.mean
        decoded = vae.decode(latents).sample
    assert latents.shape == (1, 4, 8, 6)
    assert decoded.shape == (1, 3, 64, 48)


def test_sd_unet_runs_on_stable_diffusion_prompt_processor_embeddings(sd_pipe, sd_output):
    embeddings = sd_output.get_text_embeddings(
        torch.zeros(1), torch.tensor([90.0]), torch.ones(1)
    )
    assert embeddings.shape == (2, 77, 32)
    with torch.no_grad():
        out = sd_pipe.unet(torch.randn(2, 4, 64, 64), torch.full((2,), 500), embeddings)
    assert out.sample.shape == (2, 4, 64, 64)
    assert torch.isfinite(out.sample).all()


def test_sd_unet_takes_prolificdreamers_1280_wide_camera_embedding(sd_pipe, sd_output):
    """threestudio's stable-diffusion-vsd-guidance sets ``class_embedding`` to a
    ``TimestepEmbedding(16, 1280)`` of the flattened camera matrix, added to the UNet's time
    embedding: the tiny UNet has the real width there and stays tiny elsewhere."""
    from diffusers.models.embeddings import TimestepEmbedding

    unet = sd_pipe.unet
    assert unet.time_embedding.linear_2.out_features == 1280
    assert sum(p.numel() for p in unet.parameters()) < 4_000_000
    embeddings = sd_output.get_text_embeddings(torch.zeros(1), torch.tensor([90.0]), torch.ones(1))
    torch.manual_seed(0)
    noisy = torch.randn(2, 4, 32, 32)
    try:
        unet.class_embedding = TimestepEmbedding(16, 1280)
        with torch.no_grad():
            cameras = [torch.randn(2, 16) for _ in range(2)]
            outs = [unet(noisy, torch.full((2,), 500), embeddings, class_labels=c).sample for c in cameras]
    finally:
        unet.class_embedding = None
    assert outs[0].shape == (2, 4, 32, 32)
    assert not torch.allclose(outs[0], outs[1])  # the camera reaches the prediction


# ----------------------------------------------------------------------------- prompt processors


@pytest.mark.parametrize(
    "elevation, azimuth, direction",
    [
        (0.0, 0.0, "front"),
        (0.0, 44.0, "front"),
        (0.0, -44.0, "front"),
        (0.0, 360.0, "front"),
        (0.0, 46.0, "side"),
        (0.0, 90.0, "side"),
        (0.0, -100.0, "side"),
        (0.0, 180.0, "back"),
        (0.0, 200.0, "back"),
        (0.0, -170.0, "back"),
        (59.0, 90.0, "side"),
        (61.0, 90.0, "overhead"),
        (61.0, 0.0, "overhead"),
        (80.0, 180.0, "overhead"),
    ],
)
def test_view_dependent_prompt_follows_the_thresholds(sd_output, elevation, azimuth, direction):
    names = [d.name for d in sd_output.directions]
    assert names == ["side", "front", "back", "overhead"]
    markers = torch.arange(4, dtype=torch.float32)[:, None, None]
    output = dataclasses.replace(
        sd_output, text_embeddings_vd=markers, uncond_text_embeddings_vd=-markers - 1
    )
    picked = output.get_text_embeddings(
        torch.tensor([elevation]), torch.tensor([azimuth]), torch.ones(1)
    )
    assert picked.flatten().tolist() == [names.index(direction), -names.index(direction) - 1]


def test_embeddings_are_cond_then_uncond_of_the_view_prompts(tiny_models, in_tmp_dir):
    path = tiny_models["stable-diffusion"]
    processor = make_processor("stable-diffusion-prompt-processor", path)
    assert processor.prompts_vd == [
        f"{PROMPT}, side view",
        f"{PROMPT}, front view",
        f"{PROMPT}, back view",
        f"{PROMPT}, overhead view",
    ]
    output = processor()
    elevation = torch.tensor([0.0, 0.0, 75.0])
    azimuth = torch.tensor([180.0, 90.0, 30.0])
    expected = encode_clip(
        path,
        [f"{PROMPT}, back view", f"{PROMPT}, side view", f"{PROMPT}, overhead view"]
        + [NEGATIVE] * 3,
    )
    got = output.get_text_embeddings(elevation, azimuth, torch.ones(3))
    torch.testing.assert_close(got, expected)

    plain = output.get_text_embeddings(
        elevation, azimuth, torch.ones(3), view_dependent_prompting=False
    )
    torch.testing.assert_close(plain, encode_clip(path, [PROMPT] * 3 + [NEGATIVE] * 3))


def test_prompt_front_style_and_explicit_view_prompts(tiny_models, in_tmp_dir):
    processor = make_processor(
        "stable-diffusion-prompt-processor",
        tiny_models["stable-diffusion"],
        view_dependent_prompt_front=True,
        prompt_side="a hamburger seen from its side",
    )
    assert processor.prompts_vd == [
        "a hamburger seen from its side",
        f"front view of {PROMPT}",
        f"backside view of {PROMPT}",
        f"overhead view of {PROMPT}",
    ]
    assert processor.negative_prompts_vd == [NEGATIVE] * 4


def test_embeddings_are_cached_by_model_and_prompt_hash_and_reused(tiny_models, in_tmp_dir):
    path = tiny_models["stable-diffusion"]
    make_processor("stable-diffusion-prompt-processor", path)
    cache = in_tmp_dir / ".threestudio_cache" / "text_embeddings"
    views = ("side", "front", "back", "overhead")
    prompts = [PROMPT, NEGATIVE] + [f"{PROMPT}, {view} view" for view in views]
    expected_files = {hashlib.md5(f"{path}-{p}".encode()).hexdigest() + ".pt" for p in prompts}
    assert {f.name for f in cache.iterdir()} == expected_files

    main_file = cache / (hashlib.md5(f"{path}-{PROMPT}".encode()).hexdigest() + ".pt")
    torch.testing.assert_close(torch.load(main_file), encode_clip(path, [PROMPT])[0])
    torch.save(torch.zeros(77, 32), main_file)
    reused = make_processor("stable-diffusion-prompt-processor", path)
    assert torch.count_nonzero(reused.text_embeddings) == 0

    recomputed = make_processor("stable-diffusion-prompt-processor", path, use_cache=False)
    torch.testing.assert_close(recomputed.text_embeddings[0], encode_clip(path, [PROMPT])[0])


# ----------------------------------------------------------------------------- CLIP


def test_clip_model_and_processor_score_images_against_text(tiny_models):
    model = CLIPModel.from_pretrained(tiny_models["clip"])
    processor = CLIPProcessor.from_pretrained(tiny_models["clip"])
    images = [torch.rand(40, 50, 3).mul(255).to(torch.uint8).numpy() for _ in range(2)]
    inputs = processor(
        text=[PROMPT, "a corgi", "a squirrel"], images=images, return_tensors="pt", padding=True
    )
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()
