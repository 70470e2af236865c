"""Device, rank, checkpoint-loading and schedule helpers."""
import gc
import math
import os
import re

import torch

from threestudio.utils.config import config_to_primitive
from threestudio.utils.typing import *


def get_rank() -> int:
    """Process rank from the launcher's environment (RANK, LOCAL_RANK, SLURM_PROCID,
    JSM_NAMESPACE_RANK, first one set), 0 when none is set."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        rank = os.environ.get(key)
        if rank is not None:
            return int(rank)
    return 0


def get_device() -> torch.device:
    """``cuda:<rank>`` when CUDA is available, else CPU (real threestudio always answers
    CUDA)."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{get_rank()}")
    return torch.device("cpu")


def load_module_weights(
    path, module_name=None, ignore_modules=None, map_location=None
) -> Tuple[dict, int, int]:
    """State dict of a Lightning checkpoint, its epoch and global step.

    ``module_name`` keeps only the keys under ``<module_name>.`` (prefix stripped);
    ``ignore_modules`` drops the keys under any of the given prefixes.
    """
    if module_name is not None and ignore_modules is not None:
        raise ValueError("module_name and ignore_modules cannot be both set")
    if map_location is None:
        map_location = get_device()
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    state_dict = ckpt["state_dict"]
    if ignore_modules is not None:
        state_dict = {
            k: v
            for k, v in state_dict.items()
            if not any(k.startswith(m + ".") for m in ignore_modules)
        }
    if module_name is not None:
        pattern = re.compile(rf"^{module_name}\.(.*)$")
        state_dict = {
            m.group(1): v
            for k, v in state_dict.items()
            if (m := pattern.match(k)) is not None
        }
    return state_dict, ckpt["epoch"], ckpt["global_step"]


def C(value: Any, epoch: int, global_step: int, interpolation="linear") -> float:
    """Evaluate a scalar or a schedule at the given epoch / global step.

    - int or float: returned unchanged.
    - ``[start_value, end_value, end_step]``: same as ``[0, start_value, end_value, end_step]``.
    - ``[start_step, start_value, end_value, end_step]``: t = clamp((cur - start_step) /
      (end_step - start_step), 0, 1) where cur is ``global_step`` if ``end_step`` is an
      int and ``epoch`` if it is a float; the value is interpolated linearly, or
      geometrically with ``interpolation="exp"``.
    - ``[s0, v0, v1, s1, v2, s2, ...]`` (6+ entries): piecewise; the segment is chosen by
      ``global_step`` (v1 -> v2 between s1 and s2, and so on).
    """
    if isinstance(value, (int, float)):
        return value
    value = config_to_primitive(value)
    if not isinstance(value, list):
        raise TypeError(f"Scalar specification only supports list, got {type(value)}")
    if len(value) == 3:
        value = [0] + value
    if len(value) >= 6:
        # value[3], value[5], ... are segment ends; pick the first one not yet reached
        end_i = 3
        for i in range(3, len(value) - 2, 2):
            if global_step >= value[i]:
                end_i = i + 2
        if end_i == 3:
            start_step, start_value = value[0], value[1]
        else:
            start_step, start_value = value[end_i - 2], value[end_i - 3]
        value = [start_step, start_value, value[end_i - 1], value[end_i]]
    if len(value) != 4:
        raise ValueError(f"Schedule must have 3, 4 or >= 6 entries, got {value}")
    start_step, start_value, end_value, end_step = value
    if isinstance(end_step, int):
        current = global_step
    elif isinstance(end_step, float):
        current = epoch
    else:
        raise TypeError(f"Schedule end step must be an int or a float, got {end_step!r}")
    t = max(min(1.0, (current - start_step) / (end_step - start_step)), 0.0)
    if interpolation == "linear":
        return start_value + (end_value - start_value) * t
    if interpolation == "exp":
        return math.exp(math.log(start_value) * (1 - t) + math.log(end_value) * t)
    raise ValueError(
        f"Unknown interpolation method: {interpolation}, only support linear and exp"
    )


def cleanup() -> None:
    """Free Python garbage and cached CUDA memory."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _distributed_available() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def barrier() -> None:
    if _distributed_available():
        torch.distributed.barrier()
