"""The extension on a CUDA GPU, checked in one command (entry point: benchmarks/gpu_check.sh).

Stages, each with its own time limit, each writing its log and the partial summary as it
ends (``--out``: summary.json, summary.txt, install.log, builds.log, tests.log, smoke.log,
threestudio.log, backends.log, full_scale.log, side_by_side.log,
switches.log):

0. install: the wheels of ``.gpu-deps/wheels`` (scripts/gather_gpu_deps.sh) whose
   distribution is missing here (or older than its ``min=`` in gpu_deps.txt), into a
   private folder put on PYTHONPATH, offline; the extension goes on the path as
   ``threestudio_stabledreamer`` through a symbolic link. torch, numpy, transformers and
   everything already installed are left alone.
1. builds (CUDA only, in the background while 2 and 3 run): diff-gaussian-rasterization
   from ``.gpu-deps/src`` with nvcc (``setup.py build_ext --inplace``) and gsplat's CUDA
   extension (its JIT build), for the GPU's compute capability, ``MAX_JOBS`` = CPU count.
2. tests: ``pytest tests -m device --device cuda`` (``cpu`` without CUDA).
3. smoke (CUDA only): configs/stabledreamer-cpu.yaml through the stand-in ``launch.py
   --train --gpu 0`` on the tiny models, float16 guidance weights as on real runs; then
   checks metrics.json (both stages, device, peak CUDA memory), the turntable video, the
   PLY and the mesh.
3b. threestudio (CUDA only; skipped without ``.gpu-deps/threestudio-wheels``): the README's
   set-up (``stabledreamer-setup-threestudio --offline``) from those wheels in a venv, then
   configs/stabledreamer-cpu.yaml through real threestudio 0.2.3's ``launch.py`` on CUDA,
   with tiny-cuda-nn, nvdiffrast and envlight stubbed (not built here; the stage says so),
   and the same output checks as the smoke run.
4. backends: for each importable backend, the same scenes rendered by it and by the torch
   backend, compared (images, alphas, depths, normals; gradients of means, scales,
   rotations, opacities, colours and the view-space points) with the tolerances in
   ``TOLERANCES``; then forward+backward timed at 64^2/4k, 512^2/100k and 512^2/500k
   Gaussians with peak CUDA memory. Without CUDA: the torch backend against itself
   (the harness) and its 64^2/4k timing.
5. full scale (CUDA only): benchmarks/full_scale.py with full-size random models (memory,
   arithmetic and time per stage; its table in full_scale.log).
5b. side by side (CUDA only; skipped unless stage 3b set real threestudio up): the same in
   stage 3b's venv with ``--guidances both --weights-dtype float16``: our guidances, then
   threestudio's ``deep-floyd-guidance`` and ``stable-diffusion-guidance`` on the same
   models (side_by_side.log).
6. switches (CUDA only): benchmarks/bench_switches.py, the guidance networks' forward with
   ``compile_unet`` and ``enable_channels_last_format`` each off and on (switches.log).

``--stages`` runs a subset of 2-6 (install always runs first, the builds with backends);
the full-size stages reuse the models built under ``--work``.

Exit status: 0 all passed, 1 a stage failed, 2 bad arguments, 3 no CUDA here (the CPU-side
parts ran and passed or failed as reported).
"""
import argparse
import importlib.metadata
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_CUDA = 0, 1, 2, 3
# Seconds per stage; the builds run beside tests and smoke, so the worst case stays near 8 min
# before full_scale, which builds 28 GB of full-size models on its first run (about 4 min on
# one CPU core) and trains a few dozen full-size steps.
LIMITS_S = {"install": 60, "tests": 150, "smoke": 150, "dgr_build": 240, "gsplat_build": 300,
            "backends": 120, "threestudio": 240, "full_scale": 420, "side_by_side": 300, "switches": 300}
# Tolerances of a CUDA backend against the torch backend (float32, same scene and cameras):
# images, alphas and normals (values in [0, 1]) and depths divided by the camera distance:
# mean |difference| and max |difference|; gradients: relative L2 error ||g - g_torch|| /
# ||g_torch||. The CUDA rasterizers use fast-math exponentials and their backward ignores
# the 0.99 alpha clamp, so a few pixels and gradients differ slightly.
TOLERANCES = {"image_mean": 1e-3, "image_max": 2e-2, "grad_rel": 5e-2}
COMPARE_SCENES = ((64, 4_000), (128, 16_000))
TIMING_SCENES = ((64, 4_000), (512, 100_000), (512, 500_000))
CAMERA_DISTANCE = 3.0
BACKEND_DISTRIBUTIONS = ("gsplat",)
MODULES = {"diffusers": "diffusers", "omegaconf": "omegaconf", "plyfile": "plyfile", "trimesh": "trimesh",
           "PyMCubes": "mcubes", "imageio-ffmpeg": "imageio_ffmpeg", "typeguard": "typeguard",
           "transformers": "transformers", "pytorch-lightning": "pytorch_lightning", "scipy": "scipy"}


# ----------------------------------------------------------------------------- helpers
class Log:
    """Appends a stage's output to one file of --out and echoes short lines."""

    def __init__(self, path: Path):
        self.path = path
        path.write_text("")

    def write(self, text: str, echo: bool = True) -> None:
        with self.path.open("a") as f:
            f.write(text if text.endswith("\n") else text + "\n")
        if echo:
            print(text.rstrip("\n"), flush=True)


