import random
from dataclasses import dataclass

import torch
import torch.nn as nn

import threestudio
from threestudio.models.background.base import BaseBackground
from threestudio.utils.typing import *


@threestudio.register("solid-color-background")
class SolidColorBackground(BaseBackground):
    """One colour everywhere (a parameter when ``learned``). In training mode with
    ``random_aug``, with probability ``random_aug_prob`` each batch item instead gets one
    uniformly random colour."""

    @dataclass
    class Config(BaseBackground.Config):
        n_output_dims: int = 3
        color: Tuple = (1.0, 1.0, 1.0)
        learned: bool = False
        random_aug: bool = False
        random_aug_prob: float = 0.5

    cfg: Config

    def configure(self) -> None:
        self.env_color: Float[Tensor, "Nc"]
        color = torch.as_tensor(self.cfg.color, dtype=torch.float32)
        if self.cfg.learned:
            self.env_color = nn.Parameter(color)
        else:
            self.register_buffer("env_color", color)

    def forward(self, dirs: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B H W Nc"]:
        color = torch.ones(*dirs.shape[:-1], self.cfg.n_output_dims).to(dirs) * self.env_color.to(dirs)
        if self.training and self.cfg.random_aug and random.random() < self.cfg.random_aug_prob:
            # "color * 0 +" keeps env_color in the graph (DDP unused-parameter checks)
            random_color = torch.rand(dirs.shape[0], 1, 1, self.cfg.n_output_dims).to(dirs)
            color = color * 0 + random_color.expand(*dirs.shape[:-1], -1)
        return color
