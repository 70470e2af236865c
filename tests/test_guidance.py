"""The DeepFloyd IF and Stable Diffusion guidances on the tiny models, on ``--device``.

Gradients are checked against the classic SDS gradient w(t)(eps_hat - eps) computed here
from the UNet, the scheduler's alphabar and the prompt processor's embeddings, in float64.
"""

import contextlib
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

import threestudio
from threestudio_stabledreamer.guidance import DiffusionModelUnavailableError

IF_NAME = "stabledreamer-deep-floyd-guidance"
SD_NAME = "stabledreamer-stable-diffusion-guidance"
SD_RESOLUTION = 64  # 8x8 latents: fast on CPU
IF_RESOLUTION = 32  # IF stage I works at 64x64; the tiny UNet is faster at 32x32
BATCH = 2
ELEVATION = torch.tensor([10.0, 70.0])  # side view and overhead view: different prompts
AZIMUTH = torch.tensor([90.0, 0.0])
DISTANCE = torch.tensor([3.0, 3.0])
TIMESTEPS = torch.tensor([120, 760])

pytestmark = pytest.mark.device


def _cameras(device):
    """(elevation, azimuth, camera distance) [B] on ``device``, as the system passes them."""
    return ELEVATION.to(device), AZIMUTH.to(device), DISTANCE.to(device)


def _guidance(name, path, **cfg):
    return threestudio.find(name)({"pretrained_model_name_or_path": str(path), **cfg})


class _FakePromptUtils:
    """Random [cond; uncond] embeddings of width ``width`` (the tiny IF text width)."""

    use_perp_neg = False

    def __init__(self, width):
        self.width = width

    def get_text_embeddings(
        self, elevation, azimuth, camera_distances, view_dependent_prompting=True
    ):
        return torch.randn(2 * elevation.shape[0], 77, self.width, device=elevation.device)


@pytest.fixture(scope="module")
def prompt_utils(tiny_models, tmp_path_factory, device):
    """PromptProcessorOutput of each stand-in prompt processor on the tiny text encoders."""
    outputs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("prompt-cache"))
        for key, name in (
            ("deepfloyd-if", "deep-floyd-prompt-processor"),
            ("stable-diffusion", "stable-diffusion-prompt-processor"),
        ):
            processor = threestudio.find(name)(
                {
                    "prompt": "a hamburger",
                    "pretrained_model_name_or_path": str(tiny_models[key]),
                    "spawn": False,
                }
            )
            outputs[key] = processor()
    return outputs


@pytest.fixture(scope="module")
def if_guidance(tiny_models, device):
    return _guidance(IF_NAME, tiny_models["deepfloyd-if"], render_resolution=IF_RESOLUTION)


@pytest.fixture(scope="module")
def sd_guidance(tiny_models, device):
    return _guidance(SD_NAME, tiny_models["stable-diffusion"], render_resolution=SD_RESOLUTION)


@contextlib.contextmanager
def _float64(guidance):
    """Run the guidance's models in float64 for tight gradient comparisons."""
    models = [getattr(guidance, name) for name in guidance.MODEL_ATTRIBUTES]
    previous = guidance.weights_dtype
    for model in models:
        model.double()
    guidance.weights_dtype = torch.float64
    try:
        yield
    finally:
        for model in models:
            model.to(previous)
        guidance.weights_dtype = previous


def _alphabar(path, t):
    scheduler = DDPMScheduler.from_pretrained(str(path), subfolder="scheduler")
    return scheduler.alphas_cumprod.double().to(t.device)[t].view(-1, 1, 1, 1)


def _classic_sds_gradient(
    unet, path, x, noise, t, embeddings, guidance_scale, noise_channels, v_prediction=False
):
    """w(t) (eps_hat - eps) with w = 1 - alphabar and threestudio's CFG, from definitions."""
    alphabar = _alphabar(path, t)
    a, s = alphabar.sqrt(), (1 - alphabar).sqrt()
    x_t = a * x + s * noise
    with torch.no_grad():
        output = unet(
            torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=embeddings
        ).sample
    output = output[:, :noise_channels]
    if v_prediction:  # v = a eps - s x0 and x_t = a x0 + s eps  =>  eps = a v + s x_t
        output = torch.cat([a, a]) * output + torch.cat([s, s]) * torch.cat([x_t, x_t])
    eps_text, eps_uncond = output.chunk(2)
    eps_hat = eps_text + guidance_scale * (eps_text - eps_uncond)
    return (1 - alphabar) * (eps_hat - noise), x_t, eps_hat, alphabar


