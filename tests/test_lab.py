"""The known-answer lab: exact denoiser, scores, guidance wiring and an oracle run through the launcher."""
import csv
import math

import pytest
import torch
from omegaconf import OmegaConf

from threestudio_stabledreamer.core import score_distillation as sds
from threestudio_stabledreamer.lab.denoiser import AnalyticDenoiser, posterior_mean, view_log_prior
from threestudio_stabledreamer.lab.objects import OBJECTS, janus, make_object
from threestudio_stabledreamer.lab.render import look_at_origin, render_object, turn_about_z
from threestudio_stabledreamer.lab.scores import EvalCameras, GroundTruthViews, score_object
from threestudio_stabledreamer.tiny_models import if_stage1_scheduler

SMALL_EVAL = EvalCameras(elevations=(15.0,), num_azimuths=8, resolution=32)


def brute_force_posterior_mean(x_t, references, log_prior, a_t, s_t):
    """E[x0 | x_t] by Bayes' rule with torch.distributions, in float64, one sample at a time."""
    means = []
    for x, ys, log_pi, a, s in zip(x_t.double(), references.double(), log_prior.double(), a_t.double(), s_t.double()):
        log_joint = torch.stack([
            log_p + torch.distributions.Normal(a * y, s).log_prob(x).sum() for y, log_p in zip(ys, log_pi)
        ])
        posterior = torch.exp(log_joint - torch.logsumexp(log_joint, 0))
        means.append((posterior.reshape(-1, *([1] * x.dim())) * ys).sum(0))
    return torch.stack(means)


def test_posterior_mean_is_the_exact_bayes_posterior_mean():
    generator = torch.Generator().manual_seed(0)
    references = torch.rand(3, 5, 3, 4, 4, generator=generator, dtype=torch.float64) * 2 - 1
    log_prior = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    log_prior[1, 2] = -math.inf  # an excluded reference
    alphas = torch.tensor([0.9, 0.5, 0.05], dtype=torch.float64)
    a_t, s_t = alphas.sqrt(), (1 - alphas).sqrt()
    x_t = torch.randn(3, 3, 4, 4, generator=generator, dtype=torch.float64)
    mean, weights = posterior_mean(x_t, references, log_prior, a_t, s_t)
    torch.testing.assert_close(mean, brute_force_posterior_mean(x_t, references, log_prior, a_t, s_t))
    torch.testing.assert_close(weights.sum(1), torch.ones(3, dtype=torch.float64))
    assert weights[1, 2] == 0


def test_view_prior_follows_bias_and_leak():
    bins = torch.tensor([[0, 1, 2, 1]])  # side, front, back, front
    front_bias, leak = 4.0, 0.25
    conditional = view_log_prior(bins, torch.tensor([2]), front_index=1, front_bias=front_bias, leak=leak).exp()
    expected = torch.tensor([[leak, front_bias * leak, 1.0, front_bias * leak]])
    torch.testing.assert_close(conditional, expected)
    unconditional = view_log_prior(bins, torch.tensor([-1]), front_index=1, front_bias=front_bias, leak=leak).exp()
    torch.testing.assert_close(unconditional, torch.tensor([[1.0, front_bias, 1.0, front_bias]]))


def test_denoiser_noise_gives_the_posterior_mean_through_the_guidance_maths():
    """eps_hat from the UNet-shaped denoiser, turned into x0_hat by the guidance's own
    ``predicted_x0`` after classifier-free guidance, is the posterior mean of each prior."""
    generator = torch.Generator().manual_seed(1)
    alphas_cumprod = if_stage1_scheduler().alphas_cumprod
    denoiser = AnalyticDenoiser(alphas_cumprod, front_bias=3.0, leak=0.1)
    references = torch.rand(2, 4, 3, 8, 8, generator=generator) * 2 - 1
    bins = torch.tensor([[0, 1, 2, 3], [1, 1, 2, 0]])
    denoiser.set_references(references, bins, front_index=1)
    x_t = torch.randn(2, 3, 8, 8, generator=generator)
    t = torch.tensor([700, 300])
    embeddings = torch.zeros(4, 1, 4)
    embeddings[0, 0, 2] = embeddings[1, 0, 0] = 1.0  # cond rows: back, side; uncond rows: zeros
    eps = denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=embeddings).sample
    alphas = alphas_cumprod[t]
    x0_cond = sds.predicted_x0(x_t, eps[:2], alphas)
    x0_uncond = sds.predicted_x0(x_t, eps[2:], alphas)
    a_t, s_t = alphas.sqrt(), (1 - alphas).sqrt()
    cond_prior = view_log_prior(bins, torch.tensor([2, 0]), 1, 3.0, 0.1)
    uncond_prior = view_log_prior(bins, torch.tensor([-1, -1]), 1, 3.0, 0.1)
    torch.testing.assert_close(x0_cond, brute_force_posterior_mean(x_t, references, cond_prior, a_t, s_t).float())
    torch.testing.assert_close(x0_uncond, brute_force_posterior_mean(x_t, references, uncond_prior, a_t, s_t).float())
    # guidance is linear in eps, so x0 of the guided eps is x0_c + s (x0_c - x0_u)
    guided = sds.classifier_free_guidance(eps[:2], eps[2:], 20.0)
    torch.testing.assert_close(sds.predicted_x0(x_t, guided, alphas), x0_cond + 20.0 * (x0_cond - x0_uncond),
                               rtol=1e-4, atol=1e-3)


