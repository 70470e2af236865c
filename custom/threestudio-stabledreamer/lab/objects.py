"""Procedural ground-truth objects made of 3D Gaussians, each with a distinct front.

World conventions (threestudio's): z is up; the front of every object faces +x, i.e. the
camera at azimuth 0 sees it; azimuth grows from +x towards +y. Objects fit in a ball of
radius 0.5 around the origin (the random cameras sit 1.5-2.0 away) and are mirror
symmetric about the xz-plane (y -> -y), like a face: turning an object by 180 degrees
about z and reflecting it through the yz-plane then give the same object, so "the front
copied onto the back" has one meaning.

Every object is a set of flat, opaque surface Gaussians (shortest axis along the surface
normal) with a constant colour each. ``front_feature`` marks the Gaussians of the
features seen only from the front (eyes and mouth, a door and windows, a beak), which the
multi-face score looks for in back views.
"""
import math
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch
from scipy.spatial.transform import Rotation

SKIN = (0.92, 0.76, 0.62)
HAIR = (0.32, 0.18, 0.08)
DARK = (0.05, 0.05, 0.08)
LIPS = (0.80, 0.12, 0.12)
WALL = (0.93, 0.86, 0.55)
ROOF = (0.70, 0.15, 0.12)
DOOR = (0.40, 0.22, 0.08)
WINDOW = (0.25, 0.55, 0.90)
FEATHER = (0.98, 0.85, 0.15)
BEAK = (0.95, 0.45, 0.05)
WING = (0.85, 0.65, 0.10)

DISK_FLATNESS = 0.2  # normal-axis scale relative to the in-plane scale
OPACITY = 0.95


@dataclass
class GaussianObject:
    """Activated Gaussians: means [N,3] (world units), quats [N,4] (wxyz, unit), scales
    [N,3] (standard deviations), opacities [N] in (0, 1), colors [N,3] RGB in [0, 1],
    front_feature [N] bool."""

    name: str
    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
    front_feature: torch.Tensor

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]


def fibonacci_directions(count: int) -> torch.Tensor:
    """``count`` near-uniform unit vectors [count, 3] on the sphere (Fibonacci lattice)."""
    index = torch.arange(count, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * index / count
    radius = (1.0 - z * z).sqrt()
    angle = math.pi * (3.0 - math.sqrt(5.0)) * index
    return torch.stack([radius * angle.cos(), radius * angle.sin(), z], dim=-1).float()


def quaternions_facing(normals: torch.Tensor) -> torch.Tensor:
    """Unit quaternions [N,4] (wxyz) of rotations taking the local z axis to ``normals`` [N,3]."""
    normals = torch.nn.functional.normalize(normals.double(), dim=-1)
    helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).expand_as(normals).clone()
    helper[normals[:, 0].abs() > 0.9] = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    tangent = torch.nn.functional.normalize(torch.cross(helper, normals, dim=-1), dim=-1)
    bitangent = torch.cross(normals, tangent, dim=-1)
    matrices = torch.stack([tangent, bitangent, normals], dim=-1).numpy()
    xyzw = torch.from_numpy(Rotation.from_matrix(matrices).as_quat())
    return xyzw[:, [3, 0, 1, 2]].float()


class _Builder:
    """Collects surface disks (position, outward normal, in-plane radius, colour, feature flag)."""

    def __init__(self, name: str):
        self.name = name
        self.parts = []

    def add(self, points, normals, radius: float, colours, feature) -> None:
        count = points.shape[0]
        colours = torch.as_tensor(colours, dtype=torch.float32)
        if colours.ndim == 1:
            colours = colours.expand(count, 3)
        feature = torch.as_tensor(feature, dtype=torch.bool)
        if feature.ndim == 0:
            feature = feature.expand(count)
        self.parts.append((points.float(), normals.float(), torch.full((count,), radius), colours, feature))

    def build(self) -> GaussianObject:
        points, normals, radii, colours, feature = (torch.cat(t) for t in zip(*self.parts))
        scales = torch.stack([radii, radii, radii * DISK_FLATNESS], dim=-1)
        return GaussianObject(
            name=self.name,
            means=points,
            quats=quaternions_facing(normals),
            scales=scales,
            opacities=torch.full((points.shape[0],), OPACITY),
            colors=colours.clone(),
            front_feature=feature.clone(),
        )