def _relative_error(actual, expected):
    return ((actual - expected).norm() / expected.norm()).item()


def _embeddings(prompt_utils, device):
    return prompt_utils.get_text_embeddings(*_cameras(device), True).double().to(device)


def test_deep_floyd_gradient_is_sds_through_the_resize(
    if_guidance, prompt_utils, tiny_models, device
):
    generator = torch.Generator().manual_seed(0)
    rgb = torch.rand(BATCH, 48, 40, 3, dtype=torch.float64, generator=generator)
    rgb = rgb.to(device).requires_grad_()
    noise = torch.randn(
        BATCH, 3, IF_RESOLUTION, IF_RESOLUTION, dtype=torch.float64, generator=generator
    ).to(device)
    timesteps = TIMESTEPS.to(device)
    pu = prompt_utils["deepfloyd-if"]
    with _float64(if_guidance):
        out = if_guidance(rgb, pu, *_cameras(device), timesteps=timesteps, noise=noise)
        (grad,) = torch.autograd.grad(out["loss_sds"], rgb)

        size = (IF_RESOLUTION, IF_RESOLUTION)
        pixels = F.interpolate(
            rgb.permute(0, 3, 1, 2) * 2 - 1, size, mode="bilinear", align_corners=False
        )
        classic, *_ = _classic_sds_gradient(
            if_guidance.unet,
            tiny_models["deepfloyd-if"],
            pixels.detach(),
            noise,
            timesteps,
            _embeddings(pu, device),
            20.0,
            noise_channels=3,
        )
    (expected,) = torch.autograd.grad((classic * pixels).sum() / BATCH, rgb)
    assert _relative_error(grad, expected) < 1e-5
    assert abs(out["grad_norm"].item() - classic.norm().item()) <= 1e-5 * classic.norm().item()
    assert out["timesteps"].device == device and torch.equal(out["timesteps"], timesteps)
    assert (out["min_step"], out["max_step"]) == (20, 980)
    assert "eval" not in out and "loss_sds_img" not in out


@pytest.mark.parametrize("model", ["stable-diffusion", "stable-diffusion-v"])
def test_stable_diffusion_latent_gradient_is_sds(model, tiny_models, prompt_utils, device):
    guidance = _guidance(
        SD_NAME, tiny_models[model], render_resolution=SD_RESOLUTION, guidance_scale=7.5
    )
    assert guidance.prediction_type == ("v_prediction" if model.endswith("-v") else "epsilon")
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(BATCH, 8, 8, 4, dtype=torch.float64, generator=generator)
    latents = latents.to(device).requires_grad_()
    noise = torch.randn(BATCH, 4, 8, 8, dtype=torch.float64, generator=generator).to(device)
    timesteps = TIMESTEPS.to(device)
    pu = prompt_utils["stable-diffusion"]
    with _float64(guidance):
        out = guidance(
            latents,
            pu,
            *_cameras(device),
            rgb_as_latents=True,
            timesteps=timesteps,
            noise=noise,
        )
        (grad,) = torch.autograd.grad(out["loss_sds"], latents)
        classic, *_ = _classic_sds_gradient(
            guidance.unet,
            tiny_models[model],
            latents.detach().permute(0, 3, 1, 2),
            noise,
            timesteps,
            _embeddings(pu, device),
            7.5,
            noise_channels=4,
            v_prediction=model.endswith("-v"),
        )
    assert _relative_error(grad.permute(0, 3, 1, 2), classic / BATCH) < 1e-5


def _encode(vae, rgb, seed):
    torch.manual_seed(seed)
    image = F.interpolate(
        rgb.permute(0, 3, 1, 2),
        (SD_RESOLUTION, SD_RESOLUTION),
        mode="bilinear",
        align_corners=False,
    )
    latents = vae.encode(image * 2 - 1).latent_dist.sample() * vae.config.scaling_factor
    return image, latents


