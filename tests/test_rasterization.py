"""Tests of the pure-PyTorch Gaussian rasterizer (core.rasterization) against independent maths.

The rasterizer runs on ``--device``: scenes are built on the CPU, moved there at the call
(gradients flow back to the CPU leaves) and the outputs are compared on the CPU.
"""
import math

import numpy as np
import pytest
import torch

from threestudio_stabledreamer.core.rasterization import (
    camera_centers, importable_cuda_backends, intrinsics_from_fovy, opengl_c2w_to_viewmats,
    project_gaussians, rasterize_gaussians, rasterize_with_diff_gaussian_rasterization,
    rasterize_with_gsplat)

IDENTITY_QUAT = (1.0, 0.0, 0.0, 0.0)

pytestmark = pytest.mark.device


def on_device(device, function, *args, **kwargs):
    """``function`` with its tensor arguments moved to ``device``; checks that every tensor
    output is on ``device`` and returns them on the CPU, except ``viewspace_points`` (a
    leaf on ``device`` whose ``.grad`` the tests read)."""
    def move(value):
        return value.to(device) if torch.is_tensor(value) else value

    out = function(*map(move, args), **{key: move(value) for key, value in kwargs.items()})
    if not isinstance(out, tuple):
        assert out.device == device
        return out.cpu()
    fields = {name: getattr(out, name) for name in out._fields if torch.is_tensor(getattr(out, name))}
    assert {name: value.device for name, value in fields.items()} == {name: device for name in fields}
    return out._replace(**{name: value.cpu() for name, value in fields.items() if name != "viewspace_points"})


def look_at_c2w(position, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)):
    """OpenGL camera-to-world [4,4] as threestudio builds it (columns right, up, -lookat, pos)."""
    position = torch.as_tensor(position, dtype=torch.float64)
    lookat = torch.as_tensor(target, dtype=torch.float64) - position
    lookat = lookat / lookat.norm()
    right = torch.linalg.cross(lookat, torch.as_tensor(up, dtype=torch.float64))
    right = right / right.norm()
    true_up = torch.linalg.cross(right, lookat)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, true_up, -lookat, position
    return c2w


def threestudio_mvp(c2w, fovy, width, height, near=0.01, far=100.0):
    """mvp = proj @ w2c with threestudio's projection (y flipped for nvdiffrast)."""
    proj = torch.zeros(4, 4, dtype=torch.float64)
    proj[0, 0] = 1.0 / (math.tan(fovy / 2) * width / height)
    proj[1, 1] = -1.0 / math.tan(fovy / 2)
    proj[2, 2] = -(far + near) / (far - near)
    proj[2, 3] = -2.0 * far * near / (far - near)
    proj[3, 2] = -1.0
    return proj @ torch.linalg.inv(c2w)


def axis_camera(width, height, fovy=math.radians(50.0), dtype=torch.float64):
    """OpenCV camera at the origin looking along +z: (viewmats [1,4,4], Ks [1,3,3])."""
    viewmats = torch.eye(4, dtype=dtype)[None]
    Ks = intrinsics_from_fovy(torch.tensor([fovy], dtype=dtype), height, width)
    return viewmats, Ks


def render(device, means, scales, opacities, colors, viewmats, Ks, width, height, quats=None, **kwargs):
    n = means.shape[0]
    if quats is None:
        quats = torch.tensor([IDENTITY_QUAT], dtype=means.dtype).expand(n, 4)
    return on_device(device, rasterize_gaussians, means, quats, scales, opacities, viewmats, Ks,
                     width, height, colors=colors, **kwargs)


def random_scene(n, seed, dtype=torch.float64, radius=0.6):
    g = torch.Generator().manual_seed(seed)
    return dict(
        means=(torch.rand(n, 3, generator=g, dtype=dtype) * 2 - 1) * radius,
        scales=torch.rand(n, 3, generator=g, dtype=dtype) * 0.12 + 0.04,
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g, dtype=dtype), dim=-1),
        opacities=torch.rand(n, 1, generator=g, dtype=dtype) * 0.7 + 0.2,
        colors=torch.rand(n, 3, generator=g, dtype=dtype),
    )