def run_logged(command, log: Log, timeout_s: float, env=None, cwd=None):
    """(return code or 'timeout', seconds); stdout and stderr go to ``log``."""
    log.write(f"$ {' '.join(map(str, command))}", echo=False)
    started = time.perf_counter()
    with log.path.open("a") as f:
        process = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = "timeout"
    seconds = time.perf_counter() - started
    log.write(f"-> exit {code} after {seconds:.1f} s", echo=False)
    return code, seconds


def version_key(text: str):
    return tuple(int(part) for part in re.findall(r"\d+", text)[:4])


# ----------------------------------------------------------------------------- 0. install
def wheel_distribution(path: Path) -> tuple:
    """(normalised distribution name, version) from a wheel's file name."""
    name, version = path.name.split("-")[:2]
    return re.sub(r"[-_.]+", "-", name).lower(), version


def install(deps: Path, site: Path, backend_site: Path, log: Log) -> dict:
    """Install the missing wheels of ``deps/wheels`` into ``site`` (see the module docstring);
    the rasterizer backends (``BACKEND_DISTRIBUTIONS``) into ``backend_site``, put on the
    path only for their build and the backend stage, so the tests and the smoke run use the
    torch backend while they build."""
    minimums = {}
    for line in (REPO / "benchmarks" / "gpu_deps.txt").read_text().splitlines():
        fields = line.split("#")[0].split()
        if fields and len(fields) > 1 and fields[1].startswith("min="):
            minimums[re.sub(r"[-_.]+", "-", fields[0].split("==")[0]).lower()] = fields[1][4:]
    wheels = sorted((deps / "wheels").glob("*.whl"))
    chosen, present = [], {}
    for wheel in wheels:
        name, version = wheel_distribution(wheel)
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is not None and version_key(installed) >= version_key(minimums.get(name, "0")):
            present[name] = installed
            continue
        chosen.append(wheel)
    log.write(f"already installed (kept): {present}")
    log.write(f"installing into {site}: {[w.name for w in chosen]}")
    result = {"wheels": len(wheels), "installed": [w.name for w in chosen], "kept": present}
    if not wheels:
        log.write(f"no wheels in {deps / 'wheels'}: run scripts/gather_gpu_deps.sh where there is network")
    result["status"] = "ok"
    for target, group in ((site, [w for w in chosen if wheel_distribution(w)[0] not in BACKEND_DISTRIBUTIONS]),
                          (backend_site, [w for w in chosen if wheel_distribution(w)[0] in BACKEND_DISTRIBUTIONS])):
        if not group:
            continue
        code, _ = run_logged([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                              "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(target),
                              *map(str, group)], log, LIMITS_S["install"])
        if code != 0:
            result["status"] = f"failed (pip exit {code})"
    return result


def link_extension(work: Path) -> Path:
    """A folder holding ``threestudio_stabledreamer`` -> custom/threestudio-stabledreamer."""
    packages = work / "packages"
    packages.mkdir(parents=True, exist_ok=True)
    link = packages / "threestudio_stabledreamer"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(REPO / "custom" / "threestudio-stabledreamer", target_is_directory=True)
    return packages


