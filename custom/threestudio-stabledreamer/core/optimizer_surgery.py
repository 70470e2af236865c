"""Swap parameters inside any ``torch.optim.Optimizer`` when their rows change.

Parameters are found by identity in ``optimizer.param_groups``; per-parameter state
tensors of the parameter's shape (Adam's ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``)
are transformed like the parameter's rows, other state (Adam's ``step``) is kept. The
group's options (lr, betas, name, ...) are untouched.
"""
from typing import Callable

import torch

from .densification import gather_rows_and_append


def _swap_parameter(
    optimizer: torch.optim.Optimizer,
    old: torch.Tensor,
    new: torch.nn.Parameter,
    transform_rows: Callable[[torch.Tensor], torch.Tensor],
) -> bool:
    for group in optimizer.param_groups:
        for position, param in enumerate(group["params"]):
            if param is old:
                group["params"][position] = new
                state = optimizer.state.pop(old, None)
                if state:
                    optimizer.state[new] = {
                        key: transform_rows(value)
                        if torch.is_tensor(value) and value.shape == old.shape and value.ndim > 0
                        else value
                        for key, value in state.items()
                    }
                return True
    return False


def rebuild_parameter(
    optimizer: torch.optim.Optimizer,
    old: torch.Tensor,
    new: torch.nn.Parameter,
    source_index: torch.Tensor,
    num_appended: int,
) -> bool:
    """Replace ``old`` by ``new`` whose rows are ``old[source_index]`` followed by ``num_appended`` new rows.

    The state of copied rows is copied (a row copied twice, e.g. a clone and its parent,
    gets its moments twice); appended rows start from zero state. Returns False when the
    optimizer does not hold ``old``.
    """
    expected = (source_index.numel() + num_appended, *old.shape[1:])
    if tuple(new.shape) != expected:
        raise ValueError(f"new parameter must have shape {expected}, got {tuple(new.shape)}")

    def transform(value: torch.Tensor) -> torch.Tensor:
        return gather_rows_and_append(value, source_index, value.new_zeros((num_appended, *value.shape[1:])))

    return _swap_parameter(optimizer, old, new, transform)


def replace_parameter_values(optimizer: torch.optim.Optimizer, old: torch.Tensor, new: torch.nn.Parameter) -> bool:
    """Replace ``old`` by ``new`` of the same shape (e.g. an opacity reset), zeroing its state rows.

    Returns False when the optimizer does not hold ``old``.
    """
    if new.shape != old.shape:
        raise ValueError(f"new parameter must have shape {tuple(old.shape)}, got {tuple(new.shape)}")
    return _swap_parameter(optimizer, old, new, torch.zeros_like)
