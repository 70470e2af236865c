"""The lab's stage-2 prior: the fitted VAE and the exact posterior mean over reference latents,
run inside the Stable Diffusion guidance."""
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import threestudio
from threestudio_stabledreamer.lab.latent_vae import (
    HELD_OUT_RENDERS,
    SEED,
    fit_report,
    lab_renders,
    reconstruction_psnr,
)
from threestudio_stabledreamer.lab.objects import make_object
from threestudio_stabledreamer.lab.render import look_at_origin, render_object, turn_about_z

MIN_RECONSTRUCTION_PSNR_DB = 24.0


def latent_guidance(path, **overrides):
    config = dict(pretrained_model_name_or_path=str(path), object="head", num_azimuths=4,
                  backgrounds=[[1.0, 1.0, 1.0]], render_resolution=32, front_bias=2.0, view_leak=0.3,
                  guidance_scale=7.5, weighting_strategy="sds")
    config.update(overrides)
    return threestudio.find("stabledreamer-lab-latent-guidance")(config)


def lab_prompt_utils():
    return threestudio.find("stabledreamer-lab-prompt-processor")({"prompt": "head"})()


def test_the_lab_vae_loads_through_from_pretrained_as_sds_vae(lab_vae):
    from diffusers import AutoencoderKL, DDPMScheduler

    vae = AutoencoderKL.from_pretrained(str(lab_vae), subfolder="vae")
    assert vae.config.latent_channels == 4
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 4
    assert DDPMScheduler.from_pretrained(str(lab_vae), subfolder="scheduler").config.num_train_timesteps == 1000
    guidance = latent_guidance(lab_vae)
    assert isinstance(guidance.vae, AutoencoderKL) and guidance.latent_resolution == 8


def test_the_lab_vae_reconstructs_unseen_lab_renders(lab_vae):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(lab_vae), subfolder="vae")
    unseen = lab_renders(HELD_OUT_RENDERS, torch.Generator().manual_seed(SEED + 1))
    psnr = reconstruction_psnr(vae, unseen)
    assert psnr > MIN_RECONSTRUCTION_PSNR_DB
    assert fit_report(lab_vae)["held_out_psnr_db"] > MIN_RECONSTRUCTION_PSNR_DB


def test_the_lab_vae_encoder_is_near_deterministic(lab_vae):
    """Posterior std per latent under 1% of the latents' spread: samples of the encoding are
    its mean, so the latent loss has no variance term that favours some images."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(lab_vae), subfolder="vae")
    images = lab_renders(32, torch.Generator().manual_seed(SEED + 2))
    with torch.no_grad():
        posterior = vae.encode(images * 2.0 - 1.0).latent_dist
    assert float(posterior.std.max() / posterior.mean.std()) < 0.01


def brute_force_x0(x_t, references, bins, view, a, s, front, front_bias, leak):
    """Posterior mean over the references y_k of one sample: explicit Gaussian likelihoods
    N(x_t; a y_k, s^2 I), prior weights, a softmax, in float64; ``view`` None: unconditional."""
    log_joint = []
    for y, b in zip(references.double(), bins.tolist()):
        prior = front_bias ** (b == front) * (1.0 if view is None else (1.0 - leak) * (b == view) + leak)
        likelihood = torch.distributions.Normal(a * y, s).log_prob(x_t.double()).sum()
        log_joint.append(torch.log(torch.tensor(prior, dtype=torch.float64)) + likelihood)
    weights = torch.softmax(torch.stack(log_joint), 0)
    return sum(w * y.double() for w, y in zip(weights, references))


def test_latent_prior_in_the_sd_guidance_is_the_brute_force_posterior_mean(lab_vae):
    """x0_hat of the real SD guidance's classifier-free guidance, with the lab prior over the
    latents of renders from four azimuths, equals threestudio's x0_c + g (x0_c - x0_u) computed by hand."""
    guidance = latent_guidance(lab_vae)
    prompt_utils = lab_prompt_utils()
    elevation, azimuth, distance = torch.tensor([15.0, 15.0]), torch.tensor([10.0, 100.0]), torch.tensor([1.8, 1.8])
    c2w, fovy = look_at_origin(elevation, azimuth, distance), torch.deg2rad(torch.tensor([50.0, 50.0]))
    rgb = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    captured = {}
    estimate = guidance._denoised_estimates

    def spy(x_t, t, alphas, *args, **kwargs):
        captured.update(x_t=x_t, out=estimate(x_t, t, alphas, *args, **kwargs))
        return captured["out"]

    guidance._denoised_estimates = spy
    timesteps = torch.tensor([300, 600])
    guidance(rgb, prompt_utils, elevation, azimuth, distance, c2w=c2w, fovy=fovy, timesteps=timesteps)

    index = prompt_utils.direction2idx
    # the references of each view: azimuths +0, 90, 180, 270 degrees
    bins = torch.tensor([[index["front"], index["side"], index["back"], index["side"]],
                         [index["side"], index["back"], index["side"], index["front"]]])
    views = [index["front"], index["side"]]
    obj = make_object("head")
    cameras = turn_about_z(c2w, torch.tensor([0.0, 90.0, 180.0, 270.0]))
    alphas = guidance.alphas_cumprod[timesteps].double()
    for b in range(2):
        images = render_object(obj, cameras[b], fovy[b].repeat(4), 32, 32, (1.0, 1.0, 1.0)).rgb.permute(0, 3, 1, 2)
        with torch.no_grad():
            latents = guidance.vae.encode(images * 2.0 - 1.0).latent_dist.mean * guidance.vae.config.scaling_factor
        a, s = alphas[b].sqrt(), (1.0 - alphas[b]).sqrt()
        x_t = captured["x_t"][b]
        conditional = brute_force_x0(x_t, latents, bins[b], views[b], a, s, index["front"], 2.0, 0.3)
        unconditional = brute_force_x0(x_t, latents, bins[b], None, a, s, index["front"], 2.0, 0.3)
        expected = conditional + 7.5 * (conditional - unconditional)
        torch.testing.assert_close(captured["out"]["x0"][b].double(), expected, rtol=1e-3, atol=1e-3)


