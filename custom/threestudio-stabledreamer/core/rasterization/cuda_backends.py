"""The same rendering through the CUDA rasterizers, when they are installed.

Both functions take the arguments of :func:`rasterize_gaussians` and return a
:class:`RasterizationOutput` with the same conventions: alpha-premultiplied colours,
opacity, alpha-weighted view depth, alpha-weighted camera-facing world normals, radii, and
``viewspace_points`` whose ``.grad`` after backward is dL/d(NDC) = dL/d(pixel) * (W/2, H/2).

- ``diff_gaussian_rasterization`` (graphdeco-inria): one call per view and per output
  group (colour; depth and opacity; normals) because it composites three channels per
  call. Its near plane is fixed at 0.2 inside the CUDA code.
- ``gsplat``: one batched call with the colour, depth and normal channels stacked; the
  positional gradient is read from its ``means2d`` by a hook and rescaled to NDC units.
"""
import importlib.util
import torch
import torch.nn.functional as F

from .cameras import camera_centers, reference_projection_matrix, tan_half_fov
from .projection import NEAR_PLANE, normals_facing_camera, sh_colors
from .rasterize import RasterizationOutput

REFERENCE_NEAR = 0.01
REFERENCE_FAR = 100.0
CUDA_BACKENDS = ("diff-gaussian-rasterization", "gsplat")
MODULE_OF_BACKEND = {"diff-gaussian-rasterization": "diff_gaussian_rasterization", "gsplat": "gsplat"}


def importable_cuda_backends() -> list:
    """Names of the CUDA backends whose packages can be imported here."""
    return [name for name in CUDA_BACKENDS
            if importlib.util.find_spec(MODULE_OF_BACKEND[name]) is not None]


def rasterize_with_diff_gaussian_rasterization(
        means, quats, scales, opacities, viewmats, Ks, width, height, *,
        sh_coefficients=None, sh_degree=0, colors=None, normals=None,
        scale_modifier=1.0, near_plane=NEAR_PLANE, **torch_backend_options) -> RasterizationOutput:
    """Render with graphdeco-inria's ``diff_gaussian_rasterization`` (CUDA tensors).

    ``torch_backend_options`` (``tile_size``, ``block_size``, ``chunk_elements``) tune only
    the torch backend; they are accepted so every backend takes the same call, and ignored.
    """
    from diff_gaussian_rasterization import GaussianRasterizationSettings, GaussianRasterizer

    num_views, num_gaussians = viewmats.shape[0], means.shape[0]
    opacities = opacities.reshape(num_gaussians, 1)
    # The reference kernels build R from the quaternion as given and return the gradient
    # of that polynomial; normalising here keeps the torch backend's contract (any
    # non-zero quaternion) in the forward and in the gradient.
    unit_quats = F.normalize(quats, dim=-1)
    tan_x, tan_y = tan_half_fov(Ks, height, width)
    centers = camera_centers(viewmats)
    viewspace_points = torch.zeros(num_views, num_gaussians, 2, dtype=means.dtype,
                                   device=means.device, requires_grad=True)
    view_depths = _view_depths(means, viewmats)
    facing = normals_facing_camera(normals, means, viewmats) if normals is not None else None
    images, alphas, depths, normal_images, radii = [], [], [], [], []
    for view in range(num_views):
        projection = reference_projection_matrix(float(tan_x[view]), float(tan_y[view]),
                                                 REFERENCE_NEAR, REFERENCE_FAR).to(viewmats)
        settings = dict(
            image_height=int(height), image_width=int(width),
            tanfovx=float(tan_x[view]), tanfovy=float(tan_y[view]),
            bg=torch.zeros(3, dtype=means.dtype, device=means.device),
            scale_modifier=float(scale_modifier),
            viewmatrix=viewmats[view].transpose(0, 1).contiguous(),
            projmatrix=(projection @ viewmats[view]).transpose(0, 1).contiguous(),
            sh_degree=int(sh_degree), campos=centers[view].contiguous(),
            prefiltered=False, debug=False)
        if "antialiasing" in GaussianRasterizationSettings._fields:
            settings["antialiasing"] = False
        rasterizer = GaussianRasterizer(raster_settings=GaussianRasterizationSettings(**settings))
        means2d = F.pad(viewspace_points[view], (0, 1))

        def render(**colour):
            result = rasterizer(means3D=means, means2D=means2d, opacities=opacities,
                                scales=scales, rotations=unit_quats, **colour)
            return result[0], result[1]

        if colors is None:
            image, view_radii = render(shs=sh_coefficients)
        else:
            view_colors = colors if colors.ndim == 2 else colors[view]
            image, view_radii = render(colors_precomp=view_colors)
        depth_alpha = torch.stack([view_depths[view], torch.ones_like(view_depths[view]),
                                   torch.zeros_like(view_depths[view])], dim=-1)
        depth_alpha_image, _ = render(colors_precomp=depth_alpha)
        images.append(image.permute(1, 2, 0))
        depths.append(depth_alpha_image[0, :, :, None])
        alphas.append(depth_alpha_image[1, :, :, None])
        radii.append(view_radii.long())
        if facing is not None:
            normal_image, _ = render(colors_precomp=facing[view])
            normal_images.append(normal_image.permute(1, 2, 0))
    return RasterizationOutput(
        colors=torch.stack(images), alphas=torch.stack(alphas), depths=torch.stack(depths),
        normals=torch.stack(normal_images) if facing is not None else None,
        means2d=None, radii=torch.stack(radii), viewspace_points=viewspace_points)


