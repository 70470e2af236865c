"""Lightning callbacks ``launch.py`` installs for training runs."""
import os
import shutil

from pytorch_lightning.callbacks import Callback
from pytorch_lightning.callbacks.progress import TQDMProgressBar
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from threestudio.utils.config import dump_config


class ConfigSnapshotCallback(Callback):
    """At fit start, writes ``parsed.yaml`` (the resolved config) and ``raw.yaml`` (a copy
    of the YAML file given on the command line) into ``save_root``."""

    def __init__(self, config_path, config, save_root):
        self.config_path = config_path
        self.config = config
        self.save_root = save_root

    @rank_zero_only
    def save_config_snapshot(self):
        os.makedirs(self.save_root, exist_ok=True)
        dump_config(os.path.join(self.save_root, "parsed.yaml"), self.config)
        shutil.copyfile(self.config_path, os.path.join(self.save_root, "raw.yaml"))

    def on_fit_start(self, trainer, pl_module):
        self.save_config_snapshot()


class CustomProgressBar(TQDMProgressBar):
    """Progress bar without the logger version number."""

    def get_metrics(self, *args, **kwargs):
        items = super().get_metrics(*args, **kwargs)
        items.pop("v_num", None)
        return items
