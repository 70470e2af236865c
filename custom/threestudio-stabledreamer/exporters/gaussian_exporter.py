"""``stabledreamer-gaussian-exporter``: the Gaussians as a 3DGS PLY plus a coloured mesh.

Files are written to a private staging directory and handed to the system as
``ExporterOutput(save_type="file", params={"src_path": ...})``, which threestudio's
``SaverMixin.save_file`` copies to ``<save dir>/it<step>-export/<save_name>``; this works
with any threestudio system, not only ours. Staged files live until the process exits.
"""
import atexit
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import threestudio
from threestudio.models.exporters.base import Exporter, ExporterOutput

from ..core.mesh_extraction import extract_mesh, save_mesh

MESH_FORMATS = ("obj", "glb", "ply")


def staging_directory() -> Path:
    """A fresh directory for one export, removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix="stabledreamer-export-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@threestudio.register("stabledreamer-gaussian-exporter")
class GaussianExporter(Exporter):
    """Export ``stabledreamer-gaussian`` geometry (any geometry with ``means``,
    ``covariances``, ``opacities``, ``sh_coefficients`` and ``export_ply``)."""

    @dataclass
    class Config(Exporter.Config):
        save_name: str = "model"
        """Base name of the files: ``<save_name>.ply`` (Gaussians), ``<save_name>-mesh.<fmt>``."""
        save_gaussians: bool = True
        """Write the standard 3DGS PLY (readable by common splat viewers)."""
        mesh_formats: List[str] = field(default_factory=lambda: ["obj", "glb"])
        """Mesh files to write, any of obj, glb, ply; empty = no mesh."""
        mesh_resolution: int = 256
        """Marching-cubes samples per axis of the Gaussians' bounding box (our choice: fine
        enough for objects of ~1 world unit, ~1 s per 10k Gaussians on a CPU core)."""
        mesh_level: float = 0.5
        """Iso-value of the opacity field (sum of Gaussian opacities): 0.5 = half opaque."""
        cutoff_sigma: float = 3.0
        """Gaussians contribute within this Mahalanobis radius, as the rasterizer's 3-sigma extent."""
        bbox_padding: float = 0.05
        """Margin around the Gaussians' box, as a fraction of its size, so the mesh closes."""
        color_neighbours: int = 8
        """Vertex colour = opacity-weighted DC colour of this many nearest Gaussians."""

    cfg: Config

    def configure(self, geometry, material, background) -> None:
        super().configure(geometry, material, background)
        unknown = sorted(set(self.cfg.mesh_formats) - set(MESH_FORMATS))
        if unknown:
            raise ValueError(
                f"exporter.mesh_formats: unknown format(s) {unknown}; expected any of {list(MESH_FORMATS)}"
            )
        limits = (
            ("mesh_resolution", self.cfg.mesh_resolution >= 2, "an integer >= 2"),
            ("mesh_level", self.cfg.mesh_level > 0, "> 0 (the field is a sum of opacities)"),
            ("cutoff_sigma", self.cfg.cutoff_sigma > 0, "> 0"),
            ("bbox_padding", self.cfg.bbox_padding >= 0, ">= 0"),
            ("color_neighbours", self.cfg.color_neighbours >= 1, "an integer >= 1"),
        )
        for name, ok, expected in limits:
            if not ok:
                raise ValueError(f"exporter.{name} must be {expected}, got {getattr(self.cfg, name)!r}")

    def __call__(self) -> List[ExporterOutput]:
        staging = staging_directory()
        outputs: List[ExporterOutput] = []
        if self.cfg.save_gaussians:
            name = f"{self.cfg.save_name}.ply"
            self.geometry.export_ply(str(staging / name))
            outputs.append(ExporterOutput(name, "file", {"src_path": str(staging / name)}))
        if self.cfg.mesh_formats and self.geometry.num_gaussians == 0:
            threestudio.warn("stabledreamer-gaussian-exporter: the geometry has no Gaussians left; no mesh written")
        elif self.cfg.mesh_formats:
            mesh = self.extract_mesh()
            if len(mesh.faces) == 0:
                threestudio.warn(
                    f"stabledreamer-gaussian-exporter: the opacity field never exceeds mesh_level="
                    f"{self.cfg.mesh_level}; no mesh written (lower exporter.mesh_level)"
                )
                return outputs
            for fmt in self.cfg.mesh_formats:
                name = f"{self.cfg.save_name}-mesh.{fmt}"
                save_mesh(staging / name, mesh)
                outputs.append(ExporterOutput(name, "file", {"src_path": str(staging / name)}))
        return outputs

    def extract_mesh(self):
        geometry = self.geometry
        return extract_mesh(
            geometry.means,
            geometry.covariances,
            geometry.opacities,
            geometry.sh_coefficients[:, :1],
            resolution=self.cfg.mesh_resolution,
            level=self.cfg.mesh_level,
            cutoff_sigma=self.cfg.cutoff_sigma,
            padding=self.cfg.bbox_padding,
            k_nearest=self.cfg.color_neighbours,
        )
