"""Score distillation sampling (SDS) written as a reconstruction loss, and its noise schedule.

Conventions. ``alphas_cumprod`` is the diffusion model's alphabar_t, indexed by the integer
timestep t in [0, T-1] (T = ``num_train_timesteps``, 1000 for DeepFloyd IF and Stable
Diffusion). With a_t = sqrt(alphabar_t) and s_t = sqrt(1 - alphabar_t), a clean sample x
(pixels in [-1, 1] for DeepFloyd IF, scaled VAE latents for Stable Diffusion) is noised as
x_t = a_t x + s_t eps. Per-sample quantities are tensors of shape [B] and broadcast over
the remaining dimensions of x.

The reconstruction view (StableDreamer). The one-step denoised estimate
x0_hat = (x_t - s_t eps_hat) / a_t satisfies x - x0_hat = (s_t / a_t)(eps_hat - eps), so

    L = 0.5 * c(t) * ||x - stopgrad(x0_hat)||^2 / B,   c(t) = w(t) a_t / s_t,

has dL/dx = w(t)(eps_hat - eps) / B: exactly the classic SDS gradient (with threestudio's
averaging over the batch), while x0_hat is a pseudo ground truth one can look at.

Noise-level schedule. The StableDreamer paper states that annealing the diffusion noise
level during training (high noise first, lower later), which its x0_hat visualisation
motivates, reduces multi-face (Janus) geometry; it does not publish the schedule. We offer
threestudio's uniform sampling (``none``) and three deterministic decays from t_max to
t_min over ``anneal_steps``: ``linear`` (as DreamGaussian), ``sqrt`` (HiFA's,
t = t_min + (t_max - t_min)(1 - sqrt(progress)), which leaves high noise levels quickly and
spends most steps at low noise refining detail) and ``cosine`` (slow at both ends). The
StableDreamer configurations use ``sqrt``, the published schedule that was shown to work
for SDS, with an optional jitter window around the deterministic t so that neighbouring
noise levels are still visited.
"""

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

WEIGHTINGS = ("sds", "uniform", "fantasia3d")
ANNEAL_MODES = ("none", "linear", "sqrt", "cosine")
PREDICTION_TYPES = ("epsilon", "v_prediction")


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape [B] to [B, 1, ..., 1] so that it broadcasts against ``like`` [B, ...]."""
    return values.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def signal_and_noise_scales(alphas_cumprod_t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(a_t, s_t) = (sqrt(alphabar_t), sqrt(1 - alphabar_t)), each [B]."""
    return alphas_cumprod_t.sqrt(), (1.0 - alphas_cumprod_t).sqrt()


def sds_weight(alphas_cumprod_t: torch.Tensor, weighting: str) -> torch.Tensor:
    """SDS weighting w(t) [B] as in threestudio.

    ``sds``: 1 - alphabar_t (DreamFusion); ``uniform``: 1; ``fantasia3d``:
    alphabar_t^0.5 (1 - alphabar_t).
    """
    if weighting == "sds":
        return 1.0 - alphas_cumprod_t
    if weighting == "uniform":
        return torch.ones_like(alphas_cumprod_t)
    if weighting == "fantasia3d":
        return alphas_cumprod_t.sqrt() * (1.0 - alphas_cumprod_t)
    raise ValueError(f"weighting_strategy must be one of {WEIGHTINGS}, got {weighting!r}")


def reconstruction_weight(alphas_cumprod_t: torch.Tensor, weighting: str) -> torch.Tensor:
    """c(t) = w(t) a_t / s_t [B], the weight that turns the reconstruction loss into SDS."""
    a_t, s_t = signal_and_noise_scales(alphas_cumprod_t)
    return sds_weight(alphas_cumprod_t, weighting) * a_t / s_t


def classifier_free_guidance(
    eps_text: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float
) -> torch.Tensor:
    """threestudio's classifier-free guidance: eps_text + s (eps_text - eps_uncond).

    This equals eps_uncond + (s + 1)(eps_text - eps_uncond), i.e. the usual form with scale
    s + 1; using threestudio's form keeps its guidance scales (20 for DeepFloyd IF, 100 for
    Stable Diffusion) meaning the same here.
    """
    return eps_text + guidance_scale * (eps_text - eps_uncond)