def test_stable_diffusion_pixel_gradient_goes_through_the_vae(
    sd_guidance, prompt_utils, tiny_models, device
):
    generator = torch.Generator().manual_seed(2)
    rgb = torch.rand(BATCH, 32, 32, 3, dtype=torch.float64, generator=generator)
    rgb = rgb.to(device).requires_grad_()
    noise = torch.randn(BATCH, 4, 8, 8, dtype=torch.float64, generator=generator).to(device)
    timesteps = TIMESTEPS.to(device)
    pu = prompt_utils["stable-diffusion"]
    with _float64(sd_guidance):
        torch.manual_seed(5)  # the VAE posterior sample is the only random draw left
        out = sd_guidance(rgb, pu, *_cameras(device), timesteps=timesteps, noise=noise)
        (grad,) = torch.autograd.grad(out["loss_sds"], rgb)
        _, latents = _encode(sd_guidance.vae, rgb, seed=5)
        classic, *_ = _classic_sds_gradient(
            sd_guidance.unet,
            tiny_models["stable-diffusion"],
            latents.detach(),
            noise,
            timesteps,
            _embeddings(pu, device),
            100.0,
            noise_channels=4,
        )
        (expected,) = torch.autograd.grad((classic * latents).sum() / BATCH, rgb)
    assert _relative_error(grad, expected) < 1e-5
    assert "loss_sds_img" not in out


def test_image_space_loss_only_when_enabled(tiny_models, prompt_utils, device):
    guidance = _guidance(
        SD_NAME, tiny_models["stable-diffusion"], render_resolution=SD_RESOLUTION, use_img_loss=True
    )
    generator = torch.Generator().manual_seed(3)
    rgb = torch.rand(BATCH, 64, 64, 3, dtype=torch.float64, generator=generator)
    rgb = rgb.to(device).requires_grad_()
    noise = torch.randn(BATCH, 4, 8, 8, dtype=torch.float64, generator=generator).to(device)
    timesteps = TIMESTEPS.to(device)
    pu = prompt_utils["stable-diffusion"]
    with _float64(guidance):
        torch.manual_seed(9)
        out = guidance(rgb, pu, *_cameras(device), timesteps=timesteps, noise=noise)
        (grad,) = torch.autograd.grad(out["loss_sds_img"], rgb)

        vae = guidance.vae
        image, latents = _encode(vae, rgb, seed=9)
        _, x_t, eps_hat, alphabar = _classic_sds_gradient(
            guidance.unet,
            tiny_models["stable-diffusion"],
            latents.detach(),
            noise,
            timesteps,
            _embeddings(pu, device),
            100.0,
            noise_channels=4,
        )
        a, s = alphabar.sqrt(), (1 - alphabar).sqrt()
        with torch.no_grad():
            x0_hat = (x_t - s * eps_hat) / a
            decoded = (vae.decode(x0_hat / vae.config.scaling_factor).sample * 0.5 + 0.5).clamp(
                0, 1
            )
        c = (1 - alphabar) * a / s
        expected_loss = 0.5 * (c * (image.detach() - decoded) ** 2).sum() / BATCH
        (expected_grad,) = torch.autograd.grad(
            (c * (image.detach() - decoded) * image).sum() / BATCH, rgb
        )
    assert set(out) >= {"loss_sds", "loss_sds_img"}
    assert abs(out["loss_sds_img"].item() - expected_loss.item()) <= 1e-8 * expected_loss.item()
    assert _relative_error(grad, expected_grad) < 1e-5
    with pytest.raises(ValueError, match="use_img_loss.*rgb_as_latents"):
        guidance(
            torch.zeros(BATCH, 8, 8, 4, device=device), pu, *_cameras(device), rgb_as_latents=True
        )


def test_guidance_eval_images(if_guidance, sd_guidance, prompt_utils, device):
    rgb = torch.rand(BATCH, 40, 40, 3, device=device)
    for guidance, key, size in (
        (if_guidance, "deepfloyd-if", IF_RESOLUTION),
        (sd_guidance, "stable-diffusion", SD_RESOLUTION),
    ):
        out = guidance(rgb, prompt_utils[key], *_cameras(device), guidance_eval=True)
        images = out["eval"]
        assert torch.equal(images["t"], out["timesteps"])
        assert (
            out["min_step"] <= out["timesteps"].min() and out["timesteps"].max() <= out["max_step"]
        )
        for name in ("input", "noisy", "x0"):
            assert images[name].shape == (BATCH, size, size, 3), name
            assert images[name].device == device, name
            assert images[name].min() >= 0 and images[name].max() <= 1, name
            assert images[name].std() > 0, name
        if key == "deepfloyd-if":
            resized = F.interpolate(
                rgb.permute(0, 3, 1, 2), (size, size), mode="bilinear", align_corners=False
            )
            assert torch.allclose(images["input"], resized.permute(0, 2, 3, 1), atol=1e-6)


