"""``random-camera-datamodule``: random training cameras around the origin, orbits for
validation and test.

Conventions (threestudio's): the world is z-up; a camera at elevation e and azimuth a
(degrees; azimuth from +x towards +y) and distance d sits at
``d * (cos e cos a, cos e sin a, sin e)`` looking at the scene centre; ``c2w`` is OpenGL
camera-to-world with columns [right, up, -lookat | position]; ``fovy`` is the vertical
field of view in radians; ``proj_mtx`` uses near 0.01 and far 100; ``mvp_mtx = proj_mtx
@ w2c``; ``rays_d`` are unit vectors (with ``rays_d_normalize``).
"""
import bisect
import math
import random
from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset

import threestudio
from threestudio.utils.base import Updateable
from threestudio.utils.config import parse_structured
from threestudio.utils.ops import (
    get_mvp_matrix,
    get_projection_matrix,
    get_ray_directions,
    get_rays,
)
from threestudio.utils.typing import *


@dataclass
class RandomCameraDataModuleConfig:
    # height, width and batch_size: an int, or a list switched at resolution_milestones
    height: Any = 64
    width: Any = 64
    batch_size: Any = 1
    resolution_milestones: List[int] = field(default_factory=lambda: [])
    eval_height: int = 512
    eval_width: int = 512
    eval_batch_size: int = 1
    n_val_views: int = 1
    n_test_views: int = 120
    elevation_range: Tuple[float, float] = (-10, 90)  # degrees
    azimuth_range: Tuple[float, float] = (-180, 180)  # degrees
    camera_distance_range: Tuple[float, float] = (1, 1.5)
    fovy_range: Tuple[float, float] = (40, 70)  # degrees, vertical
    camera_perturb: float = 0.1
    center_perturb: float = 0.2
    up_perturb: float = 0.02
    light_position_perturb: float = 1.0
    light_distance_range: Tuple[float, float] = (0.8, 1.5)
    eval_elevation_deg: float = 15.0
    eval_camera_distance: float = 1.5
    eval_fovy_deg: float = 70.0
    light_sample_strategy: str = "dreamfusion"
    batch_uniform_azimuth: bool = True
    progressive_until: int = 0  # steps over which elevation/azimuth ranges widen
    rays_d_normalize: bool = True


def spherical_to_cartesian(
    elevation: Float[Tensor, "B"], azimuth: Float[Tensor, "B"], distance: Float[Tensor, "B"]
) -> Float[Tensor, "B 3"]:
    """z-up position from elevation and azimuth in radians."""
    return torch.stack(
        [
            distance * torch.cos(elevation) * torch.cos(azimuth),
            distance * torch.cos(elevation) * torch.sin(azimuth),
            distance * torch.sin(elevation),
        ],
        dim=-1,
    )


def look_at_c2w(
    position: Float[Tensor, "B 3"], center: Float[Tensor, "B 3"], up: Float[Tensor, "B 3"]
) -> Float[Tensor, "B 4 4"]:
    """OpenGL camera-to-world: columns [right, up, -lookat, position]."""
    lookat = F.normalize(center - position, dim=-1)
    right = F.normalize(torch.cross(lookat, up, dim=-1), dim=-1)
    true_up = F.normalize(torch.cross(right, lookat, dim=-1), dim=-1)
    c2w = torch.zeros(position.shape[0], 4, 4, dtype=position.dtype)
    c2w[:, :3, :3] = torch.stack([right, true_up, -lookat], dim=-1)
    c2w[:, :3, 3] = position
    c2w[:, 3, 3] = 1.0
    return c2w


def camera_rays_and_matrices(
    c2w: Float[Tensor, "B 4 4"], fovy: Float[Tensor, "B"], height: int, width: int, normalize: bool
) -> Dict[str, Tensor]:
    """rays_o, rays_d [B, H, W, 3], proj_mtx and mvp_mtx [B, 4, 4] for pinhole cameras
    with vertical field of view ``fovy`` (radians) and square pixels."""
    focal = 0.5 * height / torch.tan(0.5 * fovy)
    directions = get_ray_directions(H=height, W=width, focal=1.0)[None].repeat(c2w.shape[0], 1, 1, 1)
    directions[..., :2] = directions[..., :2] / focal[:, None, None, None]
    rays_o, rays_d = get_rays(directions, c2w, keepdim=True, normalize=normalize)
    proj_mtx = get_projection_matrix(fovy, width / height, 0.01, 100.0)
    return {
        "rays_o": rays_o,
        "rays_d": rays_d,
        "proj_mtx": proj_mtx,
        "mvp_mtx": get_mvp_matrix(c2w, proj_mtx),
    }