def two_views(width, height, dtype=torch.float64):
    c2w = torch.stack([look_at_c2w((2.5, 0.3, 0.4)), look_at_c2w((-0.4, 2.2, -0.6))]).to(dtype)
    fovy = torch.tensor([math.radians(45.0), math.radians(60.0)], dtype=dtype)
    return opengl_c2w_to_viewmats(c2w), intrinsics_from_fovy(fovy, height, width)


def test_camera_conversion_keeps_the_centre_and_puts_the_target_in_front(device):
    c2w = look_at_c2w((1.0, -2.0, 0.5))[None]
    viewmats = on_device(device, opengl_c2w_to_viewmats, c2w)
    assert torch.allclose(on_device(device, camera_centers, viewmats)[0], c2w[0, :3, 3], atol=1e-12)
    origin_in_camera = viewmats[0] @ torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    assert origin_in_camera[2] == pytest.approx(c2w[0, :3, 3].norm().item())
    assert origin_in_camera[:2].abs().max() < 1e-12


def test_points_project_to_the_pixel_given_by_mvp_mtx(device):
    width, height, fovy = 48, 32, math.radians(55.0)
    c2w = look_at_c2w((2.0, 1.5, 1.0))
    g = torch.Generator().manual_seed(3)
    points = (torch.rand(20, 3, generator=g, dtype=torch.float64) * 2 - 1) * 0.7
    clip = (threestudio_mvp(c2w, fovy, width, height) @ torch.cat(
        [points, torch.ones(20, 1, dtype=torch.float64)], dim=1).T).T
    ndc = clip[:, :2] / clip[:, 3:]
    # NDC -> pixel with integer pixel centres: ((ndc + 1) * size - 1) / 2; threestudio's
    # projection flips y, so +ndc_y is down, like image rows.
    expected = torch.stack([((ndc[:, 0] + 1) * width - 1) / 2, ((ndc[:, 1] + 1) * height - 1) / 2], dim=1)
    viewmats = opengl_c2w_to_viewmats(c2w[None])
    Ks = intrinsics_from_fovy(torch.tensor([fovy], dtype=torch.float64), height, width)
    covariances = torch.eye(3, dtype=torch.float64).expand(20, 3, 3) * 1e-4
    projected = on_device(device, project_gaussians, points, covariances, viewmats, Ks, width, height)
    assert torch.allclose(projected.means2d[0], expected, atol=1e-9)


