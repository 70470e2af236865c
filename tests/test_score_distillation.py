"""The pure-PyTorch score-distillation core, checked against formulas written out here."""

import math

import pytest
import torch

from threestudio_stabledreamer.core import score_distillation as sds


def _alphas(batch_size, generator):
    return torch.rand(batch_size, dtype=torch.float64, generator=generator) * 0.98 + 0.01


def _toy_denoiser(x_t):
    """A fixed, non-linear stand-in for a UNet's noise prediction."""
    return torch.tanh(1.3 * x_t) - 0.2 * x_t.roll(1, dims=-1)


@pytest.mark.parametrize("weighting", sds.WEIGHTINGS)
def test_reconstruction_loss_gradient_is_classic_sds_gradient(weighting):
    generator = torch.Generator().manual_seed(0)
    batch_size = 3
    x = torch.randn(
        batch_size, 4, 5, 6, dtype=torch.float64, generator=generator, requires_grad=True
    )
    noise = torch.randn(x.shape, dtype=torch.float64, generator=generator)
    alphabar = _alphas(batch_size, generator)

    x_t = sds.add_noise(x.detach(), noise, alphabar)
    eps_hat = _toy_denoiser(x_t)
    x0_hat = sds.predicted_x0(x_t, eps_hat, alphabar)
    term = sds.reconstruction_loss(x, x0_hat, sds.reconstruction_weight(alphabar, weighting))
    (grad,) = torch.autograd.grad(term.loss, x)

    expected_w = {
        "sds": 1 - alphabar,
        "uniform": torch.ones_like(alphabar),
        "fantasia3d": alphabar**0.5 * (1 - alphabar),
    }[weighting].view(-1, 1, 1, 1)
    a, s = alphabar.sqrt().view(-1, 1, 1, 1), (1 - alphabar).sqrt().view(-1, 1, 1, 1)
    independent_x_t = a * x.detach() + s * noise
    classic = expected_w * (_toy_denoiser(independent_x_t) - noise) / batch_size
    assert torch.allclose(grad, classic, rtol=1e-10, atol=1e-12)
    assert torch.allclose(term.grad, classic * batch_size, rtol=1e-10, atol=1e-12)
    assert term.num_nonfinite == 0
    assert torch.equal(term.target, x0_hat)


def test_reconstruction_loss_value_and_x0_hat():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=generator)
    noise = torch.randn(x.shape, dtype=torch.float64, generator=generator)
    alphabar = torch.tensor([0.9, 0.2], dtype=torch.float64)
    x_t = sds.add_noise(x, noise, alphabar)
    # With the true noise, one-step denoising recovers x exactly.
    assert torch.allclose(sds.predicted_x0(x_t, noise, alphabar), x, atol=1e-12)

    x0_hat = x + 0.1 * torch.randn(x.shape, dtype=torch.float64, generator=generator)
    c = torch.tensor([2.0, 0.5], dtype=torch.float64)
    term = sds.reconstruction_loss(x, x0_hat, c)
    expected = (
        0.5 * (2.0 * ((x[0] - x0_hat[0]) ** 2).sum() + 0.5 * ((x[1] - x0_hat[1]) ** 2).sum()) / 2
    )
    assert torch.allclose(term.loss, expected, rtol=1e-12)


def test_reconstruction_weight_definition():
    alphabar = torch.tensor([0.999, 0.5, 0.01], dtype=torch.float64)
    c = sds.reconstruction_weight(alphabar, "sds")
    expected = (1 - alphabar) * alphabar.sqrt() / (1 - alphabar).sqrt()
    assert torch.allclose(c, expected, rtol=1e-12)


def test_weighting_values_and_unknown_name():
    alphabar = torch.tensor([0.25, 0.64])
    assert torch.allclose(sds.sds_weight(alphabar, "sds"), torch.tensor([0.75, 0.36]))
    assert torch.allclose(sds.sds_weight(alphabar, "uniform"), torch.tensor([1.0, 1.0]))
    assert torch.allclose(
        sds.sds_weight(alphabar, "fantasia3d"), torch.tensor([0.5 * 0.75, 0.8 * 0.36])
    )
    with pytest.raises(ValueError, match="weighting_strategy.*'dreamfusion'"):
        sds.sds_weight(alphabar, "dreamfusion")


def test_classifier_free_guidance_follows_threestudio():
    eps_text = torch.tensor([1.0, -2.0, 0.5])
    eps_uncond = torch.tensor([0.5, 1.0, 0.5])
    guided = sds.classifier_free_guidance(eps_text, eps_uncond, 20.0)
    assert torch.allclose(guided, torch.tensor([1.0 + 20 * 0.5, -2.0 + 20 * -3.0, 0.5]))
    assert torch.equal(sds.classifier_free_guidance(eps_text, eps_uncond, 0.0), eps_text)
    # Same as the Ho & Salimans form with scale s + 1.
    assert torch.allclose(guided, eps_uncond + 21.0 * (eps_text - eps_uncond))