def test_latent_guidance_gives_a_finite_loss_and_a_gradient_through_the_encoder(lab_vae):
    guidance = latent_guidance(lab_vae, use_img_loss=True)
    elevation, azimuth, distance = torch.tensor([15.0]), torch.tensor([30.0]), torch.tensor([1.8])
    rgb = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = guidance(rgb, lab_prompt_utils(), elevation, azimuth, distance,
                   c2w=look_at_origin(elevation, azimuth, distance), fovy=torch.deg2rad(torch.tensor([50.0])))
    (out["loss_sds"] + out["loss_sds_img"]).backward()
    assert torch.isfinite(out["loss_sds"]) and rgb.grad.abs().sum() > 0


@pytest.mark.parametrize("field, value, expected", [
    ("object", "teapot", "guidance.object must be one of"),
    ("num_azimuths", 0, "guidance.num_azimuths must be >= 1"),
    ("render_resolution", 30, "render_resolution must be a multiple of the VAE's downsampling factor 4"),
    ("front_bias", 0.0, "guidance.front_bias must be > 0, got 0.0"),
    ("view_leak", 1.5, r"guidance.view_leak must be in \[0, 1\], got 1.5"),
])
def test_bad_latent_guidance_settings_name_the_field(lab_vae, field, value, expected):
    with pytest.raises(ValueError, match=expected):
        latent_guidance(lab_vae, **{field: value})


def test_latent_guidance_without_the_fitted_vae_says_how_to_get_it(tmp_path):
    from threestudio_stabledreamer.guidance.base import DiffusionModelUnavailableError

    with pytest.raises(DiffusionModelUnavailableError, match="lab.latent_vae --out"):
        latent_guidance(tmp_path / "missing")


def test_reference_latents_are_the_encoder_mean_of_resized_renders(lab_vae):
    guidance = latent_guidance(lab_vae)
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    small = F.interpolate(images, (32, 32), mode="bilinear", align_corners=False)
    with torch.no_grad():
        expected = guidance.vae.encode(small * 2 - 1).latent_dist.mean * guidance.scaling_factor
    torch.testing.assert_close(guidance._encode_references(images), expected)


def test_two_stage_lab_run_scores_each_stage(lab_vae, tmp_path):
    """The lab command with --two-stage end to end at tiny settings: the config's stage 2
    runs with the latent prior after the compressed stage 1, and the run is scored at the
    end of each stage."""
    import json

    from threestudio_stabledreamer.lab.cli import main

    out = tmp_path / "lab"
    code = main([
        "--suite", "config", "--objects", "head", "--steps", "40", "--eval-every", "40", "--out", str(out),
        "--eval-resolution", "32", "--two-stage", "--lab-vae", str(lab_vae),
        "data.width=32", "data.height=32", "system.guidance.render_resolution=32",
        "system.guidance_stage2.render_resolution=32", "system.geometry.init.num_points=1000",
    ])
    assert code == 0
    (trial,) = (out / "runs").glob("stage1-s0/*")
    system = OmegaConf.load(trial / "configs" / "parsed.yaml").system
    assert system.stage2_start_step == 40
    assert system.guidance_stage2_type == "stabledreamer-lab-latent-guidance"
    assert system.guidance_stage2.pretrained_model_name_or_path == str(lab_vae)
    # stage 2 is the config's 4000 steps compressed by stage 1's factor 40 / 4000, and anneals over them
    assert OmegaConf.load(trial / "configs" / "parsed.yaml").trainer.max_steps == 80
    assert (system.guidance_stage2.anneal_start_step, system.guidance_stage2.anneal_steps) == (40, 40)
    curve = json.loads((trial / "lab-scores.json").read_text())["scores"]["curve"]
    assert [step for step, _, _ in curve] == [40, 80]
    assert all(math.isfinite(psnr) and 0.0 <= multi_face <= 1.0 for _, psnr, multi_face in curve)
    (_, stage1_psnr, stage1_multi_face), (_, final_psnr, final_multi_face) = curve
    row = (f"| stage1 | head | 0 | 40 | {stage1_psnr:.2f} dB, {stage1_multi_face:.3f} | {final_psnr:.2f} dB, "
           f"{final_multi_face:.3f} | {final_psnr - stage1_psnr:+.2f} dB |")
    assert row in (out / "results.md").read_text(encoding="utf-8")


