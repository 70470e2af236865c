"""CLIP score and CLIP R-precision: hand-computed cases, then a tiny random CLIP end to end."""
import math

import numpy as np
import pytest
import torch

from threestudio_stabledreamer.benchmark.metrics import (
    ClipEmbedder,
    ClipModelUnavailable,
    clip_score,
    mean_view_similarity,
    r_precision,
    retrieves_own_prompt,
    score_run,
)


def test_clip_score_is_mean_cosine_over_views():
    # Views along x and y (different lengths: cosine ignores them); prompts x and the diagonal.
    views = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    prompts = torch.tensor([[1.0, 0.0], [5.0, 5.0]])
    # prompt x: cos = 1 and 0 -> 0.5; diagonal: 1/sqrt(2) twice -> 1/sqrt(2)
    assert clip_score(views, prompts[0]) == pytest.approx(0.5)
    assert clip_score(views, prompts[1]) == pytest.approx(1 / math.sqrt(2))
    assert mean_view_similarity(views, prompts).tolist() == pytest.approx([0.5, 1 / math.sqrt(2)])


def test_score_run_retrieval_against_the_prompt_set():
    views = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    prompts = torch.tensor([[1.0, 0.0], [5.0, 5.0], [-1.0, 0.0]])
    # mean similarities: [0.5, 0.7071, -0.5]
    as_prompt_0 = score_run(views, prompts, prompt_index=0)
    as_prompt_1 = score_run(views, prompts, prompt_index=1)
    assert as_prompt_0.clip_score == pytest.approx(0.5)
    assert not as_prompt_0.retrieves_prompt
    assert as_prompt_1.clip_score == pytest.approx(1 / math.sqrt(2))
    assert as_prompt_1.retrieves_prompt
    assert as_prompt_1.similarities == pytest.approx([0.5, 1 / math.sqrt(2), -0.5])


def test_tie_is_not_a_retrieval():
    assert not retrieves_own_prompt(torch.tensor([0.3, 0.3, 0.1]), 0)
    assert retrieves_own_prompt(torch.tensor([0.31, 0.3, 0.1]), 0)


def test_r_precision_fraction_and_undefined_cases():
    assert r_precision([True, False, True, True], num_prompts=7) == pytest.approx(0.75)
    assert r_precision([False, False], num_prompts=2) == 0.0
    assert r_precision([True], num_prompts=1) is None
    assert r_precision([], num_prompts=7) is None


def test_bad_embeddings_are_rejected_with_the_field_named():
    with pytest.raises(ValueError, match="zero norm"):
        mean_view_similarity(torch.zeros(1, 4), torch.ones(2, 4))
    with pytest.raises(ValueError, match="embedding sizes differ"):
        mean_view_similarity(torch.ones(3, 4), torch.ones(2, 5))
    with pytest.raises(ValueError, match="at least one view"):
        mean_view_similarity(torch.ones(0, 4), torch.ones(2, 4))
    with pytest.raises(ValueError, match="prompt_index"):
        retrieves_own_prompt(torch.ones(3), 3)


def test_tiny_clip_end_to_end_matches_clip_model_logits(tiny_models):
    """Our scores equal cos(image, text) recovered from CLIPModel's own forward pass."""
    from transformers import CLIPModel, CLIPProcessor

    rng = np.random.default_rng(0)
    views = [rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8) for _ in range(3)]
    prompts = ["a zoomed out dslr photo of a corgi wearing a top hat", "a wide angle dslr photo of a colorful rooster"]

    embedder = ClipEmbedder(str(tiny_models["clip"]), batch_size=2)
    image_embeds = embedder.embed_images(views)
    text_embeds = embedder.embed_texts(prompts)
    result = score_run(image_embeds, text_embeds, prompt_index=1)

    model = CLIPModel.from_pretrained(tiny_models["clip"]).eval()
    processor = CLIPProcessor.from_pretrained(tiny_models["clip"])
    inputs = processor(text=prompts, images=views, return_tensors="pt", padding=True)
    with torch.no_grad():
        output = model(**inputs)
        cosine = output.logits_per_image / model.logit_scale.exp()  # [views, prompts]
    expected = cosine.mean(dim=0)

    assert image_embeds.shape[0] == 3 and text_embeds.shape[0] == 2
    assert result.similarities == pytest.approx(expected.tolist(), abs=1e-5)
    assert result.clip_score == pytest.approx(float(expected[1]), abs=1e-5)
    assert result.retrieves_prompt == bool(expected[1] > expected[0])


def test_missing_clip_model_fails_clearly(tmp_path):
    missing = tmp_path / "no-such-clip"
    with pytest.raises(ClipModelUnavailable, match="no-such-clip"):
        ClipEmbedder(str(missing))