def test_v_prediction_conversion_from_definitions():
    generator = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 4, 8, 8, dtype=torch.float64, generator=generator)
    eps = torch.randn(x0.shape, dtype=torch.float64, generator=generator)
    alphabar = _alphas(3, generator)
    a, s = alphabar.sqrt().view(-1, 1, 1, 1), (1 - alphabar).sqrt().view(-1, 1, 1, 1)
    x_t = a * x0 + s * eps
    v = a * eps - s * x0  # definition of the velocity target (Salimans & Ho, 2022)
    recovered = sds.epsilon_from_v_prediction(v, x_t, alphabar)
    assert torch.allclose(recovered, eps, atol=1e-12)
    # x0_hat from the converted noise is the v-parameterisation's a_t x_t - s_t v.
    assert torch.allclose(sds.predicted_x0(x_t, recovered, alphabar), a * x_t - s * v, atol=1e-10)


def test_gradient_clipping_and_nonfinite_entries():
    x = torch.tensor([[0.0, 1.0, -1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    x0_hat = torch.tensor([[5.0, float("nan"), -1.5, float("inf")]], dtype=torch.float64)
    c = torch.tensor([2.0], dtype=torch.float64)
    term = sds.reconstruction_loss(x, x0_hat, c, grad_clip=3.0)
    (grad,) = torch.autograd.grad(term.loss, x)
    # raw c (x - x0_hat) = [-10, nan, 1, -inf] -> non-finite to 0 -> clamp to [-3, 3]
    expected = torch.tensor([[-3.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    assert term.num_nonfinite == 2
    assert torch.allclose(term.grad, expected)
    assert torch.allclose(grad, expected)
    assert torch.isfinite(term.loss)
    with pytest.raises(ValueError, match="grad_clip"):
        sds.reconstruction_loss(x, x0_hat, c, grad_clip=0.0)


def test_step_bounds_match_threestudio():
    assert sds.step_bounds(1000, 0.02, 0.98) == (20, 980)
    assert sds.step_bounds(1000, 0.0, 1.0) == (0, 999)
    with pytest.raises(ValueError, match="min_step_percent.*must not exceed"):
        sds.step_bounds(1000, 0.6, 0.5)
    with pytest.raises(ValueError, match="max_step_percent.*98"):
        sds.step_bounds(1000, 0.02, 98)


@pytest.mark.parametrize(
    "anneal, step, expected",
    [
        ("linear", 0, 980),
        ("linear", 500, 500),
        ("linear", 1000, 20),
        ("linear", 5000, 20),
        ("sqrt", 250, 500),  # 20 + 960 (1 - sqrt(0.25))
        ("sqrt", 10, round(20 + 960 * (1 - math.sqrt(0.01)))),
        ("cosine", 500, 500),
        ("cosine", 250, round(20 + 960 * 0.5 * (1 + math.cos(math.pi / 4)))),
        ("cosine", 1000, 20),
    ],
)
def test_anneal_schedules(anneal, step, expected):
    assert sds.timestep_range(step, 1000, 0.02, 0.98, anneal=anneal, anneal_steps=1000) == (
        expected,
        expected,
    )


def test_anneal_start_step_and_jitter():
    # Progress counts from anneal_start_step: step 1500 is halfway for start 1000.
    assert sds.timestep_range(1500, 1000, 0.02, 0.98, "linear", 1000, anneal_start_step=1000) == (
        500,
        500,
    )
    assert sds.timestep_range(200, 1000, 0.02, 0.98, "linear", 1000, anneal_start_step=1000) == (
        980,
        980,
    )
    # A jitter window of +-50 steps, clipped to [t_min, t_max].
    assert sds.timestep_range(500, 1000, 0.02, 0.98, "linear", 1000, jitter_percent=0.05) == (
        450,
        550,
    )
    assert sds.timestep_range(0, 1000, 0.02, 0.98, "linear", 1000, jitter_percent=0.05) == (
        930,
        980,
    )
    assert sds.timestep_range(1000, 1000, 0.02, 0.98, "linear", 1000, jitter_percent=0.05) == (
        20,
        70,
    )


def test_schedule_errors_name_the_field():
    with pytest.raises(ValueError, match="anneal_steps"):
        sds.timestep_range(0, 1000, 0.02, 0.98, "sqrt", 0)
    with pytest.raises(ValueError, match="anneal must be one of.*'exp'"):
        sds.timestep_range(0, 1000, 0.02, 0.98, "exp", 100)
    with pytest.raises(ValueError, match="anneal_jitter_percent"):
        sds.timestep_range(0, 1000, 0.02, 0.98, "none", 0, jitter_percent=0.1)


def test_sample_timesteps_stay_in_inclusive_range():
    generator = torch.Generator().manual_seed(3)
    t = sds.sample_timesteps(20, 23, 400, torch.device("cpu"), generator)
    assert t.dtype == torch.long and t.shape == (400,)
    assert set(t.tolist()) == {20, 21, 22, 23}
    assert torch.equal(
        sds.sample_timesteps(500, 500, 3, torch.device("cpu")), torch.full((3,), 500)
    )
