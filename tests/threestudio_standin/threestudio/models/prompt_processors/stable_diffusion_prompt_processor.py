"""``stable-diffusion-prompt-processor``: CLIP text embeddings (last hidden states) from the
``tokenizer/`` and ``text_encoder/`` subfolders of a Stable Diffusion model."""
import os
from dataclasses import dataclass

import torch
from transformers import AutoTokenizer, CLIPTextModel

import threestudio
from threestudio.models.prompt_processors.base import PromptProcessor
from threestudio.utils.misc import get_device
from threestudio.utils.typing import *


@threestudio.register("stable-diffusion-prompt-processor")
class StableDiffusionPromptProcessor(PromptProcessor):
    @dataclass
    class Config(PromptProcessor.Config):
        pass

    cfg: Config

    @staticmethod
    def spawn_func(pretrained_model_name_or_path: str, prompts: List[str], cache_dir: str):
        """Tokens padded to the tokenizer's ``model_max_length`` (77), no attention mask,
        as Stable Diffusion was trained."""
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        tokenizer = AutoTokenizer.from_pretrained(
            pretrained_model_name_or_path, subfolder="tokenizer"
        )
        device = get_device()
        text_encoder = CLIPTextModel.from_pretrained(
            pretrained_model_name_or_path, subfolder="text_encoder"
        ).to(device)
        with torch.no_grad():
            tokens = tokenizer(
                prompts,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                return_tensors="pt",
            )
            embeddings = text_encoder(tokens.input_ids.to(device))[0]
        PromptProcessor.save_embeddings(
            pretrained_model_name_or_path, prompts, embeddings, cache_dir
        )
        del text_encoder
