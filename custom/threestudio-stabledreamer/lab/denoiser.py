"""An exact diffusion denoiser for a finite set of reference images.

If x0 takes the values y_1..y_K with prior probabilities pi_1..pi_K and
x_t = a_t x0 + s_t eps (eps ~ N(0, I); a_t = sqrt(alphabar_t), s_t = sqrt(1 - alphabar_t),
as ``core.score_distillation``), Bayes' rule gives the posterior mean (the optimal
denoiser, the network a diffusion model approximates):

    E[x0 | x_t] = sum_k w_k y_k,   w = softmax_k(log pi_k - ||x_t - a_t y_k||^2 / (2 s_t^2)).

``AnalyticDenoiser`` stands in for the UNet: called like a diffusers UNet
(``sample``, ``timestep``, ``encoder_hidden_states``), it returns the noise
eps_hat = (x_t - a_t E[x0 | x_t]) / s_t, so x0_hat = (x_t - s_t eps_hat) / a_t computed
by the guidance is exactly the posterior mean.

Conditioning mimics threestudio's view-dependent prompts. Each reference carries the
view bin it shows (side / front / back / overhead: an index into the prompt processor's
``directions``). An embedding row that is one-hot on bin d (the prompt "..., d view")
conditions the prior on d; an all-zero row (the negative prompt, or the prompt without a
view) leaves it unconditional. The prior is

    pi_k  proportional to  front_bias^[bin_k = front] * ((1 - leak) [bin_k = d] + leak)

for a conditional row, and to ``front_bias^[bin_k = front]`` for an unconditional one:
``front_bias`` > 1 is an image prior that has seen more front views, ``leak`` > 0 a view
prompt that the model only partly obeys. Both are biases of real image priors that cause
multi-face (Janus) objects.
"""
from typing import NamedTuple, Optional

import torch
import torch.nn as nn


def posterior_mean(x_t: torch.Tensor, references: torch.Tensor, log_prior: torch.Tensor,
                   a_t: torch.Tensor, s_t: torch.Tensor) -> tuple:
    """E[x0 | x_t] [B,...] and the posterior weights [B,K].

    x_t [B,...]; references [B,K,...] (the y_k of each sample); log_prior [B,K]
    (unnormalised log pi_k, -inf for excluded references); a_t, s_t [B].
    """
    if references.shape[0] != x_t.shape[0] or references.shape[2:] != x_t.shape[1:]:
        raise ValueError(
            f"references must be [B,K,*x_t.shape[1:]] for x_t {tuple(x_t.shape)}, got {tuple(references.shape)}"
        )
    if log_prior.shape != references.shape[:2]:
        raise ValueError(f"log_prior must be [B,K] = {tuple(references.shape[:2])}, got {tuple(log_prior.shape)}")
    a = a_t.reshape(-1, 1, *([1] * (x_t.dim() - 1)))
    squared = ((x_t[:, None] - a * references) ** 2).flatten(2).sum(-1)
    logits = log_prior - squared / (2.0 * s_t.reshape(-1, 1) ** 2)
    weights = torch.softmax(logits, dim=1)
    mean = torch.einsum("bk,bk...->b...", weights, references)
    return mean, weights


def view_log_prior(reference_bins: torch.Tensor, condition: torch.Tensor, front_index: int,
                   front_bias: float, leak: float) -> torch.Tensor:
    """log pi [B,K] (see the module docstring).

    reference_bins [B,K] int: the view bin of each reference; condition [B] int: the
    prompt's bin, or -1 for no view condition.
    """
    log_prior = torch.log(torch.as_tensor(front_bias, dtype=torch.float32)) * (reference_bins == front_index)
    same_bin = reference_bins == condition[:, None]
    conditional = torch.log((1.0 - leak) * same_bin.float() + leak)
    return log_prior + torch.where(condition[:, None] >= 0, conditional, torch.zeros_like(conditional))


class DenoiserOutput(NamedTuple):
    """As diffusers' ``UNet2DConditionOutput``: the prediction is ``sample``."""

    sample: torch.Tensor


class AnalyticDenoiser(nn.Module):
    """The posterior-mean denoiser over per-view references, with a UNet's calling convention.

    ``set_references(references [B,K,C,H,W], bins [B,K], front_index)`` gives each of the B
    views of the current batch its candidate images and their view bins (``front_index``:
    the front bin); the model input of a guidance call is [cond; uncond]
    = 2B rows, row i using the references of view ``i mod B``. ``alphas_cumprod`` [T] is the
    diffusion schedule (alphabar_t per integer timestep).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, front_bias: float = 1.0, leak: float = 0.0):
        super().__init__()
        if not front_bias > 0:
            raise ValueError(f"front_bias must be > 0, got {front_bias}")
        if not 0.0 <= leak <= 1.0:
            raise ValueError(f"leak must be in [0, 1], got {leak}")
        self.register_buffer("alphas_cumprod", alphas_cumprod.float().clone(), persistent=False)
        self.front_index = -1
        self.front_bias = front_bias
        self.leak = leak
        self.references: Optional[torch.Tensor] = None
        self.reference_bins: Optional[torch.Tensor] = None
        self.last_weights: Optional[torch.Tensor] = None

    def set_references(self, references: torch.Tensor, bins: torch.Tensor, front_index: int) -> None:
        if references.dim() != 5 or bins.shape != references.shape[:2]:
            raise ValueError(
                f"references must be [B,K,C,H,W] with bins [B,K], got {tuple(references.shape)} and {tuple(bins.shape)}"
            )
        self.references, self.reference_bins, self.front_index = references, bins, front_index

    def clear_references(self) -> None:
        self.references = self.reference_bins = None

    @staticmethod
    def conditions(encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """Prompt bins [R] from one-hot embeddings [R,1,num_bins]; -1 for all-zero rows."""
        if encoder_hidden_states.dim() != 3 or encoder_hidden_states.shape[1] != 1:
            raise ValueError(
                "the lab denoiser reads view embeddings [R,1,num_bins] (one-hot view bin or zeros) from "
                f"stabledreamer-lab-prompt-processor, got shape {tuple(encoder_hidden_states.shape)}"
            )
        rows = encoder_hidden_states[:, 0]
        return torch.where(rows.abs().sum(-1) > 0, rows.argmax(-1), torch.full_like(rows[:, 0], -1).long())

    @torch.no_grad()
    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> DenoiserOutput:
        if self.references is None:
            raise RuntimeError("AnalyticDenoiser: set_references must be called before each guidance call")
        views = self.references.shape[0]
        if sample.shape[0] % views:
            raise ValueError(f"model input of {sample.shape[0]} rows is not a multiple of the {views} views")
        repeat = sample.shape[0] // views
        references = self.references.repeat(repeat, 1, 1, 1, 1).to(sample)
        bins = self.reference_bins.repeat(repeat, 1)
        condition = self.conditions(encoder_hidden_states)
        log_prior = view_log_prior(bins, condition, self.front_index, self.front_bias, self.leak).to(sample)
        alphas = self.alphas_cumprod[timestep.long()].to(sample)
        a_t, s_t = alphas.sqrt(), (1.0 - alphas).sqrt()
        mean, self.last_weights = posterior_mean(sample, references, log_prior, a_t, s_t)
        shape = (-1, *([1] * (sample.dim() - 1)))
        return DenoiserOutput((sample - a_t.reshape(shape) * mean) / s_t.reshape(shape))