def test_two_stage_needs_a_config_with_a_stage_2(tmp_path):
    from threestudio_stabledreamer.lab.suites import two_stage_overrides

    config = tmp_path / "config.yaml"
    config.write_text("trainer: {max_steps: 100}\nsystem: {stage2_start_step: null}\n")
    with pytest.raises(ValueError, match="needs 0 < system.stage2_start_step < trainer.max_steps, got None and 100"):
        two_stage_overrides(config, 10, 0.1, tmp_path)


@pytest.mark.parametrize("variant, expected", [
    ("two-stage", {"system.stage2_start_step": 250, "trainer.max_steps": 500,
                   "system.guidance_stage2.guidance_scale": 100.0, "system.geometry.densify_until": 375}),
    ("two-stage-cfg20", {"system.guidance_stage2.guidance_scale": 20.0}),
    ("two-stage-t0.3", {"system.guidance_stage2.max_step_percent": 0.3,
                        "system.guidance_stage2.min_step_percent": 0.02}),
    ("two-stage-res128", {"data.width": [64, 128], "data.height": [64, 128], "data.batch_size": [4, 4],
                          "data.resolution_milestones": [250],
                          "system.guidance_stage2.render_resolution": 128}),
    ("two-stage-hifa", {"system.guidance_stage2.use_img_loss": True, "system.loss.lambda_sds_img": 0.01}),
    ("two-stage-switch0.25", {"system.stage2_start_step": 125, "trainer.max_steps": 500,
                              "system.guidance.anneal_steps": 125, "system.guidance_stage2.anneal_start_step": 125,
                              "system.guidance_stage2.anneal_steps": 375}),
    ("two-stage-oracle2", {"system.guidance_stage2.oracle": True}),
    ("two-stage-densify1", {"system.geometry.densify_until": 250}),
])
def test_stage2_suite_variants_resolve_to_what_they_say(variant, expected, tmp_path):
    """Each variant's overrides, after the lab's, the compression's and the two-stage ones,
    as the launcher merges them, at 250 + 250 steps."""
    from threestudio.data.uncond import RandomCameraDataModuleConfig, RandomCameraIterableDataset
    from threestudio.utils.config import load_config, parse_structured

    from threestudio_stabledreamer.lab.cli import DEFAULT_CONFIG
    from threestudio_stabledreamer.lab.suites import (
        SUITES,
        VARIANTS,
        compressed_stage1_overrides,
        lab_overrides,
        two_stage_overrides,
    )

    assert variant in SUITES["stage2"] and VARIANTS[variant].two_stage
    compression, factor = compressed_stage1_overrides(DEFAULT_CONFIG, 250)
    cfg = load_config(str(DEFAULT_CONFIG), cli_args=[
        "system.prompt_processor.prompt=head", *lab_overrides(250, 250), *compression,
        *two_stage_overrides(DEFAULT_CONFIG, 250, factor, tmp_path), *VARIANTS[variant].overrides])
    for key, value in expected.items():
        assert OmegaConf.select(cfg, key) == value, key
    # the camera data accepts the variant's per-stage sizes (one length for every list)
    data = RandomCameraIterableDataset(parse_structured(RandomCameraDataModuleConfig, cfg.data))
    assert data.cfg.batch_size in (4, [4, 2], [4, 4])


def test_stage2_variants_need_two_stage(tmp_path):
    from threestudio_stabledreamer.lab.cli import main

    with pytest.raises(SystemExit, match=r"variants \['two-stage', .*'two-stage-cfg20'.*\] vary stage 2 and need --two-stage"):
        main(["--suite", "stage2", "--objects", "head", "--out", str(tmp_path)])
    assert not (tmp_path / "runs").exists()


def test_variants_flag_runs_the_named_variants_in_place_of_the_suites(tmp_path):
    from threestudio_stabledreamer.lab.cli import main

    with pytest.raises(SystemExit, match=r"variants \['two-stage-cfg20'\] vary stage 2 and need --two-stage"):
        main(["--variants", "two-stage-cfg20", "--objects", "house", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as error:
        main(["--variants", "two-stage-cfg7", "--out", str(tmp_path)])
    assert error.value.code == 2  # argparse: not among the variants
    assert not (tmp_path / "runs").exists()
