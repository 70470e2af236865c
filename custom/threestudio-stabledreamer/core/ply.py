"""Standard 3DGS PLY files (as written by graphdeco-inria/gaussian-splatting and read by splat viewers).

One ``vertex`` element with float32 properties, all stored pre-activation:
``x y z`` (means), ``nx ny nz`` (zeros), ``f_dc_0..2`` (SH DC per RGB channel),
``f_rest_*`` (3 (K - 1) higher-band coefficients, channel-major: ``f_rest_{c (K-1) + k}``
is band coefficient ``k + 1`` of channel ``c``), ``opacity`` (logit), ``scale_0..2``
(log-scales), ``rot_0..3`` (quaternion w, x, y, z, not necessarily normalised).
"""
from pathlib import Path
from typing import Dict, List, Union

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from .sh import MAX_SH_DEGREE, num_sh_coefficients


def _property_names(num_rest: int) -> List[str]:
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(num_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def write_gaussian_ply(path: Union[str, Path], params: Dict[str, torch.Tensor]) -> None:
    """Write Gaussians given as pre-activation tensors: means [N,3], log_scales [N,3] (or [N,1],
    written to all three scale fields), rotations [N,4] wxyz, opacity_logits [N,1],
    sh_dc [N,1,3], sh_rest [N,K-1,3]."""
    n = params["means"].shape[0]
    rest = params["sh_rest"].detach().float().cpu()
    columns = [
        params["means"].detach().float().cpu(),
        torch.zeros(n, 3),
        params["sh_dc"].detach().float().cpu().reshape(n, 3),
        rest.transpose(1, 2).reshape(n, 3 * rest.shape[1]),
        params["opacity_logits"].detach().float().cpu().reshape(n, 1),
        params["log_scales"].detach().float().cpu().expand(n, 3),
        params["rotations"].detach().float().cpu(),
    ]
    values = torch.cat(columns, dim=1).numpy()
    names = _property_names(rest.shape[1] * 3)
    records = np.empty(n, dtype=[(name, "f4") for name in names])
    for index, name in enumerate(names):
        records[name] = values[:, index]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    PlyData([PlyElement.describe(records, "vertex")]).write(str(path))


def read_gaussian_ply(path: Union[str, Path], sh_degree: int) -> Dict[str, torch.Tensor]:
    """Read a 3DGS PLY into float32 pre-activation tensors (keys as :func:`write_gaussian_ply`).

    Raises ``ValueError`` naming the problem when the file is not a PLY with a ``vertex``
    element, a field is missing, or the number of ``f_rest_*`` fields is not the
    3 ((sh_degree + 1)^2 - 1) that ``sh_degree`` requires.
    """
    if not 0 <= sh_degree <= MAX_SH_DEGREE:
        raise ValueError(f"sh_degree must be in 0..{MAX_SH_DEGREE}, got {sh_degree}")
    try:
        data = PlyData.read(str(path))
    except FileNotFoundError:
        raise
    except Exception as error:
        raise ValueError(f"{path}: not a readable PLY file ({error})") from error
    if "vertex" not in [element.name for element in data.elements]:
        raise ValueError(f"{path}: PLY file has no 'vertex' element")
    vertices = data["vertex"]
    present = {prop.name for prop in vertices.properties}
    num_rest = 3 * (num_sh_coefficients(sh_degree) - 1)
    rest_in_file = sorted(
        (name for name in present if name.startswith("f_rest_")), key=lambda name: int(name.rsplit("_", 1)[1])
    )
    if len(rest_in_file) != num_rest:
        raise ValueError(
            f"{path}: field 'f_rest_*' has {len(rest_in_file)} entries, but sh_degree={sh_degree} "
            f"needs {num_rest} (3 x ((sh_degree + 1)^2 - 1))"
        )
    required = [name for name in _property_names(num_rest) if name not in ("nx", "ny", "nz")]
    for name in required:
        if name not in present:
            raise ValueError(f"{path}: PLY vertex element is missing field '{name}'")

    def column(*names: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(vertices[name], dtype=np.float32) for name in names], axis=1))

    n = vertices.count
    rest = column(*required[6:6 + num_rest]) if num_rest else torch.zeros(n, 0)
    return {
        "means": column("x", "y", "z"),
        "log_scales": column("scale_0", "scale_1", "scale_2"),
        "rotations": column("rot_0", "rot_1", "rot_2", "rot_3"),
        "opacity_logits": column("opacity"),
        "sh_dc": column("f_dc_0", "f_dc_1", "f_dc_2").unsqueeze(1),
        "sh_rest": rest.reshape(n, 3, num_rest // 3).transpose(1, 2).contiguous(),
    }
