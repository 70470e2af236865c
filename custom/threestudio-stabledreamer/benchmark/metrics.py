"""CLIP metrics for text-to-3D comparisons: CLIP score and CLIP R-precision.

Conventions
- Embeddings are compared by cosine similarity (each embedding is L2-normalised first), a
  number in [-1, 1]; nothing is rescaled (no x100, no CLIPScore's 2.5 * max(cos, 0)).
- CLIP score of a run: the mean over its test views of cos(image, run's prompt).
- CLIP R-precision over a prompt set: a run "retrieves" its prompt when the mean
  similarity of its views to its own prompt is strictly larger than to every other prompt
  of the set (a tie counts as a miss); R-precision of a method is the fraction of its runs
  that retrieve their prompt. With fewer than two prompts it is undefined (None).

The default model is "openai/clip-vit-base-patch32". DreamFusion reports R-precision with
three CLIP models (ViT-B/32, ViT-B/16 and ViT-L/14), retrieving each rendered view's caption
among the 153 captions of its object-centric COCO benchmark. StableDreamer's project page
compares its seven prompts visually and names no CLIP model. Numbers from different CLIP
models, prompt sets, or per-view vs per-run retrieval are not comparable with each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"


class ClipModelUnavailable(RuntimeError):
    """The requested CLIP model could not be loaded (offline, missing, or not a CLIP model)."""


def normalise(embeddings: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm ([N, D] -> [N, D]); a zero row is an error."""
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings: expected a [N, D] tensor, got shape {tuple(embeddings.shape)}")
    norms = embeddings.norm(dim=-1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError("embeddings: a row has zero norm, its cosine similarity is undefined")
    return embeddings / norms


def mean_view_similarity(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Mean over views of the cosine similarity of each view to each prompt.

    image_embeds [V, D] (the V test views of one run), text_embeds [P, D] -> [P].
    """
    if image_embeds.shape[0] == 0:
        raise ValueError("image_embeds: a run needs at least one view, got 0")
    if image_embeds.shape[-1] != text_embeds.shape[-1]:
        raise ValueError(
            f"image_embeds/text_embeds: embedding sizes differ ({image_embeds.shape[-1]} vs "
            f"{text_embeds.shape[-1]})"
        )
    return (normalise(image_embeds) @ normalise(text_embeds).T).mean(dim=0)


def clip_score(image_embeds: torch.Tensor, text_embed: torch.Tensor) -> float:
    """Mean cosine similarity of the views [V, D] to one prompt embedding [D]."""
    return float(mean_view_similarity(image_embeds, text_embed[None])[0])


def retrieves_own_prompt(similarities: torch.Tensor, prompt_index: int) -> bool:
    """True when ``similarities`` [P] is strictly largest at ``prompt_index``."""
    if not 0 <= prompt_index < similarities.shape[0]:
        raise ValueError(
            f"prompt_index: {prompt_index} is outside the {similarities.shape[0]} prompts"
        )
    own = similarities[prompt_index]
    others = torch.cat([similarities[:prompt_index], similarities[prompt_index + 1 :]])
    return bool((own > others).all())


def r_precision(hits: Sequence[bool], num_prompts: int) -> float | None:
    """Fraction of runs retrieving their prompt; None when the prompt set has < 2 prompts."""
    if num_prompts < 2 or len(hits) == 0:
        return None
    return sum(bool(h) for h in hits) / len(hits)


@dataclass
class RunClipMetrics:
    clip_score: float
    retrieves_prompt: bool
    similarities: list[float]
    view_similarities: list[float]  # cos(view, own prompt) of each test view, in view order


def score_run(
    image_embeds: torch.Tensor, prompt_embeds: torch.Tensor, prompt_index: int
) -> RunClipMetrics:
    """CLIP score and top-1 retrieval of one run against the whole prompt set [P, D]."""
    similarities = mean_view_similarity(image_embeds, prompt_embeds)
    per_view = normalise(image_embeds) @ normalise(prompt_embeds[prompt_index][None]).T
    return RunClipMetrics(
        clip_score=float(similarities[prompt_index]),
        retrieves_prompt=retrieves_own_prompt(similarities, prompt_index),
        similarities=[float(s) for s in similarities],
        view_similarities=[float(s) for s in per_view[:, 0]],
    )


class ClipEmbedder:
    """Image and text embeddings (the projected, pooled CLIP features) from a transformers CLIP.

    ``model`` is a Hugging Face id or a local directory holding a CLIPModel and its
    CLIPProcessor. Images are uint8 arrays [H, W, 3] (RGB); the processor resizes and
    normalises them as the model was trained.
    """

    def __init__(self, model: str = DEFAULT_CLIP_MODEL, device: str = "cpu", batch_size: int = 32):
        from transformers import CLIPModel, CLIPProcessor

        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
        try:
            self.model = CLIPModel.from_pretrained(model).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(model)
        except (OSError, ValueError) as error:
            raise ClipModelUnavailable(
                f"CLIP model '{model}' could not be loaded ({type(error).__name__}: {error}). "
                "Give a local directory holding a CLIPModel and CLIPProcessor, or a Hugging Face "
                "id that is in the local cache (HF_HUB_OFFLINE=1) or downloadable."
            ) from error
        self.device = device
        self.batch_size = batch_size

    def to(self, device: str) -> "ClipEmbedder":
        self.model.to(device)
        self.device = device
        return self

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """[len(texts), D] on the CPU."""
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            inputs = self.processor(
                text=list(texts[start : start + self.batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
            ).to(self.device)
            pooled = self.model.text_model(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            ).pooler_output
            chunks.append(self.model.text_projection(pooled).float().cpu())
        return torch.cat(chunks)

    @torch.no_grad()
    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """[len(images), D] on the CPU."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            inputs = self.processor(
                images=list(images[start : start + self.batch_size]), return_tensors="pt"
            ).to(self.device)
            pooled = self.model.vision_model(pixel_values=inputs["pixel_values"]).pooler_output
            chunks.append(self.model.visual_projection(pooled).float().cpu())
        return torch.cat(chunks)