def test_denoiser_rejects_text_encoder_embeddings():
    denoiser = AnalyticDenoiser(if_stage1_scheduler().alphas_cumprod)
    denoiser.set_references(torch.zeros(1, 2, 3, 4, 4), torch.zeros(1, 2, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="stabledreamer-lab-prompt-processor"):
        denoiser(torch.zeros(2, 3, 4, 4), torch.tensor([10, 10]), encoder_hidden_states=torch.zeros(2, 77, 4096))


def test_turning_the_camera_shows_the_object_from_the_other_azimuth():
    obj = make_object("duck")
    fovy = torch.full((1,), math.radians(45.0))
    c2w = look_at_origin(torch.tensor([20.0]), torch.tensor([10.0]), torch.tensor([1.75]))
    turned = turn_about_z(c2w, torch.tensor([0.0, 90.0, 200.0]))
    assert turned.shape == (1, 3, 4, 4)
    expected = look_at_origin(torch.full((3,), 20.0), torch.tensor([10.0, 100.0, 210.0]), torch.full((3,), 1.75))
    torch.testing.assert_close(turned[0], expected, atol=1e-5, rtol=1e-5)
    a = render_object(obj, turned[0, 1:2], fovy, 32, 32).rgb
    b = render_object(obj, expected[1:2], fovy, 32, 32).rgb
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_objects_have_a_distinct_front(name):
    obj = make_object(name)
    assert obj.front_feature.any()
    assert (obj.means[obj.front_feature, 0] > 0).all()  # features sit on the front (+x) half
    assert obj.means.norm(dim=-1).max() < 0.6


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_multi_face_score_separates_the_true_object_from_its_janus(name):
    obj = make_object(name)
    gt = GroundTruthViews.of(obj, SMALL_EVAL)
    truth = score_object(obj, gt, SMALL_EVAL)
    assert truth["multi_face"] == 0.0
    assert truth["psnr"] > 100 and truth["iou"] == 1.0 and truth["ssim"] > 0.999
    two_faced = score_object(janus(obj), gt, SMALL_EVAL)
    assert two_faced["multi_face"] > 0.6
    assert min(two_faced["per_view_psnr"]) < 30  # the back views are wrong
    assert two_faced["psnr"] < truth["psnr"]


def test_trial_scores_are_kept_until_their_inputs_change(tmp_path, monkeypatch):
    from threestudio_stabledreamer.core.ply import write_gaussian_ply
    from threestudio_stabledreamer.lab import evaluate

    generator = torch.Generator().manual_seed(3)
    params = {
        "means": torch.randn(50, 3, generator=generator) * 0.2, "log_scales": torch.full((50, 3), -3.0),
        "rotations": torch.randn(50, 4, generator=generator), "opacity_logits": torch.zeros(50, 1),
        "sh_dc": torch.randn(50, 1, 3, generator=generator) * 0.3, "sh_rest": torch.zeros(50, 0, 3),
    }
    trial = tmp_path / "trial"
    ply = trial / "save" / "it20-export" / "model.ply"
    write_gaussian_ply(ply, params)
    (trial / "ckpts").mkdir()
    torch.save({"state_dict": {f"geometry._{k}": v for k, v in params.items()}}, trial / "ckpts" / "epoch=0-step=10.ckpt")
    gt = GroundTruthViews.of(make_object("duck"), SMALL_EVAL)
    renders = []
    score_params = evaluate.score_params
    monkeypatch.setattr(evaluate, "score_params", lambda *args: renders.append(1) or score_params(*args))

    first = evaluate.score_trial(trial, gt, SMALL_EVAL)
    assert len(renders) == 2 and first["step"] == 20 and [point[0] for point in first["curve"]] == [10, 20]
    assert evaluate.score_trial(trial, gt, SMALL_EVAL) == first and len(renders) == 2
    four_views = EvalCameras(elevations=(15.0,), num_azimuths=4, resolution=32)
    evaluate.score_trial(trial, GroundTruthViews.of(make_object("duck"), four_views), four_views)
    assert len(renders) == 4  # other cameras
    params["means"] += 0.05
    write_gaussian_ply(ply, params)
    moved = evaluate.score_trial(trial, gt, SMALL_EVAL)
    assert len(renders) == 6 and moved["psnr"] != first["psnr"]


def test_compressed_stage1_keeps_each_event_at_its_fraction_of_stage_1(tmp_path):
    from threestudio_stabledreamer.lab.suites import compressed_stage1_overrides

    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer: {max_steps: 6000}\n"
        "system:\n"
        "  stage2_start_step: 3000\n"
        "  geometry: {sh_degree: 0, densify_from: 300, densify_interval: 100, densify_until: 4500,\n"
        "             opacity_reset_interval: 0, lr_means: [0, 1.e-3, 1.e-5, '${trainer.max_steps}'],\n"
        "             lr_scales: 0.005, lr_opacity: [300, 0.1, 0.01, 3300]}\n"
    )
    overrides, factor = compressed_stage1_overrides(config, 750)
    assert factor == 0.25
    merged = OmegaConf.merge(OmegaConf.load(config), OmegaConf.from_dotlist(overrides)).system.geometry
    assert (merged.densify_from, merged.densify_interval, merged.densify_until) == (75, 25, 1125)
    assert merged.opacity_reset_interval == 0  # off stays off
    assert list(merged.lr_means) == [0, 1e-3, 1e-5, 1500]  # the interpolated end step, scaled
    assert list(merged.lr_opacity) == [75, 0.1, 0.01, 825]
    assert merged.lr_scales == 0.005
    # stage 1 is the whole run when there is no stage 2; tiny intervals stay >= 1
    config.write_text(config.read_text().replace("stage2_start_step: 3000", "stage2_start_step: null"))
    overrides, factor = compressed_stage1_overrides(config, 60)
    assert factor == 0.01 and "system.geometry.densify_interval=1" in overrides


