"""stabledreamer-vsd-guidance (ProlificDreamer's VSD) on the tiny Stable Diffusion.

The gradient and the LoRA loss are checked against an independent computation: fresh
copies of the tiny UNet, one plain and one with every LoRA update merged into the weights
(W + B A) and the camera embedding as its class embedding. When the tests run on real
threestudio with its pinned diffusers (< 0.20), they are also compared with threestudio's
own ``stable-diffusion-vsd-guidance`` given the same weights, renders, noise and timesteps.

Every test runs the guidance on ``--device``; the references are computed on the CPU. The
float64 comparisons keep their tolerances on CUDA, where the weights load as float16
(``half_precision_weights``): the comparisons run the guidance in float64, and the tiny
models' weights are float16-exact (``tiny_models`` rounds them), so the float16 copy holds
the very values the reference loads.
"""

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel

import threestudio

NAME = "stabledreamer-vsd-guidance"
BATCH = 2
ELEVATION = torch.tensor([15.0, 40.0])
AZIMUTH = torch.tensor([20.0, 200.0])
DISTANCE = torch.tensor([2.0, 2.5])
TIMESTEPS = torch.tensor([300, 700])
LORA_TIMESTEPS = torch.tensor([50, 900])

pytestmark = pytest.mark.device


def _cameras(device):
    """(elevation, azimuth, camera distance) [B] on ``device``, as the system passes them."""
    return ELEVATION.to(device), AZIMUTH.to(device), DISTANCE.to(device)


def _c2w(device, batch=BATCH, seed=0):
    """Random camera matrices [batch, 4, 4] on ``device`` (drawn on the CPU, reproducibly)."""
    generator = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4).repeat(batch, 1, 1)
    c2w[:, :3, :] = torch.randn(batch, 3, 4, generator=generator)
    return c2w.to(device)


@pytest.fixture(scope="module")
def prompt_utils(tiny_models, tmp_path_factory, device):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("vsd-prompt-cache"))
        processor = threestudio.find("stable-diffusion-prompt-processor")(
            {
                "prompt": "a teapot",
                "pretrained_model_name_or_path": str(tiny_models["stable-diffusion"]),
                "spawn": False,
            }
        )
        return processor()


def _guidance(tiny_models, **cfg):
    return threestudio.find(NAME)(
        {
            "pretrained_model_name_or_path": str(tiny_models["stable-diffusion"]),
            "render_resolution": 64,  # 8x8 latents
            **cfg,
        }
    )


def _randomise_lora(guidance, seed=3):
    """Non-zero LoRA updates (peft starts B at zero, where the LoRA changes nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in guidance.lora_layers.values():
            weight = layer["lora_B"]["default"].weight
            weight.copy_(0.2 * torch.randn(weight.shape, generator=generator))


@contextlib.contextmanager
def _float64(guidance):
    """Run the frozen models, the LoRA and the camera embedding in float64; afterwards the
    models return to the guidance's weight dtype and the trainable parts to float32."""
    models = {id(m): m for m in (getattr(guidance, name) for name in guidance.MODEL_ATTRIBUTES)}
    previous = guidance.weights_dtype
    for model in models.values():
        model.double()
    guidance.double()
    guidance.weights_dtype = torch.float64
    try:
        yield
    finally:
        for model in models.values():
            model.to(previous)
        guidance.float()
        guidance.weights_dtype = previous


def _reference_unets(guidance, path):
    """(plain UNet, UNet with the guidance's LoRA merged and its camera embedding), float64
    on the CPU."""
    plain = UNet2DConditionModel.from_pretrained(str(path), subfolder="unet").double().eval()
    merged = copy.deepcopy(plain)
    modules = dict(merged.named_modules())
    count = 0
    for name, module in guidance.unet_lora.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "lora_B") and "default" in module.lora_A:
            down = module.lora_A["default"].weight.detach().cpu().double()
            up = module.lora_B["default"].weight.detach().cpu().double()
            with torch.no_grad():
                modules[name].weight += up @ down  # scale lora_alpha / r = 1
            count += 1
    assert count > 0
    merged.class_embedding = copy.deepcopy(guidance.camera_embedding).cpu().double()
    return plain, merged