def probe(env: dict, log: Log) -> dict:
    """Versions, CUDA device and importability of every module the check needs."""
    code = (
        "import json, importlib, importlib.metadata as m, shutil, subprocess, torch\n"
        f"modules = {MODULES!r}\n"
        "info = {'python': __import__('sys').version.split()[0], 'torch': torch.__version__,\n"
        "        'cuda': torch.cuda.is_available(), 'torch_cuda': torch.version.cuda}\n"
        "if info['cuda']:\n"
        "    p = torch.cuda.get_device_properties(0)\n"
        "    info.update(gpu=p.name, capability=f'{p.major}.{p.minor}', gpu_memory_gib=round(p.total_memory / 2**30, 1))\n"
        "nvcc = shutil.which('nvcc')\n"
        "info['nvcc'] = subprocess.run([nvcc, '--version'], capture_output=True, text=True).stdout.strip().splitlines()[-1] if nvcc else None\n"
        "info['ninja'] = shutil.which('ninja')\n"
        "imports = {}\n"
        "for dist, module in modules.items():\n"
        "    try:\n"
        "        importlib.import_module(module)\n"
        "        imports[dist] = m.version(dist)\n"
        "    except Exception as error:\n"
        "        imports[dist] = f'NOT IMPORTABLE: {type(error).__name__}: {error}'[:200]\n"
        "info['imports'] = imports\n"
        "print('PROBE' + json.dumps(info))\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    log.write(completed.stdout + completed.stderr, echo=False)
    line = next((l for l in completed.stdout.splitlines() if l.startswith("PROBE")), None)
    if line is None:
        raise RuntimeError(f"the environment probe failed:\n{completed.stderr[-3000:]}")
    info = json.loads(line[len("PROBE"):])
    for dist, version in info["imports"].items():
        log.write(f"  {dist:<22} {version}")
    return info


# ----------------------------------------------------------------------------- 1. builds
class BackgroundBuild:
    """A build command running in the background; ``seconds`` is its own duration, taken
    when it exits (not when the check gets round to collecting it)."""

    def __init__(self, command, log_path: Path, folder, **popen_kwargs):
        self.folder, self.seconds = folder, None
        self.started = time.perf_counter()
        self.process = subprocess.Popen(command, stdout=log_path.open("w"), stderr=subprocess.STDOUT,
                                        **popen_kwargs)
        self._watcher = threading.Thread(target=self._time_exit, daemon=True)
        self._watcher.start()

    def _time_exit(self) -> None:
        self.process.wait()
        self.seconds = time.perf_counter() - self.started

    def wait(self, timeout_s: float):
        """The exit code, or 'timeout' (the build is killed) after ``timeout_s`` seconds."""
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            code = "timeout"
        self._watcher.join()
        return code


def start_builds(deps: Path, work: Path, env: dict, capability: str, log: Log) -> dict:
    """Start both CUDA builds in the background; returns {name: BackgroundBuild}."""
    build_env = {**env, "TORCH_CUDA_ARCH_LIST": capability, "MAX_JOBS": str(os.cpu_count() or 8)}
    builds = {}
    source = deps / "src" / "diff-gaussian-rasterization.tar.gz"
    if source.is_file():
        target = work / "build"
        shutil.rmtree(target / "diff-gaussian-rasterization", ignore_errors=True)
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(source) as archive:
            archive.extractall(target)
        folder = target / "diff-gaussian-rasterization"
        # Newer host compilers no longer pull in <cstdint> through <iostream>; the header
        # uses uint32_t (a long-standing one-line fix upstream users apply).
        header = folder / "cuda_rasterizer" / "rasterizer_impl.h"
        if "<cstdint>" not in header.read_text():
            header.write_text(header.read_text().replace("#pragma once", "#pragma once\n\n#include <cstdint>", 1))
        builds["diff-gaussian-rasterization"] = BackgroundBuild(
            [sys.executable, "setup.py", "build_ext", "--inplace"], work / "build-dgr.log", folder,
            cwd=folder, env=build_env)
    else:
        log.write(f"diff-gaussian-rasterization: no source at {source} (run scripts/gather_gpu_deps.sh)")
    builds["gsplat"] = BackgroundBuild(
        [sys.executable, "-c", "from gsplat.cuda._backend import _C; assert _C is not None, 'gsplat: no CUDA extension'"],
        work / "build-gsplat.log", None, env=build_env)
    return builds


def finish_builds(builds: dict, work: Path, log: Log) -> dict:
    """Wait (within each build's limit) and report; paths of the built backends in 'paths'."""
    results, paths = {}, []
    for name, build in builds.items():
        folder = build.folder
        limit = LIMITS_S["dgr_build" if folder is not None else "gsplat_build"]
        code = build.wait(max(1.0, build.started + limit - time.perf_counter()))
        seconds = build.seconds
        log_file = work / ("build-dgr.log" if folder is not None else "build-gsplat.log")
        log.write(f"===== build {name}: exit {code} after {seconds:.0f} s", echo=False)
        log.write(log_file.read_text()[-20000:], echo=False)
        results[name] = {"status": "ok" if code == 0 else ("timeout" if code == "timeout" else f"failed (exit {code})"),
                         "seconds": round(seconds, 1), "limit_s": limit}
        if code == 0 and folder is not None:
            paths.append(str(folder))
        log.write(f"build {name}: {results[name]['status']} in {seconds:.0f} s")
    return {"results": results, "paths": paths}


# ----------------------------------------------------------------------------- 2. tests
def run_tests(device: str, env: dict, work: Path, log: Log) -> dict:
    junit = work / "tests.xml"
    code, seconds = run_logged([sys.executable, "-m", "pytest", "tests", "-m", "device", "--device", device,
                                "-p", "no:cacheprovider", "-q", "-rfEs", f"--junitxml={junit}"],
                               log, LIMITS_S["tests"], env=env, cwd=REPO)
    counts = {}
    if junit.is_file():
        text = junit.read_text()
        match = re.search(r'<testsuite [^>]*', text)
        if match:
            for key in ("tests", "failures", "errors", "skipped"):
                found = re.search(rf'{key}="(\d+)"', match.group(0))
                counts[key] = int(found.group(1)) if found else None
    passed = None if not counts else counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    status = "ok" if code == 0 else ("timeout" if code == "timeout" else f"failed (pytest exit {code})")
    return {"status": status, "device": device, "seconds": round(seconds, 1), "passed": passed, **counts}


# ----------------------------------------------------------------------------- 3. smoke run
def trial_result(outputs: Path, code, seconds: float, log: Log, label: str) -> dict:
    """The stage result of a launch of configs/stabledreamer-cpu.yaml that exited with
    ``code``: its newest trial under ``outputs`` checked (both stages, CUDA, memory, video,
    PLY, mesh), its metrics."""
    result = {"status": "ok" if code == 0 else ("timeout" if code == "timeout" else f"failed (exit {code})"),
              "seconds": round(seconds, 1), "checks": {}}
    trials = sorted(outputs.glob("*/*@*"))
    if not trials:
        result["status"] = result["status"] if result["status"] != "ok" else "failed (no trial directory)"
        return result
    save, checks = trials[-1] / "save", result["checks"]
    try:
        metrics = json.loads((save / "metrics.json").read_text())
        stages = metrics.get("stages", {})
        checks["both stages trained"] = [stages.get(s, {}).get("steps") for s in ("stage1", "stage2")] == [10, 10]
        checks["ran on cuda"] = str(metrics.get("device", "")).startswith("cuda")
        checks["peak CUDA memory measured"] = all((stages.get(s, {}).get("peak_memory_mib") or 0) > 0
                                                  for s in ("stage1", "stage2"))
        checks["120 test frames"] = metrics.get("test", {}).get("frames") == 120
        result["metrics"] = {"device": metrics.get("device"), "memory_measure": metrics.get("memory_measure"),
                             "final_num_gaussians": metrics.get("final_num_gaussians"),
                             "peak_memory_mib": {s: stages.get(s, {}).get("peak_memory_mib") for s in stages},
                             "iterations_per_second": metrics.get("iterations_per_second")}
    except (OSError, ValueError) as error:
        checks["metrics.json readable"] = False
        log.write(f"metrics.json: {error}")
    checks["turntable video"] = any(p.stat().st_size > 0 for p in save.glob("it*-test.mp4"))
    checks["reconstruction views"] = len(list((save / "recon").glob("stage*-it*.png"))) >= 4
    exports = list(save.glob("it*-export"))
    checks["PLY export"] = any((e / "model.ply").is_file() for e in exports)
    checks["mesh export"] = any((e / "model-mesh.obj").is_file() and (e / "model-mesh.glb").is_file() for e in exports)
    failed = [name for name, ok in checks.items() if not ok]
    if failed and result["status"] == "ok":
        result["status"] = f"failed ({', '.join(failed)})"
    log.write(f"{label} checks: {checks}", echo=False)
    return result


def run_smoke(env: dict, work: Path, log: Log) -> dict:
    """Train, test and export configs/stabledreamer-cpu.yaml on CUDA; check the outputs."""
    user = work / "smoke"
    shutil.rmtree(user, ignore_errors=True)
    (user / "custom").mkdir(parents=True)
    (user / "custom" / "threestudio-stabledreamer").symlink_to(REPO / "custom" / "threestudio-stabledreamer")
    command = [sys.executable, str(REPO / "tests" / "threestudio_standin" / "launch.py"), "--config",
               str(REPO / "configs" / "stabledreamer-cpu.yaml"), "--train", "--gpu", "0",
               'system.prompt_processor.prompt="a hamburger"',
               "system.guidance.half_precision_weights=true",
               "system.guidance_stage2.half_precision_weights=true"]
    smoke_env = {k: v for k, v in env.items() if k != "CUDA_VISIBLE_DEVICES"}
    code, seconds = run_logged(command, log, LIMITS_S["smoke"], env=smoke_env, cwd=user)
    return trial_result(user / "outputs", code, seconds, log, "smoke")


# ----------------------------------------------------------------------------- 3b. real threestudio
def load_setup_module():
    """``setup_threestudio`` of the extension, by file path (its top level needs only
    ``packaging``), for its constraint check in this interpreter."""
    import importlib.util

    path = REPO / "custom" / "threestudio-stabledreamer" / "setup_threestudio.py"
    spec = importlib.util.spec_from_file_location("stabledreamer_setup_threestudio", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_threestudio(deps: Path, env: dict, work: Path, log: Log) -> dict:
    """The README's set-up (stabledreamer-setup-threestudio --offline) in a venv over the
    system's packages, from the wheels of ``.gpu-deps/threestudio-wheels`` and threestudio
    0.2.3 from ``.gpu-deps/src/threestudio.tar.gz``; then configs/stabledreamer-cpu.yaml
    trained, tested and exported through real threestudio's ``launch.py`` on CUDA.
    tiny-cuda-nn, nvdiffrast and envlight are not built here (no network, and no time in
    this check): the launch stubs them and says so; the Gaussian configs never use them."""
    started = time.perf_counter()
    wheels, source = deps / "threestudio-wheels", deps / "src" / "threestudio.tar.gz"
    if not wheels.is_dir() or not source.is_file():
        return {"status": f"skipped (no {wheels.name}/ or src/{source.name} in {deps}: run "
                          "scripts/gather_gpu_deps.sh --threestudio where there is network)", "seconds": 0}
    venv, root = work / "ts-venv", work / "threestudio"
    for folder in (venv, root, work / "ts-outputs"):
        shutil.rmtree(folder, ignore_errors=True)
    with tarfile.open(source) as archive:
        archive.extractall(work)
    python = venv / "bin" / "python"
    pip_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    pip_env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels), PIP_DISABLE_PIP_VERSION_CHECK="1",
                   PATH=os.pathsep.join([str(venv / "bin"), env.get("PATH", "")]))
    setup = load_setup_module()
    constraints = REPO / setup.CONSTRAINTS_NAME
    # the system's packages outside the pins are shadowed by pinned ones inside the venv
    outside = setup.outside_pins(setup.installed_versions(), setup.parse_constraints(constraints.read_text()))
    shadow = [name for name, _, _ in outside]
    log.write(f"system packages outside the pins, shadowed in the venv: {shadow}")
    steps = [[sys.executable, "-m", "venv", "--system-site-packages", str(venv)]]
    if shadow:
        steps.append([str(python), "-m", "pip", "install", "-q", "-c", str(constraints), *shadow])
    steps += [[str(python), "-m", "pip", "install", "-q", "-e", str(REPO), "-c", str(constraints)],
              [str(venv / "bin" / "stabledreamer-setup-threestudio"), str(root), "--offline"],
              [str(python), "-m", "threestudio_stabledreamer.tiny_models", "--out", env["STABLEDREAMER_TINY_MODELS"]]]
    for command in steps:
        left = LIMITS_S["threestudio"] - (time.perf_counter() - started)
        code, _ = run_logged(command, log, max(1.0, left), env=pip_env)
        if code != 0:
            return {"status": f"failed (set-up: {Path(command[0]).name} {command[1]} ... exit {code})",
                    "seconds": round(time.perf_counter() - started, 1)}
    setup_s = time.perf_counter() - started
    launch_env = {**pip_env, "THREESTUDIO_ROOT": str(root), "STABLEDREAMER_STUB_MISSING_CUDA_BUILDS": "1"}
    command = [str(python), str(REPO / "tests" / "threestudio_cpu_launch.py"), "--config",
               "configs/stabledreamer-cpu.yaml", "--train", "--gpu", "0", 'system.prompt_processor.prompt="a hamburger"',
               f"exp_root_dir={work / 'ts-outputs'}"]
    code, seconds = run_logged(command, log, max(1.0, LIMITS_S["threestudio"] - setup_s), env=launch_env, cwd=root)
    result = trial_result(work / "ts-outputs", code, seconds, log, "threestudio")
    stubbed = re.search(r"not installed, stubbed: ([^(]+)", log.path.read_text())
    result.update(setup_s=round(setup_s, 1), seconds=round(time.perf_counter() - started, 1),
                  stubbed=stubbed.group(1).strip() if stubbed else None, python=str(python), root=str(root))
    log.write(f"threestudio: set-up {setup_s:.0f} s, launch {seconds:.0f} s; stubbed (not built here): "
              f"{result['stubbed'] or 'none'}")
    return result


