"""``stabledreamer-lab-prompt-processor``: view-dependent "embeddings" for the lab's analytic denoiser.

threestudio's prompt processors encode the prompt and its view-dependent variants
("..., front view", ...) with a text encoder. The lab's denoiser reads only which view a
prompt names, so this processor keeps threestudio's directions, their bins and thresholds
(``front_threshold``, ``back_threshold``, ``overhead_threshold``: the base class's) and
replaces each embedding by a [1, Nv] vector: one-hot on the direction's index for the
view-dependent prompts, zeros for the prompt without a view and for the negative prompt
(no view information). ``get_text_embeddings`` is threestudio's own, so guidances receive
the embeddings exactly as from a real processor. No model is loaded and nothing is cached.
"""
from dataclasses import dataclass

import torch

import threestudio
from threestudio.models.prompt_processors.base import PromptProcessor


@threestudio.register("stabledreamer-lab-prompt-processor")
class LabPromptProcessor(PromptProcessor):
    @dataclass
    class Config(PromptProcessor.Config):
        pretrained_model_name_or_path: str = ""
        spawn: bool = False

    cfg: Config

    def prepare_text_embeddings(self) -> None:
        """Nothing to encode."""

    def load_text_embeddings(self) -> None:
        num_directions = len(self.directions)
        one_hot = torch.eye(num_directions, device=self.device)[:, None, :]
        none = torch.zeros(1, 1, num_directions, device=self.device)
        self.text_embeddings = none
        self.uncond_text_embeddings = none
        self.text_embeddings_vd = one_hot
        self.uncond_text_embeddings_vd = torch.zeros_like(one_hot)