def _expected(guidance, path, pu, latents, noise, lora_noise, camera):
    """(VSD gradient B * dL/dx, LoRA loss, x0_lora) computed on the CPU in float64."""
    plain, merged = _reference_unets(guidance, path)
    alphabar = DDPMScheduler.from_pretrained(str(path), subfolder="scheduler").alphas_cumprod.double()
    a = alphabar[TIMESTEPS].view(-1, 1, 1, 1)
    x_t = a.sqrt() * latents + (1 - a).sqrt() * noise
    text_vd = pu.get_text_embeddings(ELEVATION, AZIMUTH, DISTANCE, True).cpu().double()
    text = pu.get_text_embeddings(ELEVATION, AZIMUTH, DISTANCE, False).cpu().double()[:BATCH]
    with torch.no_grad():
        cond, uncond = plain(
            torch.cat([x_t, x_t]), torch.cat([TIMESTEPS, TIMESTEPS]), encoder_hidden_states=text_vd
        ).sample.chunk(2)
        eps_pretrained = uncond + guidance.cfg.guidance_scale * (cond - uncond)
        with_camera, without = merged(
            torch.cat([x_t, x_t]),
            torch.cat([TIMESTEPS, TIMESTEPS]),
            encoder_hidden_states=torch.cat([text, text]),
            class_labels=torch.cat([camera, torch.zeros_like(camera)]),
        ).sample.chunk(2)
        eps_lora = without + guidance.cfg.guidance_scale_lora * (with_camera - without)
        b = alphabar[LORA_TIMESTEPS].view(-1, 1, 1, 1)
        noisy = b.sqrt() * latents + (1 - b).sqrt() * lora_noise
        prediction = merged(noisy, LORA_TIMESTEPS, encoder_hidden_states=text, class_labels=camera).sample
    gradient = (1 - a) * (eps_pretrained - eps_lora)
    lora_loss = F.mse_loss(prediction, lora_noise)
    return gradient, lora_loss, (x_t - (1 - a).sqrt() * eps_lora) / a.sqrt()


@pytest.mark.parametrize("camera_condition_type", ["extrinsics", "mvp"])
def test_vsd_gradient_and_lora_loss_match_an_independent_computation(
    camera_condition_type, tiny_models, prompt_utils, device
):
    guidance = _guidance(
        tiny_models,
        guidance_scale_lora=2.0,  # exercises the camera / no-camera guidance of the LoRA
        lora_cfg_training=False,
        camera_condition_type=camera_condition_type,
    )
    _randomise_lora(guidance)
    generator = torch.Generator().manual_seed(5)
    latents = torch.randn(BATCH, 8, 8, 4, dtype=torch.float64, generator=generator)
    noise = torch.randn(BATCH, 4, 8, 8, dtype=torch.float64, generator=generator)
    lora_noise = torch.randn(BATCH, 4, 8, 8, dtype=torch.float64, generator=generator)
    c2w, mvp = _c2w(device, seed=1).double(), _c2w(device, seed=2).double()
    camera = (c2w if camera_condition_type == "extrinsics" else mvp).reshape(BATCH, 16).cpu()
    render = latents.to(device).requires_grad_()
    with _float64(guidance):
        out = guidance(
            render,
            prompt_utils,
            *_cameras(device),
            c2w=c2w,
            mvp_mtx=mvp,
            rgb_as_latents=True,
            timesteps=TIMESTEPS.to(device),
            noise=noise.to(device),
            lora_timesteps=LORA_TIMESTEPS.to(device),
            lora_noise=lora_noise.to(device),
            guidance_eval=True,
        )
        (grad,) = torch.autograd.grad(out["loss_vsd"], render)
        # the LoRA loss trains exactly the LoRA and the camera embedding
        parameter_grads = torch.autograd.grad(out["loss_lora"], list(guidance.parameters()))
        expected, expected_lora_loss, x0_lora = _expected(
            guidance,
            tiny_models["stable-diffusion"],
            prompt_utils,
            latents.permute(0, 3, 1, 2),
            noise,
            lora_noise,
            camera,
        )
        decoded = guidance.decode_latents(x0_lora.to(device)).permute(0, 2, 3, 1).cpu()
    actual = grad.permute(0, 3, 1, 2).cpu() * BATCH
    assert ((actual - expected).norm() / expected.norm()).item() < 1e-6
    assert abs(out["loss_lora"].item() - expected_lora_loss.item()) < 1e-6 * expected_lora_loss.item()
    assert abs(out["grad_norm"].item() - expected.norm().item()) < 1e-6 * expected.norm().item()
    assert set(out["eval"]) == {"input", "noisy", "x0", "x0_lora", "t"}
    assert out["eval"]["x0_lora"].device == device
    assert torch.allclose(out["eval"]["x0_lora"].cpu(), decoded, atol=1e-4)
    assert all(g.abs().sum() > 0 for g in parameter_grads)