# ----------------------------------------------------------------------------- 4. backends
def backends_stage(json_path: Path) -> None:
    """Runs in its own process (a CUDA fault there cannot end the check): writes its JSON."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_rasterizer import make_camera, make_scene
    from threestudio_stabledreamer.core.gaussians import shortest_axis_normals
    from threestudio_stabledreamer.core.rasterization import (importable_cuda_backends, rasterize_gaussians,
                                                              rasterize_with_diff_gaussian_rasterization,
                                                              rasterize_with_gsplat)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    functions = {"torch": rasterize_gaussians,
                 "diff-gaussian-rasterization": rasterize_with_diff_gaussian_rasterization,
                 "gsplat": rasterize_with_gsplat}
    report = {"device": str(device), "tolerances": TOLERANCES, "backends": {}, "comparisons": [], "timings": []}
    backends = ["torch"]
    if device.type == "cuda":
        for name in importable_cuda_backends():
            try:  # gsplat imports without its CUDA extension; check that it loaded
                if name == "gsplat":
                    from gsplat.cuda._backend import _C
                    assert _C is not None, "its CUDA extension is not built"
                else:
                    import diff_gaussian_rasterization._C  # noqa: F401
                backends.append(name)
                report["backends"][name] = "importable"
            except Exception as error:  # reported, not fatal
                report["backends"][name] = f"not usable: {type(error).__name__}: {error}"
    report["backends"]["torch"] = "importable"

    def scene_on_device(resolution, count, seed=0):
        scene = {k: v.to(device) for k, v in make_scene(count, seed).items()}
        # Quaternions of other lengths than one: every backend must normalise them.
        lengths = torch.linspace(0.5, 2.0, count, device=device).unsqueeze(-1)
        scene["quats"] = scene["quats"] * lengths
        viewmats, Ks = (t.to(device) for t in make_camera(resolution, distance=CAMERA_DISTANCE))
        return scene, viewmats, Ks

    def forward(name, params, viewmats, Ks, resolution):
        return functions[name](params["means"], params["quats"], params["scales"], params["opacities"],
                               viewmats, Ks, resolution, resolution, sh_coefficients=params["sh_coefficients"],
                               sh_degree=0, normals=shortest_axis_normals(params["scales"], params["quats"]))

    def loss_weights(resolution):
        g = torch.Generator().manual_seed(1)
        return [torch.rand(1, resolution, resolution, c, generator=g).to(device) for c in (3, 1, 1, 3)]

    def render_with_grads(name, scene, viewmats, Ks, resolution):
        params = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
        out = forward(name, params, viewmats, Ks, resolution)
        w = loss_weights(resolution)
        loss = ((out.colors * w[0]).sum() + (out.alphas * w[1]).sum()
                + (out.depths * w[2]).sum() / CAMERA_DISTANCE + (out.normals * w[3]).sum())
        loss.backward()
        images = {"colors": out.colors, "alphas": out.alphas, "depths": out.depths / CAMERA_DISTANCE,
                  "normals": out.normals}
        grads = {k: params[k].grad for k in params}
        grads["viewspace"] = out.viewspace_points.grad
        return {k: v.detach().float() for k, v in images.items()}, {k: v.detach().float() for k, v in grads.items()}

    compare_with = backends[1:] if len(backends) > 1 else ["torch"]  # CPU: the harness against itself
    for resolution, count in COMPARE_SCENES if device.type == "cuda" else COMPARE_SCENES[:1]:
        scene, viewmats, Ks = scene_on_device(resolution, count)
        reference = render_with_grads("torch", scene, viewmats, Ks, resolution)
        for name in compare_with:
            row = {"backend": name, "resolution": resolution, "gaussians": count}
            try:
                images, grads = render_with_grads(name, scene, viewmats, Ks, resolution)
                for key, value in images.items():
                    difference = (value - reference[0][key]).abs()
                    row[f"{key}_mean"], row[f"{key}_max"] = float(difference.mean()), float(difference.max())
                for key, value in grads.items():
                    expected = reference[1][key]
                    row[f"grad_{key}_rel"] = float((value - expected).norm() / expected.norm().clamp(min=1e-30))
                row["passed"] = (all(row[f"{k}_mean"] <= TOLERANCES["image_mean"] and
                                     row[f"{k}_max"] <= TOLERANCES["image_max"] for k in images)
                                 and all(row[f"grad_{k}_rel"] <= TOLERANCES["grad_rel"] for k in grads))
            except Exception as error:
                row.update(passed=False, error=f"{type(error).__name__}: {error}"[:300])
            report["comparisons"].append(row)
            print(json.dumps(row), flush=True)
        del scene
    json_path.write_text(json.dumps(report, indent=2))

    for resolution, count in TIMING_SCENES if device.type == "cuda" else TIMING_SCENES[:1]:
        scene, viewmats, Ks = scene_on_device(resolution, count)
        for name in backends:
            row = {"backend": name, "resolution": resolution, "gaussians": count}
            try:
                params = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
                times = []
                for repeat in range(6):
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                        baseline = torch.cuda.memory_allocated()
                    started = time.perf_counter()
                    out = forward(name, params, viewmats, Ks, resolution)
                    (out.colors.sum() + out.alphas.sum() + out.depths.sum()).backward()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                        row["peak_mib"] = round((torch.cuda.max_memory_allocated() - baseline) / 2**20, 1)
                    elapsed = time.perf_counter() - started
                    del out
                    for p in params.values():
                        p.grad = None
                    if repeat > 0:  # the first run warms up (kernel loading, allocator)
                        times.append(elapsed)
                    if elapsed > 5.0 and repeat >= 1:
                        break
                row["fwd_bwd_ms"] = round(1e3 * statistics.median(times), 2)
                row["runs"] = len(times)
            except Exception as error:
                row["error"] = f"{type(error).__name__}: {error}"[:300]
            report["timings"].append(row)
            print(json.dumps(row), flush=True)
            json_path.write_text(json.dumps(report, indent=2))
            if device.type == "cuda":
                torch.cuda.empty_cache()
        del scene


def run_backends(env: dict, work: Path, log: Log) -> dict:
    json_path = work / "backends.json"
    json_path.unlink(missing_ok=True)
    code, seconds = run_logged([sys.executable, str(Path(__file__).resolve()), "--stage", "backends",
                                "--stage-json", str(json_path)], log, LIMITS_S["backends"], env=env, cwd=REPO)
    report = json.loads(json_path.read_text()) if json_path.is_file() else {}
    comparisons = report.get("comparisons", [])
    ok = code == 0 and bool(comparisons) and all(row.get("passed") for row in comparisons)
    status = "ok" if ok else ("timeout" if code == "timeout" else
                              f"failed (exit {code}{', comparison out of tolerance' if code == 0 else ''})")
    return {"status": status, "seconds": round(seconds, 1), **report}


# ----------------------------------------------------------------------------- 5. full scale
def run_full_scale(env: dict, work: Path, log: Log) -> dict:
    """benchmarks/full_scale.py on CUDA: full-size random models (built under --work),
    warm-up, then the median of 20 steps per stage; its table goes to full_scale.log."""
    return _run_benchmark("full_scale", ["full_scale.py", "--device", "cuda", "--steps", "20", "--warmup", "3",
                                         "--workdir", str(work / "full-scale")], env, work, log)


def run_side_by_side(threestudio: dict, env: dict, work: Path, log: Log) -> dict:
    """benchmarks/full_scale.py --guidances both in the threestudio stage's venv (real
    threestudio 0.2.3): our guidances and threestudio's on the same full-size models, float16
    weights both (threestudio's half precision), 20 steps per stage each."""
    if "python" not in threestudio:
        return {"status": "skipped (threestudio's guidances need the threestudio stage's set-up, "
                          f"which ended: {threestudio.get('status')})", "seconds": 0}
    ts_env = {**{k: v for k, v in env.items() if k != "PYTHONPATH"}, "THREESTUDIO_ROOT": threestudio["root"],
              "STABLEDREAMER_STUB_MISSING_CUDA_BUILDS": "1"}
    return _run_benchmark("side_by_side", ["full_scale.py", "--device", "cuda", "--steps", "20", "--warmup", "3",
                                           "--weights-dtype", "float16", "--guidances", "both",
                                           "--workdir", str(work / "side-by-side")], ts_env, work, log,
                          python=threestudio["python"])


def run_switches(env: dict, work: Path, log: Log) -> dict:
    """benchmarks/bench_switches.py on CUDA: each stage's guidance network with each speed
    switch off and on, median of 10 calls; its table goes to switches.log."""
    return _run_benchmark("switches", ["bench_switches.py", "--device", "cuda", "--repeats", "10"], env, work, log)


def _run_benchmark(stage: str, arguments: list, env: dict, work: Path, log: Log, python: str = sys.executable) -> dict:
    """``benchmarks/<script>`` with the full-size models under --work; its JSON report
    becomes the stage's figures."""
    json_path = work / f"{stage}.json"
    json_path.unlink(missing_ok=True)
    script, *rest = arguments
    code, seconds = run_logged([python, str(REPO / "benchmarks" / script), *rest,
                                "--models", str(work / "full-size-models"), "--json", str(json_path)],
                               log, LIMITS_S[stage], env=env, cwd=REPO)
    report = json.loads(json_path.read_text()) if json_path.is_file() else {}
    status = "ok" if code == 0 and report else ("timeout" if code == "timeout" else f"failed (exit {code})")
    return {"status": status, "seconds": round(seconds, 1), **report}


# ----------------------------------------------------------------------------- summary
def summary_table(summary: dict) -> str:
    lines = [f"GPU check: {summary.get('environment', {}).get('gpu', 'no CUDA GPU')} | "
             f"torch {summary.get('environment', {}).get('torch')} | total {summary.get('total_s', 0):.0f} s",
             f"{'stage':<34} {'status':<40} {'time s':>7}"]
    for name, stage in summary["stages"].items():
        lines.append(f"{name:<34} {str(stage.get('status'))[:40]:<40} {stage.get('seconds', ''):>7}")
        if name == "tests" and "tests" in stage:
            lines.append(f"{'':<34} passed {stage.get('passed')} failed {stage.get('failures')} "
                         f"errors {stage.get('errors')} skipped {stage.get('skipped')} on {stage.get('device')}")
        if name == "threestudio" and "setup_s" in stage:
            lines.append(f"{'':<34} set-up {stage['setup_s']} s; stubbed, not built here: {stage.get('stubbed') or 'none'}")
        if name in ("smoke", "threestudio") and stage.get("checks"):
            lines.append(f"{'':<34} " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in stage["checks"].items()))
    backends = summary["stages"].get("backends", {})
    if backends.get("comparisons"):
        lines.append("")
        lines.append(f"comparison with the torch backend (tolerances: images mean <= {TOLERANCES['image_mean']}, "
                     f"max <= {TOLERANCES['image_max']}; gradients relative L2 <= {TOLERANCES['grad_rel']})")
        lines.append(f"{'backend':<28} {'scene':<12} {'rgb mean/max':>16} {'alpha mean/max':>16} "
                     f"{'depth mean/max':>16} {'worst grad rel':>22} {'pass':>5}")
        for row in backends["comparisons"]:
            if "error" in row:
                lines.append(f"{row['backend']:<28} {row['resolution']}^2/{row['gaussians']:<6} ERROR {row['error']}")
                continue
            grads = {k[5:-4]: v for k, v in row.items() if k.startswith("grad_")}
            worst = max(grads, key=grads.get)
            lines.append(f"{row['backend']:<28} {row['resolution']:>3}^2/{row['gaussians']:<6} "
                         + " ".join(f"{row[f'{k}_mean']:>7.1e}/{row[f'{k}_max']:<7.1e}" for k in ("colors", "alphas", "depths"))
                         + f" {worst + ' ' + format(grads[worst], '.1e'):>22} {'yes' if row['passed'] else 'NO':>5}")
    if backends.get("timings"):
        lines.append("")
        lines.append(f"{'backend':<28} {'resolution':>10} {'Gaussians':>10} {'fwd+bwd ms':>11} {'peak MiB':>9}")
        for row in backends["timings"]:
            lines.append(f"{row['backend']:<28} {row['resolution']:>8}^2 {row['gaussians']:>10} "
                         f"{row.get('fwd_bwd_ms', 'ERROR'):>11} {row.get('peak_mib', '-'):>9}"
                         + (f"  {row['error']}" if "error" in row else ""))
    lines.append("")
    lines.append(summary.get("verdict", ""))
    return "\n".join(lines)


