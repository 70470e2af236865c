"""``deep-floyd-prompt-processor``: T5 encoder embeddings from the ``tokenizer/`` and
``text_encoder/`` subfolders of a DeepFloyd IF model.

threestudio loads the T5 encoder in float16, 8-bit quantised (``load_in_8bit=True,
variant="8bit"``, bitsandbytes on CUDA), so the embeddings are float16; the stand-in loads
the full-precision weights in float16, without quantisation, and gives float16 embeddings
as well.
"""
import os
from dataclasses import dataclass

import torch
from transformers import T5EncoderModel, T5Tokenizer

import threestudio
from threestudio.models.prompt_processors.base import PromptProcessor
from threestudio.utils.misc import get_device
from threestudio.utils.typing import *

MAX_LENGTH = 77


@threestudio.register("deep-floyd-prompt-processor")
class DeepFloydPromptProcessor(PromptProcessor):
    @dataclass
    class Config(PromptProcessor.Config):
        pretrained_model_name_or_path: str = "DeepFloyd/IF-I-XL-v1.0"

    cfg: Config

    @staticmethod
    def spawn_func(pretrained_model_name_or_path: str, prompts: List[str], cache_dir: str):
        """Tokens (with the end-of-sequence token) padded or truncated to 77; the
        attention mask is passed to the encoder, so padding does not attend."""
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        tokenizer = T5Tokenizer.from_pretrained(
            pretrained_model_name_or_path, subfolder="tokenizer"
        )
        device = get_device()
        text_encoder = T5EncoderModel.from_pretrained(
            pretrained_model_name_or_path,
            subfolder="text_encoder",
            torch_dtype=torch.float16,
        ).to(device)
        with torch.no_grad():
            tokens = tokenizer(
                prompts,
                padding="max_length",
                max_length=MAX_LENGTH,
                truncation=True,
                add_special_tokens=True,
                return_tensors="pt",
            )
            embeddings = text_encoder(
                tokens.input_ids.to(device),
                attention_mask=tokens.attention_mask.to(device),
            )[0]
        PromptProcessor.save_embeddings(
            pretrained_model_name_or_path, prompts, embeddings, cache_dir
        )
        del text_encoder
