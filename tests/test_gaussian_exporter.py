"""``stabledreamer-gaussian-exporter``: the outputs threestudio's ``SaverMixin`` saves,
exporting Gaussians that live on ``--device``."""
import numpy as np
import pytest
import torch
import trimesh
from plyfile import PlyData

import threestudio
import threestudio_stabledreamer.exporters  # noqa: F401  (registers the exporter)
import threestudio_stabledreamer.geometry  # noqa: F401  (registers the geometry)
from threestudio.utils.saving import SaverMixin

pytestmark = pytest.mark.device


def make_geometry(device="cpu", **init):
    cfg = {"init": {"type": "random", "num_points": 300, "radius": 0.4, "opacity": 0.9, "seed": 0, **init}}
    return threestudio.find("stabledreamer-gaussian")(cfg).to(device)


def make_exporter(geometry, **cfg):
    return threestudio.find("stabledreamer-gaussian-exporter")(
        {"mesh_resolution": 32, **cfg}, geometry=geometry, material=None, background=None
    )


def test_outputs_are_files_the_saver_mixin_copies(tmp_path, device):
    geometry = make_geometry(device)
    outputs = make_exporter(geometry)()
    assert [(o.save_name, o.save_type) for o in outputs] == [
        ("model.ply", "file"), ("model-mesh.obj", "file"), ("model-mesh.glb", "file")
    ]
    saver = SaverMixin()
    saver.set_save_dir(str(tmp_path))
    for output in outputs:
        saver.save_file(f"it7-export/{output.save_name}", **output.params)
    export = tmp_path / "it7-export"

    ply = PlyData.read(str(export / "model.ply"))
    means = np.stack([ply["vertex"][axis] for axis in "xyz"], axis=1)
    np.testing.assert_array_equal(means, geometry.means.detach().cpu().numpy())
    reloaded = make_geometry(device, type="ply", path=str(export / "model.ply"))
    for name in ("means", "log_scales", "rotations", "opacity_logits", "sh_dc"):
        torch.testing.assert_close(getattr(reloaded, f"_{name}"), getattr(geometry, f"_{name}"))

    obj = trimesh.load(export / "model-mesh.obj", force="mesh", process=False)
    glb = trimesh.load(export / "model-mesh.glb", force="mesh", process=False)
    assert len(obj.faces) == len(glb.faces) > 0
    # Opaque Gaussians in a ball of radius 0.4: the half-opaque surface lies near its rim.
    radii = np.linalg.norm(obj.vertices, axis=1)
    assert 0.3 < np.median(radii) < 0.55
    # constant grey initial colour (0.5) -> vertex colours 128
    np.testing.assert_allclose(np.asarray(glb.visual.vertex_colors)[:, :3], 128, atol=1)


def test_format_selection_and_name(tmp_path, device):
    outputs = make_exporter(make_geometry(device), save_name="corgi", mesh_formats=["ply"], save_gaussians=False)()
    assert [o.save_name for o in outputs] == ["corgi-mesh.ply"]
    assert make_exporter(make_geometry(), mesh_formats=[], save_gaussians=False)() == []


def test_unknown_mesh_format_names_the_field():
    with pytest.raises(ValueError, match=r"exporter\.mesh_formats.*'stl'"):
        make_exporter(make_geometry(), mesh_formats=["obj", "stl"])


@pytest.mark.parametrize(
    "field, value",
    [("mesh_resolution", 1), ("mesh_level", 0.0), ("cutoff_sigma", -1.0), ("bbox_padding", -0.1),
     ("color_neighbours", 0)],
)
def test_out_of_range_mesh_setting_names_the_field_and_value(field, value):
    with pytest.raises(ValueError, match=rf"exporter\.{field} must be .*, got {value}"):
        make_exporter(make_geometry(), **{field: value})


def test_no_surface_above_the_level_exports_only_the_gaussians(device):
    outputs = make_exporter(make_geometry(device, opacity=0.01), mesh_level=0.9)()
    assert [o.save_name for o in outputs] == ["model.ply"]


def test_zero_gaussians_export_an_empty_ply_and_no_mesh(tmp_path, device):
    from threestudio_stabledreamer.core.ply import write_gaussian_ply

    empty = tmp_path / "empty.ply"
    write_gaussian_ply(empty, {name: getattr(make_geometry(), f"_{name}")[:0]
                               for name in ("means", "log_scales", "rotations", "opacity_logits", "sh_dc", "sh_rest")})
    geometry = threestudio.find("stabledreamer-gaussian")(
        {"init": {"type": "ply", "path": str(empty)}, "scene_extent": 0.5}
    ).to(device)
    assert geometry.num_gaussians == 0
    outputs = make_exporter(geometry)()
    assert [o.save_name for o in outputs] == ["model.ply"]
    assert PlyData.read(outputs[0].params["src_path"])["vertex"].count == 0
