"""Experiment configuration: OmegaConf resolvers, ``ExperimentConfig``, ``load_config``."""
import os
from dataclasses import dataclass, field, fields
from datetime import datetime

import omegaconf
from omegaconf import OmegaConf
from packaging import version

import threestudio
from threestudio.utils.typing import *


def C_max(value: Any) -> float:
    """Largest value a schedule specification (see ``misc.C``) can take."""
    if isinstance(value, (int, float)):
        return value
    value = config_to_primitive(value)
    if not isinstance(value, list):
        raise TypeError(f"Scalar specification only supports list, got {type(value)}")
    if len(value) >= 6:
        value = [value[0], value[1], max(value[2::2]), value[3]]
    if len(value) == 3:
        value = [0] + value
    if len(value) != 4:
        raise ValueError(f"Schedule must have 3, 4 or >= 6 entries, got {value}")
    return max(value[1], value[2])


# Resolvers taking nested interpolations (``${rmspace:${system.prompt_processor.prompt},_}``)
# are registered with register_new_resolver in OmegaConf 2.3 (threestudio's pin), whose
# register_resolver is the legacy API that rejects them; 2.4 renamed the new API to
# register_resolver and deprecated register_new_resolver.
if version.parse(omegaconf.__version__) >= version.parse("2.4"):
    _register_resolver = OmegaConf.register_resolver
else:
    _register_resolver = OmegaConf.register_new_resolver

_register_resolver("calc_exp_lr_decay_rate", lambda factor, n: factor ** (1.0 / n))
_register_resolver("add", lambda a, b: a + b)
_register_resolver("sub", lambda a, b: a - b)
_register_resolver("mul", lambda a, b: a * b)
_register_resolver("div", lambda a, b: a / b)
_register_resolver("idiv", lambda a, b: a // b)
_register_resolver("basename", lambda p: os.path.basename(p))
_register_resolver("rmspace", lambda s, sub: s.replace(" ", sub))
_register_resolver("tuple2", lambda s: [float(s), float(s)])
_register_resolver("gt0", lambda s: s > 0)
_register_resolver("cmaxgt0", lambda s: C_max(s) > 0)
_register_resolver("not", lambda s: not s)
_register_resolver("cmaxgt0orcmaxgt0", lambda a, b: C_max(a) > 0 or C_max(b) > 0)


@dataclass
class ExperimentConfig:
    """Top level of a threestudio YAML config.

    The trial directory is ``<exp_root_dir>/<name>/<tag><timestamp>`` where the timestamp
    is ``@%Y%m%d-%H%M%S`` (empty when ``use_timestamp`` is false, or with several GPUs);
    it is created when the config is parsed. A config re-loaded from a trial's
    ``parsed.yaml`` keeps its timestamp and so its directory.
    """

    name: str = "default"
    description: str = ""
    tag: str = ""
    seed: int = 0
    use_timestamp: bool = True
    timestamp: Optional[str] = None
    exp_root_dir: str = "outputs"

    # derived in __post_init__
    exp_dir: str = "outputs/default"
    trial_name: str = "exp"
    trial_dir: str = "outputs/default/exp"
    n_gpus: int = 1

    resume: Optional[str] = None

    data_type: str = ""
    data: dict = field(default_factory=dict)

    system_type: str = ""
    system: dict = field(default_factory=dict)

    # keyword arguments of pytorch_lightning.Trainer
    trainer: dict = field(default_factory=dict)

    # keyword arguments of pytorch_lightning.callbacks.ModelCheckpoint
    checkpoint: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.tag and not self.use_timestamp:
            raise ValueError("Either tag is specified or use_timestamp is True.")
        if self.timestamp is None:
            self.timestamp = ""
            if self.use_timestamp:
                if self.n_gpus > 1:
                    threestudio.warn(
                        "Timestamp is disabled when using multiple GPUs, please make sure you have a unique tag."
                    )
                else:
                    self.timestamp = datetime.now().strftime("@%Y%m%d-%H%M%S")
        self.trial_name = self.tag + self.timestamp
        self.exp_dir = os.path.join(self.exp_root_dir, self.name)
        self.trial_dir = os.path.join(self.exp_dir, self.trial_name)
        os.makedirs(self.trial_dir, exist_ok=True)


def load_config(*yamls: str, cli_args: list = [], from_string=False, **kwargs) -> Any:
    """Merge YAML files (or strings), CLI dot-list words (``a.b=c``) and ``kwargs``, in
    that order of precedence (later wins), resolve interpolations and parse the result
    as :class:`ExperimentConfig`."""
    if from_string:
        confs = [OmegaConf.create(s) for s in yamls]
    else:
        confs = [OmegaConf.load(f) for f in yamls]
    cfg = OmegaConf.merge(*confs, OmegaConf.from_cli(cli_args), kwargs)
    OmegaConf.resolve(cfg)
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"The config must be a mapping, got {type(cfg).__name__}")
    return parse_structured(ExperimentConfig, cfg)


def config_to_primitive(config, resolve: bool = True) -> Any:
    return OmegaConf.to_container(config, resolve=resolve)


def dump_config(path: str, config) -> None:
    with open(path, "w") as fp:
        OmegaConf.save(config=config, f=fp)


def parse_structured(fields_cls: Any, cfg: Optional[Union[dict, DictConfig]] = None) -> Any:
    """Instantiate the dataclass ``fields_cls`` with the keys of ``cfg`` and wrap it as a
    structured OmegaConf config.

    As in threestudio, a key that is not a field raises ``TypeError`` (and so does a
    missing ``cfg``); values are not type-checked against the field annotations at this
    point, so a ``float`` field may hold a list (a schedule for ``C``).
    """
    if cfg is None:
        raise TypeError(f"{fields_cls.__qualname__}: a config mapping is required, got None")
    known = {f.name for f in fields(fields_cls)}
    unknown = [k for k in cfg.keys() if k not in known]
    if unknown:
        raise TypeError(
            f"{fields_cls.__qualname__} got unexpected keyword argument(s) {unknown}; "
            f"expected keys among {sorted(known)}"
        )
    return OmegaConf.structured(fields_cls(**cfg))
