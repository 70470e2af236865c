"""``SaverMixin``: writes image grids, videos, copied files and JSON under the save directory.

Images are 8-bit PNG (or the format the file name says) in RGB order. Only the wandb
logger of threestudio exists there; it is not available in this stand-in.
"""
import json
import os
import re
import shutil

import imageio
import numpy as np
import torch
from PIL import Image, ImageDraw

from threestudio.utils.typing import *


def _jet(x: np.ndarray) -> np.ndarray:
    """Jet colour map of values in [0, 1] -> uint8 RGB (blue -> cyan -> yellow -> red)."""
    rgb = np.stack(
        [np.clip(1.5 - np.abs(4.0 * x - c), 0.0, 1.0) for c in (3.0, 2.0, 1.0)], axis=-1
    )
    return (rgb * 255.0).astype(np.uint8)


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


class SaverMixin:
    _save_dir: Optional[str] = None

    DEFAULT_RGB_KWARGS = {"data_format": "HWC", "data_range": (0, 1)}
    DEFAULT_GRAYSCALE_KWARGS = {"data_range": None, "cmap": "jet"}
    DEFAULT_GRID_KWARGS = {"align": "max"}

    def set_save_dir(self, save_dir: str):
        self._save_dir = save_dir

    def get_save_dir(self):
        if self._save_dir is None:
            raise ValueError("Save dir is not set")
        return self._save_dir

    def get_save_path(self, filename):
        """``<save_dir>/<filename>``, its parent directories created."""
        save_path = os.path.join(self.get_save_dir(), filename)
        os.makedirs(os.path.dirname(save_path), exist_ok=True)
        return save_path

    def create_loggers(self, cfg_loggers: DictConfig) -> None:
        if "wandb" in cfg_loggers.keys() and cfg_loggers.wandb.enable:
            raise NotImplementedError(
                "system.loggers.wandb.enable=true: wandb logging is not available in the threestudio stand-in"
            )

    def get_loggers(self) -> List:
        return []

    def convert_data(self, data):
        if data is None or isinstance(data, np.ndarray):
            return data
        if isinstance(data, torch.Tensor):
            return data.detach().cpu().numpy()
        if isinstance(data, list):
            return [self.convert_data(d) for d in data]
        if isinstance(data, dict):
            return {k: self.convert_data(v) for k, v in data.items()}
        raise TypeError(
            f"Data must be in type numpy.ndarray, torch.Tensor, list or dict, getting {type(data)}"
        )

    def get_rgb_image_(self, img, data_format, data_range, rgba=False) -> np.ndarray:
        """uint8 [H, W', 3 or 4]; more channels than 3 (4 with ``rgba``) are laid out as
        consecutive images side by side, the last one zero-padded."""
        img = self.convert_data(img)
        if data_format not in ("CHW", "HWC"):
            raise ValueError(f"data_format: expected 'CHW' or 'HWC', got {data_format!r}")
        if data_format == "CHW":
            img = img.transpose(1, 2, 0)
        if img.dtype != np.uint8:
            lo, hi = data_range
            img = ((img.clip(lo, hi) - lo) / (hi - lo) * 255.0).astype(np.uint8)
        nc = 4 if rgba else 3
        parts = []
        for start in range(0, img.shape[-1], nc):
            part = img[..., start : start + nc]
            pad = nc - part.shape[-1]
            if pad:
                part = np.concatenate(
                    [part, np.zeros((*part.shape[:2], pad), dtype=part.dtype)], axis=-1
                )
            parts.append(part)
        return np.concatenate(parts, axis=1)

    def get_grayscale_image_(self, img, data_range, cmap) -> np.ndarray:
        """uint8 RGB [H, W, 3] of a [H, W] image scaled by ``data_range`` (min-max when
        None); ``cmap`` None (grey) or "jet"."""
        img = np.nan_to_num(self.convert_data(img))
        if data_range is None:
            img = (img - img.min()) / (img.max() - img.min())
        else:
            lo, hi = data_range
            img = (img.clip(lo, hi) - lo) / (hi - lo)
        if cmap is None:
            return np.repeat((img * 255.0).astype(np.uint8)[..., None], 3, axis=2)
        if cmap == "jet":
            return _jet(img)
        raise ValueError(f"cmap: the stand-in supports None and 'jet', got {cmap!r}")

    def get_image_grid_(self, imgs, align) -> np.ndarray:
        """A row of images side by side, or a list of rows stacked vertically. Each item
        is ``{"type": "rgb"|"grayscale", "img": ..., "kwargs": {...}}``; items are resized
        to the largest ("max") / smallest ("min") size, an int, or an (h, w) pair."""
        if isinstance(imgs[0], list):
            return np.concatenate([self.get_image_grid_(row, align) for row in imgs], axis=0)
        cols = []
        for col in imgs:
            if col["type"] == "rgb":
                cols.append(self.get_rgb_image_(col["img"], **{**self.DEFAULT_RGB_KWARGS, **col["kwargs"]}))
            elif col["type"] == "grayscale":
                cols.append(
                    self.get_grayscale_image_(col["img"], **{**self.DEFAULT_GRAYSCALE_KWARGS, **col["kwargs"]})
                )
            else:
                raise ValueError(f"image type: the stand-in supports 'rgb' and 'grayscale', got {col['type']!r}")
        if align == "max":
            h, w = max(c.shape[0] for c in cols), max(c.shape[1] for c in cols)
        elif align == "min":
            h, w = min(c.shape[0] for c in cols), min(c.shape[1] for c in cols)
        elif isinstance(align, int):
            h = w = align
        elif isinstance(align, tuple) and all(isinstance(a, int) for a in align):
            h, w = align
        else:
            raise ValueError(
                f"Unsupported image grid align: {align}, should be min, max, int or (int, int)"
            )
        cols = [c if c.shape[:2] == (h, w) else _resize(c, h, w) for c in cols]
        return np.concatenate(cols, axis=1)

    def save_image_grid(
        self,
        filename,
        imgs,
        align=DEFAULT_GRID_KWARGS["align"],
        name: Optional[str] = None,
        step: Optional[int] = None,
        texts: Optional[List[float]] = None,
    ) -> str:
        """Write the grid of ``imgs`` (see ``get_image_grid_``); ``texts`` are drawn at
        the left, one per equal horizontal band."""
        save_path = self.get_save_path(filename)
        img = self.get_image_grid_(imgs, align=align)
        if texts is not None:
            pil = Image.fromarray(img)
            draw = ImageDraw.Draw(pil)
            band = pil.size[1] // len(texts)
            for i, text in enumerate(texts):
                draw.text((1, band * i), f"{text}", (255, 255, 255))
            img = np.asarray(pil)
        Image.fromarray(img).save(save_path)
        return save_path

    def save_img_sequence(
        self,
        filename,
        img_dir,
        matcher,
        save_format="mp4",
        fps=30,
        name: Optional[str] = None,
        step: Optional[int] = None,
    ) -> str:
        """Write the images of ``<save_dir>/<img_dir>`` whose names match the regex
        ``matcher`` as a video, ordered by the integer of its first group (e.g.
        ``r"(\\d+)\\.png"``)."""
        if save_format not in ("gif", "mp4"):
            raise ValueError(f"save_format: expected 'gif' or 'mp4', got {save_format!r}")
        if not filename.endswith(save_format):
            filename += f".{save_format}"
        save_path = self.get_save_path(filename)
        pattern = re.compile(matcher)
        img_dir = os.path.join(self.get_save_dir(), img_dir)
        names = [f for f in os.listdir(img_dir) if pattern.search(f)]
        names.sort(key=lambda f: int(pattern.search(f).groups()[0]))
        frames = [np.asarray(Image.open(os.path.join(img_dir, f)).convert("RGB")) for f in names]
        if save_format == "mp4":
            imageio.mimsave(save_path, frames, fps=fps)
        else:
            imageio.mimsave(save_path, frames, duration=1000.0 / fps)
        return save_path

    def save_file(self, filename, src_path) -> str:
        save_path = self.get_save_path(filename)
        shutil.copyfile(src_path, save_path)
        return save_path

    def save_json(self, filename, payload) -> str:
        save_path = self.get_save_path(filename)
        with open(save_path, "w") as f:
            f.write(json.dumps(payload))
        return save_path