def test_threestudio_schedules_and_annealing(tiny_models, device):
    guidance = _guidance(
        IF_NAME,
        tiny_models["deepfloyd-if"],
        min_step_percent=[0.3, 0.02, 1000],
        max_step_percent=[500, 0.98, 0.5, 501],
        grad_clip=[0, 0.5, 2.0, 1000],
    )
    expected = {
        0: (int(1000 * 0.3), 980),
        500: (int(1000 * (0.3 + (0.02 - 0.3) * 0.5)), 980),
        800: (int(1000 * (0.3 + (0.02 - 0.3) * 0.8)), 500),
    }
    for step, bounds in expected.items():
        guidance.do_update_step(0, step)
        assert (guidance.min_step, guidance.max_step) == bounds, step
    assert guidance.grad_clip_val == pytest.approx(0.5 + 1.5 * 0.8)

    annealed = _guidance(
        IF_NAME,
        tiny_models["deepfloyd-if"],
        min_step_percent=[0.3, 0.1, 1000],
        anneal="sqrt",
        anneal_steps=1000,
        anneal_jitter_percent=0.02,
    )
    annealed.do_update_step(0, 250)
    t_min = int(1000 * (0.3 - 0.2 * 0.25))
    t = round(t_min + (980 - t_min) * (1 - 0.25**0.5))
    assert (annealed.min_step, annealed.max_step) == (t - 20, t + 20)


def test_gradient_clipping_bounds_the_latent_gradient(tiny_models, prompt_utils, device):
    guidance = _guidance(
        SD_NAME, tiny_models["stable-diffusion"], render_resolution=SD_RESOLUTION, grad_clip=0.01
    )
    latents = torch.randn(BATCH, 8, 8, 4, device=device, requires_grad=True)
    out = guidance(
        latents, prompt_utils["stable-diffusion"], *_cameras(device), rgb_as_latents=True
    )
    (grad,) = torch.autograd.grad(out["loss_sds"], latents)
    assert grad.abs().max() * BATCH <= 0.01 * (1 + 1e-5)
    assert grad.abs().max() * BATCH >= 0.01 * (1 - 1e-5)  # random UNet: some entries do clip


@pytest.mark.parametrize(
    "name, model, attributes",
    [(IF_NAME, "deepfloyd-if", ("unet",)), (SD_NAME, "stable-diffusion", ("unet", "vae"))],
)
def test_release_frees_the_models(name, model, attributes, tiny_models, device):
    guidance = _guidance(name, tiny_models[model], render_resolution=64)
    references = [weakref.ref(getattr(guidance, attribute)) for attribute in attributes]
    guidance.release()
    gc.collect()
    assert all(getattr(guidance, attribute) is None for attribute in attributes)
    assert all(reference() is None for reference in references)
    with pytest.raises(RuntimeError, match="released"):
        elevation, azimuth, distance = _cameras(device)
        guidance(
            torch.rand(1, 8, 8, 3, device=device),
            _FakePromptUtils(32),
            elevation[:1],
            azimuth[:1],
            distance[:1],
        )


def test_missing_local_model_error_names_the_model(tmp_path):
    missing = tmp_path / "IF-I-XL-v1.0"
    with pytest.raises(DiffusionModelUnavailableError) as error:
        _guidance(IF_NAME, missing)
    message = str(error.value)
    assert "DeepFloyd IF" in message and str(missing) in message
    assert (
        "does not exist" in message and "huggingface-cli login" in message and "licence" in message
    )


def test_offline_hub_model_error_names_the_model():
    with pytest.raises(DiffusionModelUnavailableError) as error:
        _guidance(SD_NAME, "stabledreamer-tests/no-such-model")
    message = str(error.value)
    assert "Stable Diffusion" in message and "stabledreamer-tests/no-such-model" in message
    assert "huggingface-cli download" in message


def test_incomplete_model_folder_error_names_the_missing_part(tiny_models):
    with pytest.raises(DiffusionModelUnavailableError, match="Stable Diffusion.*'unet'"):
        _guidance(SD_NAME, tiny_models["clip"])


