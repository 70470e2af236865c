"""Optimizer and learning-rate scheduler construction from config."""
import torch
import torch.nn as nn
from torch.optim import lr_scheduler

import threestudio


def get_scheduler(name):
    if not hasattr(lr_scheduler, name):
        raise NotImplementedError(f"scheduler name: torch.optim.lr_scheduler has no {name!r}")
    return getattr(lr_scheduler, name)


def getattr_recursive(m, attr):
    for name in attr.split("."):
        m = getattr(m, name)
    return m


def get_parameters(model, name):
    """Parameters of the dotted attribute ``name`` of ``model``: a module's parameters, a
    single parameter, or nothing for anything else."""
    module = getattr_recursive(model, name)
    if isinstance(module, nn.Module):
        return module.parameters()
    if isinstance(module, nn.Parameter):
        return module
    return []


def parse_optimizer(config, model):
    """``torch.optim.<config.name>(params, **config.args)``.

    With ``config.params = {dotted.attr: {lr: ..., ...}}`` there is one param group per
    entry, named after the attribute, with the entry's options; otherwise all of
    ``model.parameters()``. threestudio's FusedAdam (apex) and Adan are not available.
    """
    if hasattr(config, "params"):
        params = [
            {"params": get_parameters(model, name), "name": name, **args}
            for name, args in config.params.items()
        ]
        threestudio.debug(f"Specify optimizer params: {config.params}")
    else:
        params = model.parameters()
    if not hasattr(torch.optim, config.name):
        raise NotImplementedError(
            f"optimizer name: {config.name!r} is not in torch.optim (the stand-in has no apex/Adan)"
        )
    return getattr(torch.optim, config.name)(params, **config.args)


def parse_scheduler(config, optimizer):
    """Lightning scheduler dict ``{"scheduler": ..., "interval": "epoch"|"step"}`` for
    ``lr_scheduler.<config.name>(optimizer, **config.args)``, or for SequentialLR /
    ChainedScheduler over ``config.schedulers`` (SequentialLR with ``config.milestones``)."""
    interval = config.get("interval", "epoch")
    if interval not in ("epoch", "step"):
        raise ValueError(f"scheduler interval: expected 'epoch' or 'step', got {interval!r}")
    if config.name == "SequentialLR":
        scheduler = lr_scheduler.SequentialLR(
            optimizer,
            [parse_scheduler(c, optimizer)["scheduler"] for c in config.schedulers],
            milestones=config.milestones,
        )
    elif config.name == "ChainedScheduler":
        scheduler = lr_scheduler.ChainedScheduler(
            [parse_scheduler(c, optimizer)["scheduler"] for c in config.schedulers]
        )
    else:
        scheduler = get_scheduler(config.name)(optimizer, **config.args)
    return {"scheduler": scheduler, "interval": interval}