def write_summary(summary: dict, out: Path, started: float) -> str:
    summary["total_s"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    table = summary_table(summary)
    (out / "summary.txt").write_text(table + "\n")
    return table


# The stages after install, in the order they run; CUDA_ONLY run only where CUDA is.
STAGES = ("tests", "smoke", "threestudio", "backends", "full_scale", "side_by_side", "switches")
CUDA_ONLY = ("smoke", "threestudio", "full_scale", "side_by_side", "switches")


def chosen_stages(names, cuda: bool) -> list:
    """The stages of ``names`` that run here, in ``STAGES`` order. ``side_by_side`` runs in
    the threestudio stage's venv, so it needs ``threestudio`` in the same run."""
    unknown = sorted(set(names) - set(STAGES))
    if unknown:
        raise ValueError(f"--stages: unknown {unknown}; expected among {list(STAGES)}")
    if "side_by_side" in names and "threestudio" not in names:
        raise ValueError("--stages: side_by_side needs threestudio in the same run (it runs in that stage's venv)")
    return [name for name in STAGES if name in names and (cuda or name not in CUDA_ONLY)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for summary.json, summary.txt and the logs")
    parser.add_argument("--deps", type=Path, default=REPO / ".gpu-deps", help="what scripts/gather_gpu_deps.sh made")
    parser.add_argument("--work", type=Path, default=Path("/tmp/stabledreamer-gpu-check"),
                        help="scratch folder (installed packages, builds, smoke run)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), metavar="STAGE",
                        help="stages to run after install, default all: " + " ".join(STAGES) +
                        " (side_by_side needs threestudio; the full-size stages reuse the models built under "
                        "--work, so a second command can run them)")
    parser.add_argument("--stage", choices=["backends"], help=argparse.SUPPRESS)
    parser.add_argument("--stage-json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage == "backends":
        backends_stage(args.stage_json)
        return EXIT_OK
    if args.out is None:
        parser.print_usage(sys.stderr)
        print("gpu_check: --out DIR is required", file=sys.stderr)
        return EXIT_USAGE
    try:
        chosen_stages(args.stages, cuda=True)
    except ValueError as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return EXIT_USAGE

    started = time.perf_counter()
    out, work = args.out.resolve(), args.work.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    summary = {"stages": {}, "limits_s": LIMITS_S}
    stages = summary["stages"]

    install_log = Log(out / "install.log")
    site, backend_site = work / "site", work / "backends"
    for folder in (site, backend_site):
        shutil.rmtree(folder, ignore_errors=True)
    stages["install"] = install(args.deps.resolve(), site, backend_site, install_log)
    paths = [str(site), str(link_extension(work))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, *filter(None, [os.environ.get("PYTHONPATH")])]),
           "PATH": os.pathsep.join([str(site / "bin"), os.environ.get("PATH", "")]),
           "TORCH_EXTENSIONS_DIR": str(work / "torch_extensions"),
           "STABLEDREAMER_TINY_MODELS": str(work / "tiny-models"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        summary["environment"] = info = probe(env, install_log)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        install_log.write(str(error))
        stages["install"]["status"] = "failed (environment probe)"
        summary["verdict"] = "FAILED: the environment probe failed (see install.log)"
        print(write_summary(summary, out, started))
        return EXIT_FAILED
    missing = [d for d, v in info["imports"].items() if str(v).startswith("NOT IMPORTABLE")]
    if missing:
        stages["install"]["status"] = f"failed (not importable: {', '.join(missing)})"
    write_summary(summary, out, started)

    cuda = bool(info["cuda"])
    run = chosen_stages(args.stages, cuda)
    build_backends = cuda and "backends" in run
    builds_log = Log(out / "builds.log")
    backend_env = {**env, "PYTHONPATH": os.pathsep.join([str(backend_site), env["PYTHONPATH"]])}
    builds = start_builds(args.deps.resolve(), work, backend_env, info["capability"], builds_log) if build_backends else {}

    if "tests" in run:
        stages["tests"] = run_tests("cuda" if cuda else "cpu", env, work, Log(out / "tests.log"))
        print(f"tests: {stages['tests']}", flush=True)
        write_summary(summary, out, started)
    if "smoke" in run:
        stages["smoke"] = run_smoke(env, work, Log(out / "smoke.log"))
        print(f"smoke: {stages['smoke']['status']}", flush=True)
        write_summary(summary, out, started)
    if "threestudio" in run:
        stages["threestudio"] = run_threestudio(args.deps.resolve(), env, work, Log(out / "threestudio.log"))
        print(f"threestudio: {stages['threestudio']['status']}", flush=True)
        write_summary(summary, out, started)
    if build_backends:
        built = finish_builds(builds, work, builds_log)
        for name, result in built["results"].items():
            stages[f"build {name}"] = result
        backend_env["PYTHONPATH"] = os.pathsep.join([*built["paths"], backend_env["PYTHONPATH"]])
        write_summary(summary, out, started)
    if "backends" in run:
        stages["backends"] = run_backends(backend_env, work, Log(out / "backends.log"))
        write_summary(summary, out, started)
    if "full_scale" in run:
        stages["full_scale"] = run_full_scale(backend_env, work, Log(out / "full_scale.log"))
        write_summary(summary, out, started)
    if "side_by_side" in run:
        stages["side_by_side"] = run_side_by_side(stages["threestudio"], env, work, Log(out / "side_by_side.log"))
        write_summary(summary, out, started)
    if "switches" in run:
        stages["switches"] = run_switches(backend_env, work, Log(out / "switches.log"))
    failed = [name for name, stage in stages.items()
              if stage.get("status") != "ok" and not str(stage.get("status")).startswith("skipped")]
    if not cuda:
        summary["verdict"] = (f"NO CUDA: torch.cuda.is_available() is False here; only the CPU-side parts ran "
                              f"({'all passed' if not failed else 'failed: ' + ', '.join(failed)}). "
                              f"Run this on a machine with an NVIDIA GPU. Exit status {EXIT_NO_CUDA}.")
        code = EXIT_NO_CUDA
    else:
        summary["verdict"] = "PASSED: every stage passed" if not failed else f"FAILED: {', '.join(failed)}"
        code = EXIT_OK if not failed else EXIT_FAILED
    print(write_summary(summary, out, started), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