def test_lora_loss_decreases_when_trained_on_a_fixed_image(tiny_models, prompt_utils, device):
    torch.manual_seed(0)
    guidance = _guidance(tiny_models, lora_cfg_training=False)
    latents = torch.randn(BATCH, 8, 8, 4).to(device)
    c2w = _c2w(device)
    elevation, azimuth, distance = _cameras(device)
    generator = torch.Generator().manual_seed(9)
    eval_t = torch.linspace(20, 980, 8).long().to(device)
    eval_noise = torch.randn(8, 4, 8, 8, generator=generator).to(device)

    def lora_loss(timesteps=None, noise=None):
        batch = latents.shape[0] if timesteps is None else len(timesteps)
        x = latents.repeat(batch // BATCH, 1, 1, 1)
        repeat = batch // BATCH
        return guidance(
            x,
            prompt_utils,
            elevation.repeat(repeat),
            azimuth.repeat(repeat),
            distance.repeat(repeat),
            c2w=c2w.repeat(repeat, 1, 1),
            rgb_as_latents=True,
            lora_timesteps=timesteps,
            lora_noise=noise,
        )["loss_lora"]

    with torch.no_grad():
        before = lora_loss(eval_t, eval_noise).item()
    optimizer = torch.optim.Adam(guidance.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        lora_loss().backward()
        optimizer.step()
    with torch.no_grad():
        after = lora_loss(eval_t, eval_noise).item()
    print(f"LoRA loss on the fixed evaluation draws: {before:.4f} -> {after:.4f}")
    assert after < 0.95 * before


def test_state_dict_holds_only_the_trainable_parts(tiny_models, prompt_utils, device):
    guidance = _guidance(tiny_models, lora_cfg_training=False)
    _randomise_lora(guidance, seed=4)
    state = guidance.state_dict()
    assert state and all(k.startswith(("lora_layers.", "camera_embedding.")) for k in state)
    assert {id(p) for p in guidance.parameters()} == {
        id(p) for p in guidance.parameters() if p.requires_grad
    }
    assert not any(p.requires_grad for p in guidance.vae.parameters())
    # the trainable parts are float32 (also beside float16 weights) on the models' device
    assert all(p.dtype == torch.float32 and p.device == device for p in guidance.parameters())
    assert all(p.device == device for p in guidance.unet.parameters())

    restored = _guidance(tiny_models, lora_cfg_training=False)
    restored.load_state_dict({k: v.cpu() for k, v in state.items()})  # as from a checkpoint
    assert all(p.device == device for p in restored.parameters())
    latents = torch.randn(BATCH, 8, 8, 4).to(device)
    kwargs = dict(
        c2w=_c2w(device), rgb_as_latents=True, timesteps=TIMESTEPS.to(device),
        noise=torch.randn(BATCH, 4, 8, 8).to(device), lora_timesteps=LORA_TIMESTEPS.to(device),
        lora_noise=torch.randn(BATCH, 4, 8, 8).to(device),
    )
    outputs = [
        g(latents, prompt_utils, *_cameras(device), **kwargs) for g in (guidance, restored)
    ]
    for key in ("loss_vsd", "loss_lora"):
        assert torch.allclose(outputs[0][key], outputs[1][key], rtol=1e-6), key


def test_separate_v_prediction_lora_model(tiny_models, prompt_utils, device):
    guidance = _guidance(
        tiny_models,
        pretrained_model_name_or_path_lora=str(tiny_models["stable-diffusion-v"]),
        lora_cfg_training=False,
    )
    assert guidance.unet_lora is not guidance.unet
    assert (guidance.prediction_type, guidance.prediction_type_lora) == ("epsilon", "v_prediction")
    assert not any("lora" in name for name, _ in guidance.unet.named_parameters())
    latents = torch.randn(BATCH, 8, 8, 4, dtype=torch.float64).to(device)
    lora_noise = torch.randn(BATCH, 4, 8, 8, dtype=torch.float64).to(device)
    c2w = _c2w(device).double()
    lora_timesteps = LORA_TIMESTEPS.to(device)
    with _float64(guidance):
        out = guidance(
            latents, prompt_utils, *_cameras(device), c2w=c2w, rgb_as_latents=True,
            lora_timesteps=lora_timesteps, lora_noise=lora_noise,
        )
        alphabar = guidance.alphas_cumprod_lora.double()[lora_timesteps].view(-1, 1, 1, 1)
        x = latents.permute(0, 3, 1, 2)
        noisy = alphabar.sqrt() * x + (1 - alphabar).sqrt() * lora_noise
        text = prompt_utils.get_text_embeddings(*_cameras(device), False)[:BATCH].double()
        with torch.no_grad(), guidance._lora_model() as unet:
            prediction = unet(noisy, lora_timesteps, encoder_hidden_states=text, class_labels=c2w.view(BATCH, 16)).sample
        velocity = alphabar.sqrt() * lora_noise - (1 - alphabar).sqrt() * x
    assert out["loss_lora"].item() == pytest.approx(F.mse_loss(prediction, velocity).item(), rel=1e-6)


def test_bad_settings_and_missing_cameras_are_rejected(tiny_models, prompt_utils, device):
    with pytest.raises(ValueError, match="camera_condition_type must be one of.*'intrinsics'"):
        _guidance(tiny_models, camera_condition_type="intrinsics")
    with pytest.raises(ValueError, match="lora_rank must be a positive integer, got 0"):
        _guidance(tiny_models, lora_rank=0)
    guidance = _guidance(tiny_models)
    render = torch.rand(BATCH, 16, 16, 3, device=device)
    with pytest.raises(ValueError, match="needs the camera batch's 'c2w'"):
        guidance(render, prompt_utils, *_cameras(device))
    with pytest.raises(ValueError, match=r"c2w must have shape \(2, 4, 4\)"):
        guidance(
            render, prompt_utils, *_cameras(device), c2w=torch.eye(4, device=device).expand(3, 4, 4)
        )


def _threestudio_vsd_class():
    """threestudio's VSD guidance class, or the reason it cannot be used here."""
    if "threestudio_standin" in threestudio.__file__:
        return None, (
            "compares with threestudio's stable-diffusion-vsd-guidance, absent from the "
            "stand-in (run with THREESTUDIO_ROOT); the independent-computation tests cover "
            "the stand-in run"
        )
    try:
        from threestudio.models.guidance.stable_diffusion_vsd_guidance import (
            StableDiffusionVSDGuidance,
        )
    except ImportError as error:
        import diffusers

        return None, (
            "threestudio's stable-diffusion-vsd-guidance needs diffusers < 0.20 "
            f"(LoRAAttnProcessor, AttnProcsLayers); diffusers {diffusers.__version__} "
            f"here ({error}). The pinned-library job runs this comparison."
        )
    return StableDiffusionVSDGuidance, None


def test_vsd_matches_threestudio(tiny_models, prompt_utils, monkeypatch, device):
    """Both guidances with float32 weights (threestudio's half_precision_weights=False) and,
    on CUDA, without TF32 convolutions, so that the two float32 computations agree."""
    reference_class, reason = _threestudio_vsd_class()
    if reference_class is None:
        pytest.skip(reason)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    path = str(tiny_models["stable-diffusion"])
    theirs = reference_class(
        {
            "pretrained_model_name_or_path": path,
            "pretrained_model_name_or_path_lora": path,
            "half_precision_weights": False,
            "guidance_scale": 7.5,
            "guidance_scale_lora": 2.0,
            "lora_cfg_training": False,
        }
    )
    ours = threestudio.find(NAME)(
        {
            "pretrained_model_name_or_path": path,
            "render_resolution": 64 * 8,  # threestudio's 64x64 latents
            "half_precision_weights": False,
            "guidance_scale": 7.5,
            "guidance_scale_lora": 2.0,
            "lora_cfg_training": False,
        }
    )
    # same weights: threestudio's LoRA (up matrices made non-zero) and camera embedding
    generator = torch.Generator().manual_seed(21)
    copied = 0
    peft_layers = dict(ours.unet_lora.named_modules())
    with torch.no_grad():
        for name, processor in theirs.unet_lora.attn_processors.items():
            attention = name[: -len(".processor")]
            for ours_suffix, theirs_name in (
                ("to_q", "to_q_lora"),
                ("to_k", "to_k_lora"),
                ("to_v", "to_v_lora"),
                ("to_out.0", "to_out_lora"),
            ):
                lora = getattr(processor, theirs_name)
                lora.up.weight.copy_(0.2 * torch.randn(lora.up.weight.shape, generator=generator))
                layer = peft_layers[f"{attention}.{ours_suffix}"]
                layer.lora_A["default"].weight.copy_(lora.down.weight)
                layer.lora_B["default"].weight.copy_(lora.up.weight)
                copied += 1
        ours.camera_embedding.load_state_dict(theirs.camera_embedding.module.state_dict())
    assert copied == len(ours.lora_layers)

    latents = torch.randn(BATCH, 64, 64, 4, generator=generator).to(device)
    noise = torch.randn(BATCH, 4, 64, 64, generator=generator).to(device)
    lora_noise = torch.randn(BATCH, 4, 64, 64, generator=generator).to(device)
    timesteps, lora_timesteps = TIMESTEPS.to(device), LORA_TIMESTEPS.to(device)
    c2w = _c2w(device, seed=8)
    cameras = dict(c2w=c2w, mvp_mtx=c2w, rgb_as_latents=True)

    render_ours = latents.clone().requires_grad_()
    out = ours(
        render_ours, prompt_utils, *_cameras(device), timesteps=timesteps, noise=noise,
        lora_timesteps=lora_timesteps, lora_noise=lora_noise, **cameras,
    )
    (grad_ours,) = torch.autograd.grad(out["loss_vsd"], render_ours)

    draws_t, draws_noise = [timesteps, lora_timesteps], [noise, lora_noise]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "randint", lambda *args, **kwargs: draws_t.pop(0).clone())
        patch.setattr(torch, "randn_like", lambda like, **kwargs: draws_noise.pop(0).to(like))
        render_theirs = latents.clone().requires_grad_()
        reference = theirs(render_theirs, prompt_utils, *_cameras(device), **cameras)
    assert not draws_t and not draws_noise
    (grad_theirs,) = torch.autograd.grad(reference["loss_vsd"], render_theirs)

    gradient_error = ((grad_ours - grad_theirs).norm() / grad_theirs.norm()).item()
    lora_error = abs(out["loss_lora"].item() - reference["loss_lora"].item()) / reference["loss_lora"].item()
    print(f"VSD vs threestudio: gradient relative error {gradient_error:.2e}, "
          f"max abs {(grad_ours - grad_theirs).abs().max().item():.2e}, LoRA loss relative error {lora_error:.2e}")
    assert gradient_error < 1e-4
    assert lora_error < 1e-4
