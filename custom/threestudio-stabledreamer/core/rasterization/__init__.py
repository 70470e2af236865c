"""Pure-PyTorch 3D Gaussian rasterization in a functional style (plain tensors in and out)."""
from .cameras import (camera_centers, intrinsics_from_fovy, opengl_c2w_to_viewmats,
                      reference_projection_matrix, tan_half_fov)
from .compositing import DEFAULT_CHUNK_ELEMENTS, composite_dense, composite_tiles
from .cuda_backends import (importable_cuda_backends, rasterize_with_diff_gaussian_rasterization,
                            rasterize_with_gsplat)
from .projection import ProjectedGaussians, normals_facing_camera, project_gaussians, sh_colors
from .rasterize import RasterizationOutput, rasterize_gaussians
from .tiles import TILE_SIZE, TileBins, bin_gaussians, tile_grid

__all__ = [
    "DEFAULT_CHUNK_ELEMENTS", "RasterizationOutput", "ProjectedGaussians", "TileBins", "TILE_SIZE",
    "bin_gaussians", "camera_centers", "composite_dense", "composite_tiles",
    "importable_cuda_backends", "intrinsics_from_fovy", "normals_facing_camera", "opengl_c2w_to_viewmats",
    "project_gaussians", "rasterize_gaussians", "rasterize_with_diff_gaussian_rasterization",
    "rasterize_with_gsplat", "reference_projection_matrix", "sh_colors",
    "tan_half_fov", "tile_grid",
]
