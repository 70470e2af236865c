"""Tests of the threestudio renderer ``stabledreamer-gaussian-rasterizer``, on ``--device``."""
import math

import pytest
import torch

import threestudio
import threestudio_stabledreamer.renderers.gaussian_rasterizer  # noqa: F401  (registers)
from threestudio_stabledreamer.core.gaussians import shortest_axis_normals
from threestudio_stabledreamer.core.rasterization import importable_cuda_backends
from threestudio_stabledreamer.core.sh import rgb_to_sh_dc

BACKGROUND = (0.2, 0.4, 0.6)

pytestmark = pytest.mark.device


class TinyGaussians:
    """Test-only geometry exposing the activated properties the renderer reads."""

    def __init__(self, means, scales, rotations, opacities, rgb):
        self.means, self.scales, self.rotations, self.opacities = means, scales, rotations, opacities
        self.sh_coefficients = rgb_to_sh_dc(rgb)[:, None, :]
        self.active_sh_degree = 0

    @property
    def normals(self):
        return shortest_axis_normals(self.scales, self.rotations)


def make_geometry(device):
    means = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.3, 0.1]], device=device, requires_grad=True)
    scales = torch.tensor([[0.15, 0.12, 0.02], [0.1, 0.1, 0.1]], device=device)
    rotations = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.9, 0.1, 0.3, 0.0]], device=device)
    rotations = rotations / rotations.norm(dim=-1, keepdim=True)
    opacities = torch.tensor([[0.9], [0.6]], device=device)
    rgb = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]], device=device)
    return TinyGaussians(means, scales, rotations, opacities, rgb)


def make_batch(device, width=24, height=20):
    """Two threestudio-style views (OpenGL c2w, fovy in radians, rays_d [B,H,W,3]) on ``device``."""
    c2ws, dirs = [], []
    for position in ((2.0, 0.0, 0.5), (0.0, -2.0, 1.0)):
        position = torch.tensor(position)
        lookat = -position / position.norm()
        right = torch.linalg.cross(lookat, torch.tensor([0.0, 0.0, 1.0]))
        right = right / right.norm()
        up = torch.linalg.cross(right, lookat)
        c2w = torch.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -lookat, position
        c2ws.append(c2w)
    fovy = torch.tensor([math.radians(50.0), math.radians(40.0)])
    for c2w, fov in zip(c2ws, fovy):
        focal = 0.5 * height / math.tan(fov / 2)
        j, i = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
        camera_dirs = torch.stack([(i - width / 2) / focal, -(j - height / 2) / focal, -torch.ones_like(i)], -1)
        dirs.append(camera_dirs @ c2w[:3, :3].T)
    return {"c2w": torch.stack(c2ws).to(device), "fovy": fovy.to(device),
            "rays_d": torch.stack(dirs).to(device), "height": height, "width": width,
            "elevation": torch.zeros(2, device=device)}


def make_renderer(device, geometry=None, **cfg):
    """The renderer on ``device``; the torch backend unless ``backend`` is given (the CUDA
    backends are compared with it in benchmarks/gpu_check.py)."""
    cfg.setdefault("backend", "torch")
    background = threestudio.find("solid-color-background")({"color": BACKGROUND}).to(device)
    renderer_cls = threestudio.find("stabledreamer-gaussian-rasterizer")
    renderer = renderer_cls(cfg, geometry=geometry or make_geometry(device), material=None,
                            background=background)
    return renderer.to(device)