def test_single_gaussian_renders_the_analytic_2d_footprint(device):
    width, height = 41, 35
    viewmats, Ks = axis_camera(width, height)
    fx = Ks[0, 0, 0].item()
    z, sx, sy, opacity, angle = 3.0, 0.09, 0.04, 0.8, 0.5
    quat = torch.tensor([[math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2)]], dtype=torch.float64)
    out = render(device, torch.tensor([[0.0, 0.0, z]], dtype=torch.float64),
                 torch.tensor([[sx, sy, 0.01]], dtype=torch.float64),
                 torch.tensor([[opacity]], dtype=torch.float64),
                 torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float64),
                 viewmats, Ks, width, height, quats=quat)
    # Expected: centre at the principal point ((W-1)/2, (H-1)/2); covariance J R S^2 R^T J^T
    # (J = f/z at the axis) plus 0.3 px^2; alpha = o exp(-d^T Sigma^-1 d / 2), kept where
    # >= 1/255 and inside the 16-px tiles that the 3-sigma box touches.
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    cov = rot @ np.diag([(fx * sx / z) ** 2, (fx * sy / z) ** 2]) @ rot.T + 0.3 * np.eye(2)
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    ys, xs = np.mgrid[0:height, 0:width]
    d = np.stack([xs - centre[0], ys - centre[1]], axis=-1)
    alpha = opacity * np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, np.linalg.inv(cov), d))
    radius = math.ceil(3 * math.sqrt(np.linalg.eigvalsh(cov).max()))
    lo = np.floor((centre - radius) / 16).clip(0)
    hi = np.floor((centre + radius + 15) / 16)
    in_tiles = ((xs // 16 >= lo[0]) & (xs // 16 < hi[0]) & (ys // 16 >= lo[1]) & (ys // 16 < hi[1]))
    expected = np.where((alpha >= 1 / 255) & in_tiles, alpha, 0.0)
    assert out.radii[0, 0].item() == radius
    assert np.abs(out.alphas[0, ..., 0].detach().numpy() - expected).max() < 1e-12
    assert out.alphas.max().item() == pytest.approx(opacity, abs=1e-12)
    assert np.allclose(out.depths[0, ..., 0].detach().numpy(), expected * z, atol=1e-12)


@pytest.mark.parametrize("camera_x", [3.0, -3.0])
def test_overlapping_gaussians_composite_front_to_back_from_both_sides(camera_x, device):
    width = height = 21
    means = torch.tensor([[0.3, 0.0, 0.0], [-0.3, 0.0, 0.0]], dtype=torch.float64)
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    opacities = torch.tensor([[0.6], [0.7]], dtype=torch.float64)
    viewmats = opengl_c2w_to_viewmats(look_at_c2w((camera_x, 0.0, 0.0))[None])
    Ks = intrinsics_from_fovy(torch.tensor([0.8], dtype=torch.float64), height, width)
    out = render(device, means, torch.full((2, 3), 0.1, dtype=torch.float64), opacities, colors,
                 viewmats, Ks, width, height)
    near, far = (0, 1) if camera_x > 0 else (1, 0)
    expected = opacities[near] * colors[near] + (1 - opacities[near]) * opacities[far] * colors[far]
    pixel = out.colors[0, height // 2, width // 2]
    assert torch.allclose(pixel, expected, atol=1e-12)
    total = 1 - (1 - opacities[0]) * (1 - opacities[1])
    assert out.alphas[0, height // 2, width // 2, 0].item() == pytest.approx(total.item(), abs=1e-12)
    depth_near, depth_far = abs(camera_x) - 0.3, abs(camera_x) + 0.3
    expected_depth = opacities[near] * depth_near + (1 - opacities[near]) * opacities[far] * depth_far
    assert out.depths[0, height // 2, width // 2, 0].item() == pytest.approx(expected_depth.item(), abs=1e-12)


def stacked_on_axis(device, opacity_values, colors, dense):
    width = height = 17
    viewmats, Ks = axis_camera(width, height)
    n = len(opacity_values)
    means = torch.tensor([[0.0, 0.0, 2.0 + 0.1 * i] for i in range(n)], dtype=torch.float64)
    out = render(device, means, torch.full((n, 3), 0.05, dtype=torch.float64),
                 torch.tensor(opacity_values, dtype=torch.float64)[:, None],
                 torch.tensor(colors, dtype=torch.float64), viewmats, Ks, width, height,
                 dense=dense)
    return out.colors[0, height // 2, width // 2], out.alphas[0, height // 2, width // 2, 0]


@pytest.mark.parametrize("dense", [False, True])
def test_alpha_is_clamped_at_0_99(dense, device):
    _, alpha = stacked_on_axis(device, [1.0], [[1.0, 1.0, 1.0]], dense)
    assert alpha.item() == pytest.approx(0.99, abs=1e-12)


@pytest.mark.parametrize("dense", [False, True])
def test_alpha_below_1_over_255_is_skipped(dense, device):
    color, alpha = stacked_on_axis(device, [0.0035, 0.5], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dense)
    assert alpha.item() == pytest.approx(0.5, abs=1e-12)
    assert color[0].item() == 0.0
    _, alpha = stacked_on_axis(device, [0.0045], [[1.0, 0.0, 0.0]], dense)
    assert alpha.item() == pytest.approx(0.0045, abs=1e-12)


@pytest.mark.parametrize("dense", [False, True])
def test_compositing_stops_before_transmittance_falls_below_1e_4(dense, device):
    black, red = [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]
    # After three Gaussians of alpha 0.95, T = 0.05^3 = 1.25e-4; a fourth would leave
    # 6.25e-6 < 1e-4, so it is not added and T stays 1.25e-4.
    color, alpha = stacked_on_axis(device, [0.95] * 4, [black, black, black, red], dense)
    assert color[0].item() == 0.0
    assert alpha.item() == pytest.approx(1 - 0.05 ** 3, abs=1e-12)
    color, alpha = stacked_on_axis(device, [0.95] * 3, [black, black, red], dense)
    assert color[0].item() == pytest.approx(0.95 * 0.05 ** 2, abs=1e-12)


def test_tiled_equals_dense_in_values_and_gradients(device):
    width, height = 37, 29
    scene = random_scene(60, seed=1)
    viewmats, Ks = two_views(width, height)
    results = []
    for dense in (False, True):
        params = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
        out = on_device(device, rasterize_gaussians, params["means"], params["quats"], params["scales"],
                        params["opacities"], viewmats, Ks, width, height,
                        colors=params["colors"], normals=params["means"] * 0 + 0.5,
                        dense=dense, chunk_elements=4096)
        weights = torch.linspace(-1, 1, out.colors.numel(), dtype=torch.float64).reshape(out.colors.shape)
        loss = (out.colors * weights).sum() + out.alphas.sum() + 0.1 * out.depths.sum() + out.normals.sum()
        grads = torch.autograd.grad(loss, [*params.values(), out.viewspace_points])
        results.append(([out.colors, out.alphas, out.depths, out.normals], grads, out.radii))
    (tiled_images, tiled_grads, tiled_radii), (dense_images, dense_grads, dense_radii) = results
    assert torch.equal(tiled_radii, dense_radii) and int((tiled_radii > 0).sum()) > 60
    for tiled, dense in zip(tiled_images, dense_images):
        assert torch.allclose(tiled, dense, atol=1e-12)
    for tiled, dense in zip(tiled_grads, dense_grads):
        assert dense.abs().max() > 0
        assert torch.allclose(tiled, dense, atol=1e-10)


def test_tiles_that_stop_early_and_tiles_that_do_not_match_dense(device):
    # Left half: a stack of opaque Gaussians (its pixels stop after three of them); right
    # half: a stack of faint ones (never stops). With small slices, the left tiles finish
    # while the right ones continue, in values and in gradients.
    width, height = 32, 16
    viewmats, Ks = axis_camera(width, height)
    depths = torch.linspace(2.0, 3.0, 10, dtype=torch.float64)
    # Each stack lies on a ray through the camera, so its Gaussians share a pixel centre.
    left = torch.stack([-0.25 * depths, torch.zeros_like(depths), depths], dim=-1)
    right = left * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    scene = dict(means=torch.cat([left, right]),
                 scales=torch.full((20, 3), 0.2, dtype=torch.float64),
                 opacities=torch.cat([torch.full((10, 1), 0.95), torch.full((10, 1), 0.3)]).double(),
                 colors=torch.rand(20, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64))
    results = []
    for dense in (False, True):
        params = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
        out = render(device, params["means"], params["scales"], params["opacities"], params["colors"],
                     viewmats, Ks, width, height, dense=dense, chunk_elements=128)
        loss = (out.colors * torch.linspace(0, 1, 3, dtype=torch.float64)).sum() + out.depths.sum()
        results.append((out, torch.autograd.grad(loss, list(params.values()))))
    (tiled, tiled_grads), (dense, dense_grads) = results
    left_pixel, right_pixel = tiled.means2d[0, [0, 10]].round().long()
    left_transmittance = 1 - tiled.alphas[0, left_pixel[1], left_pixel[0], 0].item()
    assert 1e-4 <= left_transmittance < 1e-3
    assert 1 - tiled.alphas[0, right_pixel[1], right_pixel[0], 0].item() > 0.7 ** 10
    for a, b in ((tiled.colors, dense.colors), (tiled.alphas, dense.alphas), (tiled.depths, dense.depths)):
        assert torch.allclose(a, b, atol=1e-12)
    for a, b in zip(tiled_grads, dense_grads):
        assert b.abs().max() > 0 and torch.allclose(a, b, atol=1e-10)


def test_gradcheck_float64_on_a_tiny_scene(device):
    width, height = 10, 8
    scene = random_scene(4, seed=5, radius=0.3)
    viewmats, Ks = two_views(width, height)
    normals = torch.nn.functional.normalize(torch.randn(4, 3, generator=torch.Generator().manual_seed(2),
                                                        dtype=torch.float64), dim=-1)

    def images(means, scales, quats, opacities, colors):
        out = on_device(device, rasterize_gaussians, means, quats, scales, opacities, viewmats, Ks,
                        width, height, colors=colors, normals=normals, tile_size=4, block_size=2,
                        chunk_elements=4)
        return out.colors, out.alphas, out.depths, out.normals

    inputs = tuple(scene[k].clone().requires_grad_(True)
                   for k in ("means", "scales", "quats", "opacities", "colors"))
    assert torch.autograd.gradcheck(images, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_gradcheck_float64_through_spherical_harmonics(device):
    width, height = 8, 8
    scene = random_scene(3, seed=9, radius=0.3)
    viewmats, Ks = two_views(width, height)
    sh = torch.randn(3, 16, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 0.3

    def image(means, sh_coefficients):
        return on_device(device, rasterize_gaussians, means, scene["quats"], scene["scales"],
                         scene["opacities"], viewmats, Ks, width, height,
                         sh_coefficients=sh_coefficients, sh_degree=3).colors

    inputs = (scene["means"].clone().requires_grad_(True), sh.requires_grad_(True))
    assert torch.autograd.gradcheck(image, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_viewspace_gradient_is_the_pixel_gradient_times_half_the_image_size(device):
    width, height = 30, 24
    viewmats, Ks = axis_camera(width, height)
    fx, z = Ks[0, 0, 0].item(), 2.5
    colors = torch.tensor([[0.9, 0.2, 0.4]], dtype=torch.float64)
    weights = torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss_at(shift_x, shift_y):
        # On the optical axis, moving the mean by (dx, dy) z / f moves its projection by
        # (dx, dy) pixels; the isotropic 2D covariance is stationary there.
        mean = torch.tensor([[shift_x * z / fx, shift_y * z / fx, z]], dtype=torch.float64)
        out = render(device, mean, torch.full((1, 3), 0.05, dtype=torch.float64),
                     torch.tensor([[0.7]], dtype=torch.float64), colors, viewmats, Ks, width, height)
        return (out.colors * weights).sum(), out.viewspace_points

    loss, viewspace_points = loss_at(0.0, 0.0)
    loss.backward()
    step = 1e-4
    d_pixel_x = (loss_at(step, 0.0)[0] - loss_at(-step, 0.0)[0]).item() / (2 * step)
    d_pixel_y = (loss_at(0.0, step)[0] - loss_at(0.0, -step)[0]).item() / (2 * step)
    assert abs(d_pixel_x) > 1e-3 and abs(d_pixel_y) > 1e-3
    grad = viewspace_points.grad[0, 0]
    assert grad[0].item() == pytest.approx(d_pixel_x * width / 2, rel=1e-5)
    assert grad[1].item() == pytest.approx(d_pixel_y * height / 2, rel=1e-5)


def test_gaussians_behind_the_near_plane_or_off_screen_are_not_rendered(device):
    width = height = 16
    viewmats, Ks = axis_camera(width, height)
    means = torch.tensor([[0.0, 0.0, 0.15], [0.0, 0.0, -2.0], [50.0, 0.0, 2.0], [0.0, 0.0, 2.0]],
                         dtype=torch.float64)
    out = render(device, means, torch.full((4, 3), 0.05, dtype=torch.float64),
                 torch.full((4, 1), 0.9, dtype=torch.float64), torch.ones(4, 3, dtype=torch.float64),
                 viewmats, Ks, width, height)
    assert out.radii[0].tolist()[:3] == [0, 0, 0] and out.radii[0, 3] > 0


def test_bad_inputs_raise_errors_naming_the_argument(device):
    viewmats, Ks = axis_camera(8, 8)
    means = torch.zeros(2, 3, dtype=torch.float64)
    good = dict(quats=torch.zeros(2, 4), scales=torch.ones(2, 3), opacities=torch.ones(2, 1),
                colors=torch.ones(2, 3))
    with pytest.raises(ValueError, match="quats"):
        on_device(device, rasterize_gaussians, means, torch.zeros(3, 4), good["scales"], good["opacities"],
                  viewmats, Ks, 8, 8, colors=good["colors"])
    with pytest.raises(ValueError, match="exactly one of sh_coefficients and colors"):
        on_device(device, rasterize_gaussians, means, good["quats"], good["scales"], good["opacities"],
                  viewmats, Ks, 8, 8)
    with pytest.raises(ValueError, match="sh_degree=2 needs 9"):
        on_device(device, rasterize_gaussians, means, good["quats"], good["scales"], good["opacities"],
                  viewmats, Ks, 8, 8, sh_coefficients=torch.zeros(2, 4, 3), sh_degree=2)
    with pytest.raises(ValueError, match="fovy"):
        on_device(device, intrinsics_from_fovy, torch.tensor([4.0]), 8, 8)


CUDA_BACKENDS = importable_cuda_backends() if torch.cuda.is_available() else []
CUDA_REASON = ("needs CUDA and diff_gaussian_rasterization or gsplat; this machine has "
               f"CUDA={torch.cuda.is_available()}, importable backends={importable_cuda_backends()}")


@pytest.mark.skipif(not CUDA_BACKENDS, reason=CUDA_REASON)
@pytest.mark.parametrize("backend", CUDA_BACKENDS or ["none"])
def test_cuda_backend_matches_the_torch_backend(backend):
    """Tolerance: 2e-3 on images (float32 CUDA vs torch, exp approximations), 5% + 1e-4 on
    view-space gradients; radii must agree except for +-1 pixel rounding."""
    function = {"diff-gaussian-rasterization": rasterize_with_diff_gaussian_rasterization,
                "gsplat": rasterize_with_gsplat}[backend]
    width, height = 64, 48
    scene = {k: v.float().cuda() for k, v in random_scene(200, seed=3).items()}
    viewmats, Ks = (t.float().cuda() for t in two_views(width, height))
    sh = torch.zeros(200, 4, 3, device="cuda")
    sh[:, 0] = (scene["colors"] - 0.5) / 0.28209479177387814
    outputs = []
    for fn in (function, rasterize_gaussians):
        out = fn(scene["means"], scene["quats"], scene["scales"], scene["opacities"], viewmats, Ks,
                 width, height, sh_coefficients=sh, sh_degree=1, normals=scene["means"] * 0 + 0.5)
        (out.colors.sum() + out.alphas.sum() + out.depths.mean()).backward()
        outputs.append(out)
    cuda, reference = outputs
    for a, b in ((cuda.colors, reference.colors), (cuda.alphas, reference.alphas),
                 (cuda.normals, reference.normals)):
        assert (a - b).abs().max() < 2e-3
    assert ((cuda.radii - reference.radii).abs() <= 1).all()
    assert torch.allclose(cuda.viewspace_points.grad, reference.viewspace_points.grad, rtol=5e-2, atol=1e-4)