@pytest.mark.parametrize("schedule", [
    [1e-3, 1e-5, 8000], [0, 1e-3, 1e-5, 8000], [400, 1.0, 0.5, 2000, 0.1, 6000], [0, 1.0, 0.5, 3.0],
])
def test_scaled_schedule_gives_threestudio_the_same_values_at_the_scaled_steps(schedule):
    from threestudio.utils.misc import C

    from threestudio_stabledreamer.lab.suites import scaled_schedule

    scaled = OmegaConf.create(scaled_schedule(schedule, 0.25))
    for step in (0, 400, 1000, 2000, 4000, 6000, 8000):
        expected = C(OmegaConf.create(schedule), 0, step, interpolation="exp")
        assert C(scaled, 0, step // 4, interpolation="exp") == pytest.approx(expected)
    with pytest.raises(ValueError, match="3, 4 or an even number"):
        scaled_schedule([0, 1.0, 0.5, 300, 0.1], 0.25)


def test_compressed_stage1_names_a_step_count_the_config_lacks(tmp_path):
    from threestudio_stabledreamer.lab.suites import compressed_stage1_overrides

    config = tmp_path / "config.yaml"
    config.write_text("trainer: {max_steps: 100}\nsystem: {geometry: {densify_from: 10, densify_interval: 5}}\n")
    with pytest.raises(ValueError, match="system.geometry.densify_until must be set"):
        compressed_stage1_overrides(config, 50)


def test_lab_command_oracle_run_rebuilds_the_object(tmp_path):
    """The lab command end to end (launcher, export, scoring, tables, plots) on a short,
    small oracle run: multi-view reconstruction must reach a PSNR the initial ball does not."""
    from threestudio_stabledreamer.lab.cli import main

    out = tmp_path / "lab"
    code = main([
        "--suite", "oracle", "--objects", "head", "--steps", "150", "--eval-every", "75", "--out", str(out),
        "--eval-resolution", "32",
        "data.width=32", "data.height=32", "system.guidance.render_resolution=32",
        "system.geometry.init.num_points=1500", "system.geometry.densify_from=50",
        "system.geometry.densify_interval=50", "system.geometry.densify_until=100",
    ])
    assert code == 0
    (parsed,) = (out / "runs").glob("oracle-s0/*/configs/parsed.yaml")
    geometry = OmegaConf.load(parsed).system.geometry
    assert geometry.densify_until == 100  # the user's override wins over the oracle's half of the run
    assert list(geometry.lr_means)[3] == round(8000 * 150 / 4000)  # compressed stage 1
    with open(out / "runs.csv") as stream:
        (row,) = list(csv.DictReader(stream))
    assert row["variant"] == "oracle" and row["object"] == "head" and row["step"] == "150"
    assert float(row["psnr"]) > 21.0  # the initial grey ball scores about 14.6 dB
    assert float(row["iou"]) > 0.85
    for name in ("results.md", "results.csv", "score_vs_step.png", "per_view_psnr.png"):
        assert (out / name).is_file()
    assert "| oracle | 1 |" in (out / "results.md").read_text()
