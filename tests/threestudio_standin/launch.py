"""threestudio's ``launch.py`` command line, for the test stand-in (threestudio 0.2.3,
commit 28d9d80).

    python launch.py --config CONFIG.yaml (--train|--validate|--test|--export) [--gpu 0] [a.b=c ...]

Loads every folder (or ``.py`` file) in ``./custom/`` as a module by file path (names
ending in ``_disabled`` are skipped; import failures are printed and skipped), builds the
data module and system named by the config and runs a Lightning Trainer in the trial
directory ``<exp_root_dir>/<name>/<tag>@<timestamp>/`` (ckpts/, save/, configs/,
tb_logs/, csv_logs/, cmd.txt). ``--train`` fits then tests. Unlike threestudio's, the
Trainer uses the CPU when no GPU is available.
"""
import argparse
import importlib.util
import logging
import os
import sys
import time
import traceback


def load_custom_module(module_path) -> bool:
    """Import a folder (its ``__init__.py``) or a ``.py`` file under its base name."""
    module_name = os.path.basename(module_path)
    if os.path.isfile(module_path):
        module_name = os.path.splitext(module_path)[0]
        init_path = module_path
    else:
        init_path = os.path.join(module_path, "__init__.py")
    try:
        spec = importlib.util.spec_from_file_location(module_name, init_path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return True
    except Exception as e:
        print(traceback.format_exc())
        print(f"Cannot import {module_path} module for custom nodes:", e)
        return False


def load_custom_modules(root="custom") -> None:
    import_times = []
    for entry in sorted(os.listdir(root)):
        if entry == "__pycache__":
            continue
        path = os.path.join(root, entry)
        if os.path.isfile(path) and os.path.splitext(path)[1] != ".py":
            continue
        if path.endswith("_disabled"):
            continue
        start = time.perf_counter()
        ok = load_custom_module(path)
        import_times.append((time.perf_counter() - start, path, ok))
    if import_times:
        print("\nImport times for custom modules:")
        for seconds, path, ok in sorted(import_times):
            print("{:6.1f} seconds{}:".format(seconds, "" if ok else " (IMPORT FAILED)"), path)
        print()


def main(args, extras) -> None:
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env_gpus = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g]
    if env_gpus:
        n_gpus = len(env_gpus)
    else:
        n_gpus = len(args.gpu.split(","))
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu

    import pytorch_lightning as pl
    import torch
    from pytorch_lightning import Trainer
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    import threestudio
    from threestudio.utils.callbacks import ConfigSnapshotCallback, CustomProgressBar
    from threestudio.utils.config import load_config
    from threestudio.utils.misc import get_rank

    if args.verbose:
        logging.getLogger("pytorch_lightning").setLevel(logging.DEBUG)

    if os.path.isdir("custom"):
        load_custom_modules()

    # with several GPUs the timestamp is left out of the trial name, as in threestudio
    cfg = load_config(args.config, cli_args=extras, n_gpus=n_gpus)
    pl.seed_everything(cfg.seed + get_rank(), workers=True)

    dm = threestudio.find(cfg.data_type)(cfg.data)
    system = threestudio.find(cfg.system_type)(cfg.system, resumed=cfg.resume is not None)
    system.set_save_dir(os.path.join(cfg.trial_dir, "save"))

    callbacks, loggers = [], []
    if args.train:
        callbacks = [
            ModelCheckpoint(dirpath=os.path.join(cfg.trial_dir, "ckpts"), **cfg.checkpoint),
            LearningRateMonitor(logging_interval="step"),
            ConfigSnapshotCallback(args.config, cfg, os.path.join(cfg.trial_dir, "configs")),
            CustomProgressBar(refresh_rate=1),
        ]
        os.makedirs(os.path.join(cfg.trial_dir, "tb_logs"), exist_ok=True)
        loggers = [
            TensorBoardLogger(cfg.trial_dir, name="tb_logs"),
            CSVLogger(cfg.trial_dir, name="csv_logs"),
        ] + system.get_loggers()
        with open(os.path.join(cfg.trial_dir, "cmd.txt"), "w") as f:
            f.write("python " + " ".join(sys.argv) + "\n" + str(args) + "\n")

    use_gpu = torch.cuda.is_available()
    trainer = Trainer(
        callbacks=callbacks,
        logger=loggers,
        inference_mode=False,
        accelerator="gpu" if use_gpu else "cpu",
        devices=-1 if use_gpu else 1,
        **cfg.trainer,
    )

    def set_system_status(ckpt_path):
        # epoch and global step of an evaluated checkpoint are not restored by Lightning
        if ckpt_path is None:
            return
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        system.set_resume_status(ckpt["epoch"], ckpt["global_step"])

    if args.train:
        trainer.fit(system, datamodule=dm, ckpt_path=cfg.resume)
        trainer.test(system, datamodule=dm)
    elif args.validate:
        set_system_status(cfg.resume)
        trainer.validate(system, datamodule=dm, ckpt_path=cfg.resume)
    elif args.test:
        set_system_status(cfg.resume)
        trainer.test(system, datamodule=dm, ckpt_path=cfg.resume)
    elif args.export:
        set_system_status(cfg.resume)
        trainer.predict(system, datamodule=dm, ckpt_path=cfg.resume)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, help="path to config file")
    parser.add_argument(
        "--gpu",
        default="0",
        help="GPU(s) to be used, e.g. 0 or 1,2; ignored when CUDA_VISIBLE_DEVICES is set",
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--train", action="store_true")
    group.add_argument("--validate", action="store_true")
    group.add_argument("--test", action="store_true")
    group.add_argument("--export", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="set logging level to DEBUG")
    main(*parser.parse_known_args())
