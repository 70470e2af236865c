from dataclasses import dataclass

import threestudio
from threestudio.models.materials.base import BaseMaterial
from threestudio.utils.ops import get_activation
from threestudio.utils.typing import *


@threestudio.register("no-material")
class NoMaterial(BaseMaterial):
    """Colour = activation(features). threestudio's optional MLP
    (``input_feature_dims`` + ``mlp_network_config``) is not part of the stand-in."""

    @dataclass
    class Config(BaseMaterial.Config):
        n_output_dims: int = 3
        color_activation: str = "sigmoid"
        input_feature_dims: Optional[int] = None
        mlp_network_config: Optional[dict] = None
        requires_normal: bool = False

    cfg: Config

    def configure(self) -> None:
        if self.cfg.input_feature_dims is not None and self.cfg.mlp_network_config is not None:
            raise NotImplementedError(
                "no-material: input_feature_dims + mlp_network_config (an MLP) is not available in the threestudio stand-in"
            )
        self.requires_normal = self.cfg.requires_normal

    def forward(self, features: Float[Tensor, "B ... Nf"], **kwargs) -> Float[Tensor, "B ... Nc"]:
        if features.shape[-1] != self.cfg.n_output_dims:
            raise ValueError(
                f"Expected {self.cfg.n_output_dims} output dims, only got {features.shape[-1]} dims input."
            )
        return get_activation(self.cfg.color_activation)(features)

    def export(self, features: Float[Tensor, "*N Nf"], **kwargs) -> Dict[str, Any]:
        color = self(features, **kwargs).clamp(0, 1)
        if color.shape[-1] > 3:
            threestudio.warn("Output color has >3 channels, treating the first 3 as RGB")
        return {"albedo": color[..., :3]}