def test_outputs_have_the_contract_shapes_and_composite_over_the_background(device):
    renderer = make_renderer(device).eval()
    batch = make_batch(device)
    out = renderer(**batch)
    b, h, w = 2, batch["height"], batch["width"]
    shapes = {"comp_rgb": (b, h, w, 3), "comp_rgb_fg": (b, h, w, 3), "comp_rgb_bg": (b, h, w, 3),
              "opacity": (b, h, w, 1), "depth": (b, h, w, 1), "comp_normal": (b, h, w, 3),
              "viewspace_points": (b, 2, 2), "radii": (b, 2), "visibility_filter": (b, 2)}
    assert {k: tuple(out[k].shape) for k in shapes} == shapes
    background = torch.tensor(BACKGROUND, device=device)
    assert torch.allclose(out["comp_rgb_bg"], background.expand(b, h, w, 3))
    expected = out["comp_rgb_fg"] + (1 - out["opacity"]) * background
    assert torch.allclose(out["comp_rgb"], expected, atol=1e-6)
    empty = out["opacity"][..., 0] == 0
    assert empty.any() and (out["opacity"] > 0.5).any()
    assert torch.allclose(out["comp_rgb"][empty], background.expand(int(empty.sum()), 3))
    assert torch.equal(out["visibility_filter"], out["radii"] > 0) and out["visibility_filter"].all()
    assert (out["comp_normal"] >= 0).all() and (out["comp_normal"] <= 1 + 1e-6).all()
    assert (out["comp_normal"][empty] == 0).all()
    covered = out["opacity"][..., 0] > 0.5
    assert ((out["depth"][..., 0][covered] / out["opacity"][..., 0][covered]) > 1.0).all()


def test_viewspace_points_receive_the_screen_space_gradient(device):
    geometry = make_geometry(device)
    out = make_renderer(device, geometry)(**make_batch(device))
    out["comp_rgb"][..., 0].mean().backward()
    grad = out["viewspace_points"].grad
    assert grad is not None and grad.shape == (2, 2, 2) and grad.abs().sum() > 0
    assert geometry.means.grad is not None and geometry.means.grad.abs().sum() > 0


def test_normals_face_the_camera(device):
    # A flat Gaussian lying in the z = 0 plane seen from above: the composited normal is
    # +z whichever sign the shortest axis had, i.e. (0.5, 0.5, 1.0) after mapping to [0,1].
    flat = TinyGaussians(*(torch.tensor(value, device=device) for value in (
        [[0.0, 0.0, 0.0]], [[0.3, 0.3, 0.01]], [[0.0, 1.0, 0.0, 0.0]], [[0.99]], [[0.5, 0.5, 0.5]])))
    assert flat.normals[0, 2] < 0
    batch = make_batch(device)
    c2w = torch.eye(4, device=device)
    c2w[2, 3] = 2.0
    batch["c2w"] = c2w[None].expand(2, 4, 4).clone()
    out = make_renderer(device, flat).eval()(**batch)
    centre = out["comp_normal"][0, batch["height"] // 2, batch["width"] // 2]
    opacity = out["opacity"][0, batch["height"] // 2, batch["width"] // 2, 0]
    assert torch.allclose(centre, torch.tensor([0.5, 0.5, 1.0], device=device) * opacity, atol=1e-5)


def test_background_augmentation_only_in_training(device):
    batch = make_batch(device)
    renderer = make_renderer(device, invert_background_probability=1.0)
    inverted = renderer.train()(**batch)["comp_rgb_bg"]
    assert torch.allclose(inverted, 1 - torch.tensor(BACKGROUND, device=device).expand_as(inverted))
    assert torch.allclose(renderer.eval()(**batch)["comp_rgb_bg"][0, 0, 0], torch.tensor(BACKGROUND, device=device))
    torch.manual_seed(0)
    randomised = make_renderer(device, random_background_probability=1.0).train()(**batch)["comp_rgb_bg"]
    for view in randomised:
        assert torch.allclose(view, view[0, 0].expand_as(view))
    assert not torch.allclose(randomised[0, 0, 0], randomised[1, 0, 0])
    assert not torch.allclose(randomised[0, 0, 0], torch.tensor(BACKGROUND, device=device))


def test_backend_choice_and_errors(device):
    assert make_renderer(device, backend="auto").backend_for(torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match=r"backend must be one of .*available here: \['auto', 'torch'"):
        make_renderer(device, backend="vulkan")
    with pytest.raises(ValueError, match="probability"):
        make_renderer(device, random_background_probability=0.7, invert_background_probability=0.6)


@pytest.mark.skipif("gsplat" in importable_cuda_backends(),
                    reason="gsplat is importable here, so selecting it is not an error")
def test_selecting_a_backend_that_is_not_installed_is_a_clear_error(device):
    with pytest.raises(ValueError, match=r"'gsplat' is not importable here; available here: \['auto', 'torch'"):
        make_renderer(device, backend="gsplat")