def _ellipsoid(centre, radii, count: int):
    """Points [count,3] and outward normals on the ellipsoid with semi-axes ``radii``."""
    directions = fibonacci_directions(count)
    radii_t = torch.tensor(radii)
    points = directions * radii_t + torch.tensor(centre)
    normals = torch.nn.functional.normalize(directions / radii_t, dim=-1)
    return points, normals, directions


def _disk_spacing(area: float, count: int) -> float:
    """In-plane standard deviation that lets ``count`` disks cover ``area`` without holes."""
    return 0.75 * math.sqrt(area / count)


def _angles(directions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(azimuth, elevation) in degrees of unit vectors [N,3] (azimuth 0 = +x)."""
    azimuth = torch.rad2deg(torch.atan2(directions[:, 1], directions[:, 0]))
    elevation = torch.rad2deg(torch.asin(directions[:, 2].clamp(-1, 1)))
    return azimuth, elevation


def head() -> GaussianObject:
    """A head: skin-coloured face with dark eyes and red lips at the front, hair at the back and top."""
    builder = _Builder("head")
    radius, count = 0.36, 700
    points, normals, directions = _ellipsoid((0.0, 0.0, 0.0), (radius, 0.9 * radius, 1.1 * radius), count)
    azimuth, elevation = _angles(directions)
    colours = torch.tensor(SKIN).repeat(count, 1)
    hair = (azimuth.abs() > 100) | (elevation > 45)
    colours[hair] = torch.tensor(HAIR)
    eyes = ((azimuth.abs() - 22).abs() < 9) & ((elevation - 15).abs() < 8)
    lips = (azimuth.abs() < 22) & ((elevation + 25).abs() < 6)
    colours[eyes] = torch.tensor(DARK)
    colours[lips] = torch.tensor(LIPS)
    builder.add(points, normals, _disk_spacing(4 * math.pi * radius**2, count), colours, eyes | lips)
    nose_points, nose_normals, _ = _ellipsoid((radius * 0.98, 0.0, -0.02), (0.06, 0.04, 0.06), 30)
    builder.add(nose_points, nose_normals, 0.017, SKIN, True)
    return builder.build()


def _box_face(centre, u, v, half_u: float, half_v: float, spacing: float):
    """Grid points on a rectangle centred at ``centre`` spanned by unit vectors u, v."""
    centre, u, v = (torch.tensor(x, dtype=torch.float32) for x in (centre, u, v))
    nu, nv = max(2, round(2 * half_u / spacing)), max(2, round(2 * half_v / spacing))
    su = (torch.arange(nu) + 0.5) / nu * 2 - 1
    sv = (torch.arange(nv) + 0.5) / nv * 2 - 1
    gu, gv = torch.meshgrid(su * half_u, sv * half_v, indexing="ij")
    points = centre + gu.reshape(-1, 1) * u + gv.reshape(-1, 1) * v
    normal = torch.cross(u, v, dim=0)
    return points, normal.expand_as(points), gu.reshape(-1), gv.reshape(-1)


def house() -> GaussianObject:
    """A house: yellow walls, red roof; a door and two windows on the front wall only."""
    builder = _Builder("house")
    hx, hy, hz, base = 0.3, 0.3, 0.2, -0.25
    spacing = 0.045
    radius = 0.75 * spacing
    cz = base + hz
    walls = [
        ((hx, 0, cz), (0, 1, 0), (0, 0, 1), hy, hz),  # front (+x)
        ((-hx, 0, cz), (0, -1, 0), (0, 0, 1), hy, hz),  # back
        ((0, hy, cz), (-1, 0, 0), (0, 0, 1), hx, hz),  # left (+y)
        ((0, -hy, cz), (1, 0, 0), (0, 0, 1), hx, hz),  # right
        ((0, 0, base), (0, -1, 0), (1, 0, 0), hy, hx),  # floor, facing down
    ]
    for index, (centre, u, v, half_u, half_v) in enumerate(walls):
        points, normals, gu, gv = _box_face(centre, u, v, half_u, half_v, spacing)
        colours = torch.tensor(WALL).repeat(points.shape[0], 1)
        feature = torch.zeros(points.shape[0], dtype=torch.bool)
        if index == 0:
            door = (gu.abs() < 0.07) & (gv < 0.02)
            windows = ((gu.abs() - 0.19).abs() < 0.06) & ((gv - 0.06).abs() < 0.06)
            colours[door] = torch.tensor(DOOR)
            colours[windows] = torch.tensor(WINDOW)
            feature = door | windows
        builder.add(points, normals, radius, colours, feature)
    # gable roof: two slopes meeting along the y axis above the walls
    top, ridge = base + 2 * hz, 0.2
    slope = math.hypot(hx + 0.04, ridge)
    for sign in (1.0, -1.0):
        # from the eave (x = sign * (hx + 0.04), z = top) up to the ridge (x = 0)
        v = (-sign * (hx + 0.04) / slope, 0.0, ridge / slope)
        centre = (sign * (hx + 0.04) / 2, 0.0, top + ridge / 2)
        points, normals, _, _ = _box_face(centre, (0.0, 1.0, 0.0), v, hy + 0.04, slope / 2, spacing)
        if normals[0, 0] * sign < 0:
            normals = -normals
        builder.add(points, normals, radius, ROOF, False)
    # gable ends (triangles) in wall colour
    for sign in (1.0, -1.0):
        points, normals, gu, gv = _box_face((0, sign * hy, top + ridge / 2), (1, 0, 0), (0, 0, 1), hx, ridge / 2, spacing)
        inside = gu.abs() <= (hx + 0.04) * (1 - (gv + ridge / 2) / ridge)
        normals = torch.tensor([0.0, sign, 0.0]).expand(int(inside.sum()), 3)
        builder.add(points[inside], normals, radius, WALL, False)
    return builder.build()


def duck() -> GaussianObject:
    """A duck: yellow body and head, an orange beak and dark eyes at the front, a tail at the back."""
    builder = _Builder("duck")
    body_radii, body_count = (0.3, 0.2, 0.17), 450
    points, normals, _ = _ellipsoid((0.0, 0.0, -0.12), body_radii, body_count)
    builder.add(points, normals, _disk_spacing(0.8, body_count), FEATHER, False)
    for sign in (1.0, -1.0):
        wing_points, wing_normals, _ = _ellipsoid((-0.02, sign * 0.19, -0.08), (0.18, 0.03, 0.09), 80)
        builder.add(wing_points, wing_normals, 0.025, WING, False)
    tail_points, tail_normals, _ = _ellipsoid((-0.3, 0.0, 0.0), (0.07, 0.06, 0.1), 60)
    builder.add(tail_points, tail_normals, 0.021, FEATHER, False)
    head_radius, head_count = 0.14, 260
    points, normals, directions = _ellipsoid((0.18, 0.0, 0.15), (head_radius,) * 3, head_count)
    azimuth, elevation = _angles(directions)
    colours = torch.tensor(FEATHER).repeat(head_count, 1)
    eyes = ((azimuth.abs() - 50).abs() < 14) & ((elevation - 18).abs() < 14)
    colours[eyes] = torch.tensor(DARK)
    builder.add(points, normals, _disk_spacing(4 * math.pi * head_radius**2, head_count), colours, eyes)
    beak_points, beak_normals, _ = _ellipsoid((0.33, 0.0, 0.12), (0.09, 0.05, 0.03), 100)
    builder.add(beak_points, beak_normals, 0.017, BEAK, True)
    return builder.build()


OBJECTS: Dict[str, Callable[[], GaussianObject]] = {"head": head, "house": house, "duck": duck}


def make_object(name: str) -> GaussianObject:
    """The ground-truth object called ``name`` (one of ``OBJECTS``)."""
    if name not in OBJECTS:
        raise ValueError(f"lab object must be one of {sorted(OBJECTS)}, got {name!r}")
    return OBJECTS[name]()


def janus(obj: GaussianObject) -> GaussianObject:
    """The multi-face version of ``obj``: its back half (x < 0) replaced by its front half
    turned by 180 degrees about z, so every back view shows the front."""
    front = obj.means[:, 0] >= 0
    turn = torch.tensor([-1.0, -1.0, 1.0])  # 180 degrees about z: (x, y, z) -> (-x, -y, z)
    turned_means = obj.means[front] * turn
    # rotation by 180 degrees about z as the quaternion (0, 0, 0, 1), composed on the left
    w, x, y, z = obj.quats[front].unbind(-1)
    turned_quats = torch.stack([-z, -y, x, w], dim=-1)
    return GaussianObject(
        name=f"{obj.name}-janus",
        means=torch.cat([obj.means[front], turned_means]),
        quats=torch.cat([obj.quats[front], turned_quats]),
        scales=torch.cat([obj.scales[front], obj.scales[front]]),
        opacities=torch.cat([obj.opacities[front], obj.opacities[front]]),
        colors=torch.cat([obj.colors[front], obj.colors[front]]),
        front_feature=torch.cat([obj.front_feature[front], obj.front_feature[front]]),
    )