def test_bad_inputs_are_rejected_clearly(if_guidance, tiny_models, device):
    pu = _FakePromptUtils(32)
    with pytest.raises(ValueError, match="rgb_as_latents must be False"):
        if_guidance(
            torch.rand(BATCH, 8, 8, 4, device=device), pu, *_cameras(device), rgb_as_latents=True
        )
    with pytest.raises(ValueError, match="timesteps must lie in \\[0, 999\\]"):
        if_guidance(
            torch.rand(BATCH, 8, 8, 3, device=device),
            pu,
            *_cameras(device),
            timesteps=torch.tensor([5, 1000]),
        )
    with pytest.raises(ValueError, match="anneal_steps must be positive"):
        _guidance(IF_NAME, tiny_models["deepfloyd-if"], anneal="sqrt")
    with pytest.raises(ValueError, match="weighting_strategy.*'sjc'"):
        _guidance(IF_NAME, tiny_models["deepfloyd-if"], weighting_strategy="sjc")


def test_compile_unet_compiles_the_unet_in_place_and_keeps_its_predictions(sd_guidance, tiny_models, device):
    compiled = _guidance(SD_NAME, tiny_models["stable-diffusion"], render_resolution=SD_RESOLUTION,
                         compile_unet=True)
    # nn.Module.compile keeps the module and sets its compiled call
    assert type(compiled.unet) is type(sd_guidance.unet)
    assert compiled.unet._compiled_call_impl is not None and sd_guidance.unet._compiled_call_impl is None
    config = sd_guidance.unet.config
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(BATCH, config.in_channels, config.sample_size, config.sample_size, generator=generator)
    embeddings = torch.randn(2 * BATCH, 77, config.cross_attention_dim, generator=generator)
    t = torch.tensor([100, 700][:BATCH] + [500] * (BATCH - 2))
    eager = sd_guidance.guided_noise(x_t.to(device), t.to(device), embeddings.to(device))
    fused = compiled.guided_noise(x_t.to(device), t.to(device), embeddings.to(device))
    # the compiled kernels fuse and reorder float arithmetic: equal up to rounding, which
    # classifier-free guidance at scale 100 amplifies
    assert float((fused - eager).abs().max()) <= 1e-3 * float(eager.abs().max())


def test_compile_unet_with_sequential_offload_is_refused(tiny_models):
    with pytest.raises(ValueError, match="compile_unet=True cannot be combined with enable_sequential_cpu_offload"):
        _guidance(SD_NAME, tiny_models["stable-diffusion"], compile_unet=True,
                  enable_sequential_cpu_offload=True)


def test_defaults_match_the_published_models():
    if_config = threestudio.find(IF_NAME).Config()
    assert (if_config.pretrained_model_name_or_path, if_config.variant) == (
        "DeepFloyd/IF-I-XL-v1.0",
        "fp16",
    )
    assert (if_config.render_resolution, if_config.guidance_scale) == (64, 20.0)
    sd_config = threestudio.find(SD_NAME).Config()
    assert sd_config.pretrained_model_name_or_path == "stabilityai/stable-diffusion-2-1-base"
    assert (sd_config.render_resolution, sd_config.guidance_scale, sd_config.use_img_loss) == (
        512,
        100.0,
        False,
    )
    for config in (if_config, sd_config):
        assert (config.min_step_percent, config.max_step_percent, config.anneal) == (
            0.02,
            0.98,
            "none",
        )


def test_models_are_half_precision_on_cuda_only_channels_last_without_text_encoder(
    if_guidance, sd_guidance, device
):
    # half_precision_weights is on by default; it applies on CUDA only (float32 on CPU)
    expected = torch.float16 if device.type == "cuda" else torch.float32
    for guidance in (if_guidance, sd_guidance):
        assert guidance.cfg.half_precision_weights
        assert guidance.weights_dtype == expected
        for name in guidance.MODEL_ATTRIBUTES:
            parameters = list(getattr(guidance, name).parameters())
            assert all(p.dtype == expected and p.device == device for p in parameters), name
        assert guidance.alphas_cumprod.device == device
        assert not any(p.requires_grad for p in guidance.unet.parameters())
        assert guidance.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        assert not any("text_encoder" in name for name in vars(guidance))