def rasterize_with_gsplat(
        means, quats, scales, opacities, viewmats, Ks, width, height, *,
        sh_coefficients=None, sh_degree=0, colors=None, normals=None,
        scale_modifier=1.0, near_plane=NEAR_PLANE, **torch_backend_options) -> RasterizationOutput:
    """Render with ``gsplat.rasterization`` (CUDA tensors), eps2d = 0.3 as the reference.

    ``torch_backend_options`` tune only the torch backend; accepted and ignored, as above.
    """
    import gsplat

    num_views, num_gaussians = viewmats.shape[0], means.shape[0]
    if colors is None:
        colors = sh_colors(sh_coefficients, sh_degree, means, viewmats)
    elif colors.ndim == 2:
        colors = colors[None].expand(num_views, num_gaussians, 3)
    channels = [colors, _view_depths(means, viewmats)[..., None]]
    if normals is not None:
        channels.append(normals_facing_camera(normals, means, viewmats))
    image, alpha, meta = gsplat.rasterization(
        means=means, quats=quats, scales=scales * scale_modifier,
        opacities=opacities.reshape(num_gaussians), colors=torch.cat(channels, dim=-1),
        viewmats=viewmats, Ks=Ks, width=int(width), height=int(height),
        near_plane=near_plane, eps2d=0.3, sh_degree=None, packed=False, render_mode="RGB")
    viewspace_points = torch.zeros(num_views, num_gaussians, 2, dtype=means.dtype,
                                   device=means.device, requires_grad=True)
    _route_pixel_gradient(meta["means2d"], viewspace_points, width, height)
    radii = meta["radii"]
    if radii.ndim == 3:
        radii = radii.max(dim=-1).values
    return RasterizationOutput(
        colors=image[..., :3], alphas=alpha, depths=image[..., 3:4],
        normals=image[..., 4:7] if normals is not None else None,
        means2d=meta["means2d"] - 0.5, radii=radii.long(), viewspace_points=viewspace_points)


def _view_depths(means: torch.Tensor, viewmats: torch.Tensor) -> torch.Tensor:
    """View-space z [B,N] of means [N,3] for OpenCV world-to-camera matrices [B,4,4]."""
    return (means[None] * viewmats[:, None, 2, :3]).sum(-1) + viewmats[:, None, 2, 3]


def _route_pixel_gradient(means2d: torch.Tensor, viewspace_points: torch.Tensor,
                          width: int, height: int) -> None:
    """Make ``viewspace_points.grad`` receive dL/d(means2d) * (W/2, H/2) during backward."""
    if not means2d.requires_grad:
        return
    scale = means2d.new_tensor([width / 2.0, height / 2.0])

    def accumulate(grad):
        scaled = (grad * scale).to(viewspace_points.dtype)
        viewspace_points.grad = scaled if viewspace_points.grad is None else viewspace_points.grad + scaled

    means2d.register_hook(accumulate)