def perpendicular_component(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The part of each sample of x [B, ...] orthogonal to the same sample of y [B, ...].

    x - (<x, y> / max(<y, y>, 1e-6)) y, with inner products over all non-batch dimensions
    (threestudio's floor on <y, y> keeps a zero y from dividing by zero).
    """
    dims = tuple(range(1, x.dim()))
    projection = (x * y).sum(dim=dims) / (y * y).sum(dim=dims).clamp_min(1e-6)
    return x - _per_sample(projection, x) * y


def perp_neg_guidance(
    eps_text: torch.Tensor,
    eps_uncond: torch.Tensor,
    eps_negative: torch.Tensor,
    negative_weights: torch.Tensor,
    guidance_scale: float,
) -> torch.Tensor:
    """Perp-Neg (Armandpour et al., arXiv 2304.04968) guided noise, as threestudio computes it.

    ``eps_text``, ``eps_uncond`` [B, ...]; ``eps_negative`` [B, K, ...], the predictions
    for the K negative (other-view) prompts of each sample; ``negative_weights`` [B, K],
    the prompt processor's weights (already negative: threestudio's
    ``get_text_embeddings_perp_neg``). With e_pos = eps_text - eps_uncond and
    e_k = eps_negative_k - eps_uncond,

        eps_hat = eps_uncond + s (e_pos + sum_k w_k perp(e_k, e_pos)),

    where perp removes the component along e_pos, so a negative view prompt only pushes
    away from what the positive prompt does not already ask for. Note the scale: this is
    the usual form eps_uncond + s (...), as threestudio's Perp-Neg branch uses it, not
    threestudio's plain form of ``classifier_free_guidance`` (which equals scale s + 1);
    the same ``guidance_scale`` therefore guides slightly less with Perp-Neg, exactly as
    in threestudio.
    """
    e_pos = eps_text - eps_uncond
    accumulated = torch.zeros_like(e_pos)
    for k in range(eps_negative.shape[1]):
        e_k = eps_negative[:, k] - eps_uncond
        accumulated = accumulated + _per_sample(
            negative_weights[:, k], e_pos
        ) * perpendicular_component(e_k, e_pos)
    return eps_uncond + guidance_scale * (e_pos + accumulated)


def vsd_target(
    x: torch.Tensor, x0_pretrained: torch.Tensor, x0_lora: torch.Tensor
) -> torch.Tensor:
    """Reconstruction target of variational score distillation (ProlificDreamer).

    VSD's gradient is w(t)(eps_pretrained - eps_lora), the pretrained model's guided noise
    against that of the LoRA model fitted to the renders. Both read as denoised estimates
    (``predicted_x0``) of the same x_t: x0_lora - x0_pretrained = (s_t / a_t)(eps_pretrained
    - eps_lora). So with the target x - (x0_lora - x0_pretrained), the reconstruction loss
    with weight c(t) = w(t) a_t / s_t has exactly the VSD gradient: the render is pulled
    towards what the pretrained model sees in x_t, away from what the model of the current
    renders sees. Were the LoRA model to predict the added noise exactly (x0_lora = x), the
    target would be x0_pretrained and the loss SDS's reconstruction loss.
    """
    return x.detach() - (x0_lora - x0_pretrained)


def add_noise(x: torch.Tensor, noise: torch.Tensor, alphas_cumprod_t: torch.Tensor) -> torch.Tensor:
    """x_t = a_t x + s_t eps."""
    a_t, s_t = signal_and_noise_scales(alphas_cumprod_t)
    return _per_sample(a_t, x) * x + _per_sample(s_t, x) * noise


def epsilon_from_v_prediction(
    v: torch.Tensor, x_t: torch.Tensor, alphas_cumprod_t: torch.Tensor
) -> torch.Tensor:
    """Noise eps from a v-prediction: with v = a_t eps - s_t x, eps = a_t v + s_t x_t."""
    a_t, s_t = signal_and_noise_scales(alphas_cumprod_t)
    return _per_sample(a_t, x_t) * v + _per_sample(s_t, x_t) * x_t


def predicted_x0(
    x_t: torch.Tensor, eps_hat: torch.Tensor, alphas_cumprod_t: torch.Tensor
) -> torch.Tensor:
    """One-step denoised estimate x0_hat = (x_t - s_t eps_hat) / a_t."""
    a_t, s_t = signal_and_noise_scales(alphas_cumprod_t)
    return (x_t - _per_sample(s_t, x_t) * eps_hat) / _per_sample(a_t, x_t)


@dataclass
class ReconstructionTerm:
    """A reconstruction loss with the per-element gradient it produces.

    ``loss``: scalar, differentiable w.r.t. x. ``grad``: B * dloss/dx (detached), i.e. the
    SDS gradient after non-finite removal and clipping. ``target``: the (detached) pseudo
    ground truth actually used. ``num_nonfinite``: entries of the gradient that were not
    finite and were set to zero (a 0-d integer tensor on x's device).
    """

    loss: torch.Tensor
    grad: torch.Tensor
    target: torch.Tensor
    num_nonfinite: torch.Tensor


def reconstruction_loss(
    x: torch.Tensor,
    x0_hat: torch.Tensor,
    weight: torch.Tensor,
    grad_clip: Optional[float] = None,
) -> ReconstructionTerm:
    """0.5 * c ||x - stopgrad(x0_hat)||^2 summed over elements and divided by B.

    ``weight`` is c [B]. The per-element gradient g = c (x - x0_hat) has its non-finite
    entries set to zero (counted) and, if ``grad_clip`` is given, is clamped to
    [-grad_clip, grad_clip] (threestudio's element-wise clipping). With clipping the target
    is x - g / c so that the loss still has gradient g / B; without, it is x0_hat where g
    is finite and x where it is not.
    """
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be positive or None, got {grad_clip!r}")
    batch_size = x.shape[0]
    c = _per_sample(weight, x)
    x_detached = x.detach()
    target = x0_hat.detach()
    grad = c * (x_detached - target)
    finite = torch.isfinite(grad)
    # Counted and replaced on the device, without branching on the data: no host
    # synchronisation in the per-step path. Where an entry is not finite its gradient is
    # 0 and its target is x itself.
    num_nonfinite = finite.numel() - finite.sum()
    grad = torch.where(finite, grad, torch.zeros_like(grad))
    if grad_clip is not None:
        grad = grad.clamp(-grad_clip, grad_clip)
        target = x_detached - grad / c
    else:
        target = torch.where(finite, target, x_detached)
    loss = 0.5 * (c * (x - target) ** 2).sum() / batch_size
    return ReconstructionTerm(loss=loss, grad=grad, target=target, num_nonfinite=num_nonfinite)


def step_bounds(
    num_train_timesteps: int, min_step_percent: float, max_step_percent: float
) -> Tuple[int, int]:
    """Integer timesteps (int(T * min_step_percent), int(T * max_step_percent)), as threestudio.

    The "percents" are fractions of T in [0, 1].
    """
    for name, value in (
        ("min_step_percent", min_step_percent),
        ("max_step_percent", max_step_percent),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a fraction of the timesteps in [0, 1], got {value!r}")
    if min_step_percent > max_step_percent:
        raise ValueError(
            f"min_step_percent ({min_step_percent}) must not exceed max_step_percent ({max_step_percent})"
        )
    max_step = min(int(num_train_timesteps * max_step_percent), num_train_timesteps - 1)
    min_step = min(int(num_train_timesteps * min_step_percent), max_step)
    return min_step, max_step


def anneal_fraction(progress: float, anneal: str) -> float:
    """Fraction f in [0, 1] of the way from t_min (0) to t_max (1) at ``progress`` in [0, 1]."""
    if anneal == "linear":
        return 1.0 - progress
    if anneal == "sqrt":
        return 1.0 - math.sqrt(progress)
    if anneal == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"anneal must be one of {ANNEAL_MODES[1:]} here, got {anneal!r}")


def timestep_range(
    global_step: int,
    num_train_timesteps: int,
    min_step_percent: float,
    max_step_percent: float,
    anneal: str = "none",
    anneal_steps: int = 0,
    anneal_start_step: int = 0,
    jitter_percent: float = 0.0,
) -> Tuple[int, int]:
    """Inclusive integer range [lo, hi] from which timesteps are drawn uniformly at a step.

    ``none``: threestudio's [t_min, t_max] = ``step_bounds``. Otherwise the deterministic
    t = round(t_min + (t_max - t_min) f(progress)) with progress =
    clamp((global_step - anneal_start_step) / anneal_steps, 0, 1) and f from
    ``anneal_fraction``; with ``jitter_percent`` > 0 the range is t +- round(jitter_percent T)
    clipped to [t_min, t_max], else lo = hi = t. ``min_step_percent`` and
    ``max_step_percent`` are the values at this step (schedules already evaluated).
    """
    if anneal not in ANNEAL_MODES:
        raise ValueError(f"anneal must be one of {ANNEAL_MODES}, got {anneal!r}")
    if not 0.0 <= jitter_percent <= 1.0:
        raise ValueError(f"anneal_jitter_percent must be in [0, 1], got {jitter_percent!r}")
    min_step, max_step = step_bounds(num_train_timesteps, min_step_percent, max_step_percent)
    if anneal == "none":
        if jitter_percent > 0:
            raise ValueError("anneal_jitter_percent > 0 needs an anneal mode other than 'none'")
        return min_step, max_step
    if anneal_steps <= 0:
        raise ValueError(
            f"anneal_steps must be positive with anneal={anneal!r}, got {anneal_steps!r}"
        )
    progress = min(max((global_step - anneal_start_step) / anneal_steps, 0.0), 1.0)
    t = int(round(min_step + (max_step - min_step) * anneal_fraction(progress, anneal)))
    half_width = int(round(jitter_percent * num_train_timesteps))
    return max(min_step, t - half_width), min(max_step, t + half_width)


def sample_timesteps(
    lo: int,
    hi: int,
    batch_size: int,
    device: torch.device,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """B integer timesteps [B] (int64) drawn uniformly from the inclusive range [lo, hi]."""
    return torch.randint(
        lo, hi + 1, (batch_size,), dtype=torch.long, device=device, generator=generator
    )