def _uniform(n: int, bounds) -> Tensor:
    return torch.rand(n) * (bounds[1] - bounds[0]) + bounds[0]


class RandomCameraIterableDataset(IterableDataset, Updateable):
    """Infinite stream of empty items; ``collate`` draws a batch of random cameras.

    The current height, width and batch size follow ``resolution_milestones``: entry k of
    the lists applies from global step ``milestones[k-1]`` on.
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg: RandomCameraDataModuleConfig = cfg
        as_list = lambda v: [v] if isinstance(v, int) else list(v)
        self.heights = as_list(cfg.height)
        self.widths = as_list(cfg.width)
        self.batch_sizes = as_list(cfg.batch_size)
        if not len(self.heights) == len(self.widths) == len(self.batch_sizes):
            raise ValueError(
                f"height, width, batch_size: lists must have one length, got "
                f"{self.heights}, {self.widths}, {self.batch_sizes}"
            )
        if len(self.heights) == 1:
            if len(cfg.resolution_milestones) > 0:
                threestudio.warn(
                    "Ignoring resolution_milestones since height and width are not changing"
                )
            self.resolution_milestones = [-1]
        else:
            if len(self.heights) != len(cfg.resolution_milestones) + 1:
                raise ValueError(
                    f"resolution_milestones: expected {len(self.heights) - 1} milestones for "
                    f"{len(self.heights)} resolutions, got {list(cfg.resolution_milestones)}"
                )
            self.resolution_milestones = [-1] + list(cfg.resolution_milestones)
        self.height: int = self.heights[0]
        self.width: int = self.widths[0]
        self.batch_size: int = self.batch_sizes[0]
        self.elevation_range = cfg.elevation_range
        self.azimuth_range = cfg.azimuth_range
        self.camera_distance_range = cfg.camera_distance_range
        self.fovy_range = cfg.fovy_range

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False):
        k = bisect.bisect_right(self.resolution_milestones, global_step) - 1
        self.height, self.width = self.heights[k], self.widths[k]
        self.batch_size = self.batch_sizes[k]
        threestudio.debug(
            f"Training height: {self.height}, width: {self.width}, batch_size: {self.batch_size}"
        )
        self.progressive_view(global_step)

    def progressive_view(self, global_step):
        """Widen elevation/azimuth from the eval elevation and azimuth 0 to the configured
        ranges over ``progressive_until`` steps."""
        r = min(1.0, global_step / (self.cfg.progressive_until + 1))
        e0 = self.cfg.eval_elevation_deg
        self.elevation_range = [(1 - r) * e0 + r * e for e in self.cfg.elevation_range]
        self.azimuth_range = [r * a for a in self.cfg.azimuth_range]

    def __iter__(self):
        while True:
            yield {}

    def _sample_elevation_deg(self) -> Tensor:
        if random.random() < 0.5:
            # uniform in degrees (denser towards the poles)
            return _uniform(self.batch_size, self.elevation_range)
        # uniform on the sphere: sin(elevation) uniform
        lo, hi = (math.sin(math.radians(e)) for e in self.elevation_range)
        return torch.rad2deg(torch.asin(_uniform(self.batch_size, (lo, hi))))

    def _sample_azimuth_deg(self) -> Tensor:
        lo, hi = self.azimuth_range
        if self.cfg.batch_uniform_azimuth:
            # one sample in each of batch_size equal sectors
            u = (torch.rand(self.batch_size) + torch.arange(self.batch_size)) / self.batch_size
            return u * (hi - lo) + lo
        return _uniform(self.batch_size, (lo, hi))

    def _sample_light_positions(self, camera_positions: Tensor) -> Tensor:
        B = self.batch_size
        distances = _uniform(B, self.cfg.light_distance_range)
        if self.cfg.light_sample_strategy == "dreamfusion":
            # direction ~ camera position + N(0, light_position_perturb)
            direction = F.normalize(
                camera_positions + torch.randn(B, 3) * self.cfg.light_position_perturb, dim=-1
            )
            return direction * distances[:, None]
        raise ValueError(
            f"light_sample_strategy={self.cfg.light_sample_strategy!r}: expected "
            "'dreamfusion', the only strategy the threestudio test stand-in implements"
        )

    def collate(self, batch) -> Dict[str, Any]:
        B = self.batch_size
        elevation_deg = self._sample_elevation_deg()
        azimuth_deg = self._sample_azimuth_deg()
        camera_distances = _uniform(B, self.camera_distance_range)
        camera_positions = spherical_to_cartesian(
            torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg), camera_distances
        )
        # perturbations: position uniform in +-camera_perturb, centre and up Gaussian
        camera_positions = camera_positions + (torch.rand(B, 3) * 2 - 1) * self.cfg.camera_perturb
        center = torch.randn(B, 3) * self.cfg.center_perturb
        up = torch.tensor([0.0, 0.0, 1.0])[None].repeat(B, 1) + torch.randn(B, 3) * self.cfg.up_perturb
        fovy = torch.deg2rad(_uniform(B, self.fovy_range))
        light_positions = self._sample_light_positions(camera_positions)
        c2w = look_at_c2w(camera_positions, center, up)
        cams = camera_rays_and_matrices(c2w, fovy, self.height, self.width, self.cfg.rays_d_normalize)
        return {
            **cams,
            "camera_positions": camera_positions,
            "c2w": c2w,
            "light_positions": light_positions,
            "elevation": elevation_deg,
            "azimuth": azimuth_deg,
            "camera_distances": camera_distances,
            "height": self.height,
            "width": self.width,
            "fovy": fovy,
        }


class RandomCameraDataset(Dataset):
    """Orbit at the eval elevation, distance and fovy: ``n_val_views`` azimuths in
    [0, 360) for "val", ``n_test_views`` azimuths from 0 to 360 inclusive otherwise."""

    def __init__(self, cfg: Any, split: str) -> None:
        super().__init__()
        self.cfg: RandomCameraDataModuleConfig = cfg
        self.split = split
        if split == "val":
            self.n_views = cfg.n_val_views
            azimuth_deg = torch.linspace(0, 360.0, self.n_views + 1)[: self.n_views]
        else:
            self.n_views = cfg.n_test_views
            azimuth_deg = torch.linspace(0, 360.0, self.n_views)
        elevation_deg = torch.full_like(azimuth_deg, cfg.eval_elevation_deg)
        camera_distances = torch.full_like(azimuth_deg, cfg.eval_camera_distance)
        fovy = torch.deg2rad(torch.full_like(azimuth_deg, cfg.eval_fovy_deg))
        camera_positions = spherical_to_cartesian(
            torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg), camera_distances
        )
        up = torch.tensor([0.0, 0.0, 1.0])[None].repeat(self.n_views, 1)
        c2w = look_at_c2w(camera_positions, torch.zeros_like(camera_positions), up)
        cams = camera_rays_and_matrices(c2w, fovy, cfg.eval_height, cfg.eval_width, cfg.rays_d_normalize)
        self.views = {
            **cams,
            "c2w": c2w,
            "camera_positions": camera_positions,
            "light_positions": camera_positions,
            "elevation": elevation_deg,
            "azimuth": azimuth_deg,
            "camera_distances": camera_distances,
            "fovy": fovy,
        }

    def __len__(self):
        return self.n_views

    def __getitem__(self, index):
        return {
            "index": index,
            **{k: v[index] for k, v in self.views.items()},
            "height": self.cfg.eval_height,
            "width": self.cfg.eval_width,
        }

    def collate(self, batch):
        batch = torch.utils.data.default_collate(batch)
        batch.update({"height": self.cfg.eval_height, "width": self.cfg.eval_width})
        return batch


@threestudio.register("random-camera-datamodule")
class RandomCameraDataModule(pl.LightningDataModule):
    cfg: RandomCameraDataModuleConfig

    def __init__(self, cfg: Optional[Union[dict, DictConfig]] = None) -> None:
        super().__init__()
        self.cfg = parse_structured(RandomCameraDataModuleConfig, cfg)

    def setup(self, stage=None) -> None:
        if stage in (None, "fit"):
            self.train_dataset = RandomCameraIterableDataset(self.cfg)
        if stage in (None, "fit", "validate"):
            self.val_dataset = RandomCameraDataset(self.cfg, "val")
        if stage in (None, "test", "predict"):
            self.test_dataset = RandomCameraDataset(self.cfg, "test")

    def prepare_data(self):
        pass

    def general_loader(self, dataset, batch_size, collate_fn=None) -> DataLoader:
        # no worker processes: update_step changes the dataset's attributes at run time
        return DataLoader(dataset, num_workers=0, batch_size=batch_size, collate_fn=collate_fn)

    def train_dataloader(self) -> DataLoader:
        return self.general_loader(
            self.train_dataset, batch_size=None, collate_fn=self.train_dataset.collate
        )

    def val_dataloader(self) -> DataLoader:
        return self.general_loader(self.val_dataset, batch_size=1, collate_fn=self.val_dataset.collate)

    def test_dataloader(self) -> DataLoader:
        return self.general_loader(self.test_dataset, batch_size=1, collate_fn=self.test_dataset.collate)

    def predict_dataloader(self) -> DataLoader:
        return self.general_loader(self.test_dataset, batch_size=1, collate_fn=self.test_dataset.collate)
