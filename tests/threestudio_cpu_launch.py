"""``python tests/threestudio_cpu_launch.py ARGS``: threestudio's own ``launch.py`` from
``$THREESTUDIO_ROOT`` with ARGS, on a machine without CUDA.

The shims of ``threestudio_cpu_shims`` are applied at import of this file, so they are in
force in the child processes that threestudio's prompt processors spawn as well (a
``spawn`` child re-imports the parent's main script before it unpickles its target). Then
``launch.py`` runs unchanged as ``__main__``, in the working directory it was called from
(where it finds ``custom/``).

With ``STABLEDREAMER_STUB_MISSING_CUDA_BUILDS=1`` (the GPU check's threestudio stage), the
CUDA builds that are not installed (tiny-cuda-nn, nvdiffrast, envlight) are stubbed on a
CUDA machine as well, and the launch says so.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import threestudio_cpu_shims  # noqa: E402

THREESTUDIO_ROOT = Path(os.environ["THREESTUDIO_ROOT"]).resolve()
if os.environ.get("STABLEDREAMER_STUB_MISSING_CUDA_BUILDS") == "1":
    stubbed = threestudio_cpu_shims.stub_missing_cuda_builds()
    if stubbed:
        print(f"threestudio_cpu_launch: not installed, stubbed: {', '.join(stubbed)} (threestudio's NeRF "
              "models need them; this launch does not)", flush=True)
threestudio_cpu_shims.install(THREESTUDIO_ROOT)
threestudio_cpu_shims.force_cpu_trainer()

if __name__ == "__main__":
    launch = THREESTUDIO_ROOT / "launch.py"
    sys.argv[0] = str(launch)
    code = compile(launch.read_text(encoding="utf-8"), str(launch), "exec")
    exec(code, {"__name__": "__main__", "__file__": str(launch), "__builtins__": __builtins__})
