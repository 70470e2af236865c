"""Speed and memory of the pure-PyTorch Gaussian rasterizer on CPU, tiled vs dense.

Scenes look like a text-to-3D model early in training: N Gaussians uniformly in a ball of
radius 0.8, per-axis scales from the mean distance to the 3 nearest neighbours (jittered
for anisotropy), random rotations and opacities, SH degree 0; a camera at distance 3.0,
elevation 15 deg, fovy 50 deg. Prints the median forward time (autograd recording, as in
training), the median forward+backward time, and the peak resident-memory increase over
the runs (sampled from /proc every millisecond, after returning freed heap memory to the
system so that the baseline is not inflated by earlier runs) for the tiled renderer and for the dense
(untiled, N x H x W) evaluation of the same scene (pixels in chunks under activation
checkpointing, so its memory is bounded too). Dense runs with more than DENSE_MAX_PAIRS
(pixel, Gaussian) pairs would take minutes each; they are skipped and marked as such.

Usage: python benchmarks/bench_rasterizer.py [--threads 2] [--repeats 5]
"""
import argparse
import ctypes
import math
import os
import statistics
import threading
import time

import numpy as np
import torch
from scipy.spatial import cKDTree

from threestudio_stabledreamer.core.rasterization import (intrinsics_from_fovy,
                                                          opengl_c2w_to_viewmats,
                                                          rasterize_gaussians)
from threestudio_stabledreamer.core.sh import rgb_to_sh_dc

RESOLUTIONS = (64, 128, 256)
COUNTS = (1_000, 4_000, 16_000, 64_000)
DENSE_MAX_PAIRS = 300_000_000
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
LIBC = ctypes.CDLL("libc.so.6")


def make_scene(num_gaussians: int, seed: int = 0):
    """Gaussian parameters of a text-to-3D-like ball (see module docstring)."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(num_gaussians, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    means = 0.8 * direction * rng.uniform(size=(num_gaussians, 1)) ** (1.0 / 3.0)
    distances, _ = cKDTree(means).query(means, k=4)
    neighbour = distances[:, 1:].mean(axis=1, keepdims=True)
    scales = neighbour * rng.uniform(0.5, 1.5, size=(num_gaussians, 3))
    quats = rng.normal(size=(num_gaussians, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    as_tensor = lambda a: torch.tensor(a, dtype=torch.float32)
    return dict(
        means=as_tensor(means),
        scales=as_tensor(scales),
        quats=as_tensor(quats),
        opacities=as_tensor(rng.uniform(0.05, 0.95, size=(num_gaussians, 1))),
        sh_coefficients=rgb_to_sh_dc(as_tensor(rng.uniform(size=(num_gaussians, 1, 3)))),
    )


def make_camera(resolution: int, distance: float = 3.0, elevation_deg: float = 15.0,
                fovy_deg: float = 50.0):
    """(viewmats [1,4,4], Ks [1,3,3]) of an OpenGL camera looking at the origin, z-up world."""
    elevation = math.radians(elevation_deg)
    position = torch.tensor([distance * math.cos(elevation), 0.0, distance * math.sin(elevation)])
    backward = position / position.norm()
    right = torch.linalg.cross(torch.tensor([0.0, 0.0, 1.0]), backward)
    right = right / right.norm()
    up = torch.linalg.cross(backward, right)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, backward, position
    fovy = torch.tensor([math.radians(fovy_deg)])
    return opengl_c2w_to_viewmats(c2w[None]), intrinsics_from_fovy(fovy, resolution, resolution)


class PeakMemory:
    """Peak increase of this process's resident memory while the block runs (bytes)."""

    def __enter__(self):
        LIBC.malloc_trim(0)
        self.baseline = self.peak = self._rss()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def increase(self) -> int:
        return self.peak - self.baseline

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE_SIZE


def time_runs(scene, viewmats, Ks, resolution, dense, repeats):
    """(median forward s, median forward+backward s, peak memory bytes, visible count)."""
    params = {k: v.clone().requires_grad_(True) for k, v in scene.items()}

    def forward():
        return rasterize_gaussians(params["means"], params["quats"], params["scales"],
                                   params["opacities"], viewmats, Ks, resolution, resolution,
                                   sh_coefficients=params["sh_coefficients"], sh_degree=0,
                                   dense=dense)

    def loss_of(out):
        return out.colors.sum() + out.alphas.sum() + out.depths.sum()

    forward_times, total_times = [], []
    with PeakMemory() as memory:
        out = forward()
        loss_of(out).backward()
        visible = int((out.radii > 0).sum())
        del out
        for _ in range(repeats):
            start = time.perf_counter()
            out = forward()
            forward_times.append(time.perf_counter() - start)
            loss_of(out).backward()
            total_times.append(time.perf_counter() - start)
            del out
    return statistics.median(forward_times), statistics.median(total_times), memory.increase, visible


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--resolutions", type=int, nargs="+", default=RESOLUTIONS)
    parser.add_argument("--counts", type=int, nargs="+", default=COUNTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    header = (f"{'res':>5} {'N':>6} {'visible':>7} | {'tiled fwd ms':>12} {'fwd+bwd ms':>10} "
              f"{'peak MB':>8} | {'dense fwd ms':>12} {'fwd+bwd ms':>10} {'peak MB':>8} | {'speed-up':>8}")
    print(header)
    print("-" * len(header))
    for resolution in args.resolutions:
        viewmats, Ks = make_camera(resolution)
        for count in args.counts:
            scene = make_scene(count)
            fwd, total, mem, visible = time_runs(scene, viewmats, Ks, resolution, False, args.repeats)
            row = (f"{resolution:>4}^2 {count:>6} {visible:>7} | {fwd * 1e3:>12.1f} {total * 1e3:>10.1f} "
                   f"{mem / 2 ** 20:>8.1f} | ")
            dense_pairs = visible * resolution * resolution
            if dense_pairs > DENSE_MAX_PAIRS:
                row += f"{'skipped: N*H*W = ' + format(dense_pairs / 1e9, '.2f') + 'e9 (too slow)':>34} | {'-':>8}"
            else:
                dense_repeats = max(1, min(args.repeats, 3)) if dense_pairs < 5e7 else 1
                dfwd, dtotal, dmem, _ = time_runs(scene, viewmats, Ks, resolution, True, dense_repeats)
                row += (f"{dfwd * 1e3:>12.1f} {dtotal * 1e3:>10.1f} {dmem / 2 ** 20:>8.1f} | "
                        f"{dtotal / total:>7.1f}x")
            print(row, flush=True)


if __name__ == "__main__":
    main()
