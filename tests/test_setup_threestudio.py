"""``stabledreamer-setup-threestudio`` (``threestudio_stabledreamer.setup_threestudio``).

Fast tests drive its parts on fake checkouts and fake installed versions (nothing is
installed; ``test_a_pip_conflict_with_a_pin_is_named`` runs pip for real, on requirements
that cannot resolve). ``test_rerun_on_the_real_checkout_installs_nothing_and_checks`` runs the whole
command on ``$THREESTUDIO_ROOT`` in the environment the set-up made (CI's job 2); it takes
about a minute (it imports real threestudio in a fresh interpreter).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, THREESTUDIO_ROOT, USES_REAL_THREESTUDIO
from threestudio_stabledreamer import run, setup_threestudio as st

CONSTRAINTS = REPO_ROOT / st.CONSTRAINTS_NAME
# threestudio 0.2.3's requirements.txt, the lines the filter treats specially and a few others
REQUIREMENTS = """\
lightning==2.0.0
omegaconf==2.3.0
git+https://github.com/KAIR-BAIR/nerfacc.git@v0.5.2
git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch
diffusers<0.20
git+https://github.com/NVlabs/nvdiffrast.git
libigl
pysdf
gradio==4.11.0
git+https://github.com/ashawkey/envlight.git

# deepfloyd
xformers
bitsandbytes==0.38.1
huggingface_hub

# for zero123
taming-transformers-rom1504
git+https://github.com/openai/CLIP.git

#controlnet
controlnet_aux
""".splitlines()
CUDA_GIT = [
    "git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch",
    "git+https://github.com/NVlabs/nvdiffrast.git",
    "git+https://github.com/ashawkey/envlight.git",
]


def fake_checkout(root: Path, version: str = "0.2.3", requirements: str = "numpy\n") -> Path:
    (root / "threestudio").mkdir(parents=True)
    (root / "launch.py").write_text("")
    (root / "threestudio" / "__init__.py").write_text(f'__modules__ = {{}}\n__version__ = "{version}"\n')
    (root / "requirements.txt").write_text(requirements)
    return root


def cli(capsys, *args):
    code = st.main([str(a) for a in args])
    return code, capsys.readouterr()


# ---------------------------------------------------------------- refusals


def test_refuses_a_folder_that_is_not_a_checkout(tmp_path, capsys):
    code, out = cli(capsys, tmp_path)
    assert code == 1
    assert f"{tmp_path} is not a threestudio checkout: missing launch.py, threestudio/__init__.py" in out.err


def test_refuses_another_threestudio_version(tmp_path, capsys):
    code, out = cli(capsys, fake_checkout(tmp_path / "ts", version="0.2.0"))
    assert code == 1
    assert "holds threestudio 0.2.0, but this extension supports threestudio 0.2.3" in out.err
    assert "checkout 28d9d80" in out.err


def test_missing_folder_offline_says_how_to_get_threestudio(tmp_path, capsys):
    missing = tmp_path / "threestudio"
    code, out = cli(capsys, missing, "--offline")
    assert code == 1
    assert f"{missing} does not exist and --offline forbids cloning threestudio" in out.err
    assert f"git clone https://github.com/threestudio-project/threestudio {missing}" in out.err
    assert not missing.exists()


def test_failed_clone_says_how_to_get_threestudio_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(st, "THREESTUDIO_URL", str(tmp_path / "no-such-repository"))
    missing = tmp_path / "threestudio"
    code, out = cli(capsys, missing)
    assert code == 1
    assert "`git clone --quiet" in out.err and "failed (" in out.err
    assert "copy a threestudio 0.2.3 checkout there" in out.err
    assert not missing.exists()


@pytest.mark.parametrize("cuda_build, available, message", [
    (None, False, "torch 2.1.0 is a CPU-only build"),
    ("12.1", False, "torch 2.1.0 (CUDA 12.1) sees no CUDA device"),
])
def test_gpu_set_up_refuses_a_torch_without_cuda(cuda_build, available, message):
    with pytest.raises(st.SetupError, match=message.replace("(", r"\(").replace(")", r"\)")):
        st.use_cuda(st.TorchInfo("2.1.0", cuda_build, available), "gpu")


def test_cuda_is_used_where_torch_sees_it_unless_cpu_is_asked():
    on_gpu = st.TorchInfo("2.1.0", "12.1", True)
    assert st.use_cuda(on_gpu, "auto") and st.use_cuda(on_gpu, "gpu")
    assert not st.use_cuda(on_gpu, "cpu")
    assert not st.use_cuda(st.TorchInfo("2.1.0", None, False), "auto")


# ---------------------------------------------------------------- constraints


def test_every_pin_of_the_constraints_file_says_why():
    pins = st.parse_constraints(CONSTRAINTS.read_text())
    assert {"huggingface-hub", "numpy", "setuptools", "peft", "accelerate", "diffusers", "transformers",
            "pytorch-lightning", "omegaconf", "tokenizers", "libigl"} <= set(pins)
    assert "torch" not in pins
    assert str(pins["huggingface-hub"].requirement.specifier) == "<0.26"
    assert str(pins["peft"].requirement.specifier) == "==0.13.2"
    assert [name for name, pin in pins.items() if not pin.reason] == []


def test_a_violated_constraint_names_package_version_and_pin():
    pins = st.parse_constraints(CONSTRAINTS.read_text())
    installed = {"huggingface-hub": "0.26.0", "numpy": "1.26.4", "peft": "0.14.0", "requests": "2.31.0"}
    problems = st.constraint_violations(installed, pins, "the constraints file")
    assert len(problems) == 2
    hub, peft = problems
    assert hub.startswith("huggingface-hub 0.26.0 is installed, but the constraints file pins huggingface_hub<0.26")
    assert "cached_download" in hub and 'pip install "huggingface_hub<0.26"' in hub
    assert peft.startswith("peft 0.14.0 is installed, but the constraints file pins peft==0.13.2")


def test_cli_fails_on_an_installed_huggingface_hub_0_26(tmp_path):
    """A real run of the command in an interpreter that sees a huggingface_hub 0.26.0
    distribution (metadata only, placed first on sys.path): it stops before pip."""
    fake = tmp_path / "site" / "huggingface_hub-0.26.0.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: huggingface_hub\nVersion: 0.26.0\n")
    root = fake_checkout(tmp_path / "threestudio")
    # threestudio off the path: the extension package would import it, and with it transformers,
    # which itself refuses that huggingface_hub
    env = dict(os.environ, PYTHONPATH=str(fake.parent))
    done = subprocess.run([sys.executable, "-m", "threestudio_stabledreamer.setup_threestudio", str(root), "--cpu"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "installed packages violate the constraints" in done.stderr
    assert ("huggingface-hub 0.26.0 is installed, but constraints/threestudio-0.2.3.txt pins "
            "huggingface_hub<0.26") in done.stderr
    assert "$ " not in done.stdout  # pip never ran


# ---------------------------------------------------------------- requirements


def test_cpu_filter_drops_cuda_packages_and_says_what_that_disables():
    filtered = st.filter_requirements(REQUIREMENTS, cuda=False, offline=False, torchvision_installed=False)
    assert filtered.kept == ["pytorch-lightning==2.0.0", "omegaconf==2.3.0", "nerfacc==0.5.2", "diffusers<0.20",
                             "libigl", "huggingface_hub"]
    assert filtered.cuda_git == [] and filtered.optional == ["pysdf"]
    notes = "\n".join(filtered.notes)
    assert len(filtered.notes) == 11
    for line in CUDA_GIT:
        assert f"{line} dropped: a CUDA build; without it threestudio's NeRF baselines (dreamfusion-sd.yaml, " \
               "prolificdreamer.yaml and hifa.yaml) cannot run" in notes
    assert "lightning==2.0.0 -> pytorch-lightning==2.0.0: threestudio imports only pytorch_lightning" in notes
    assert "pydantic 1 while gradio 4.11 needs pydantic 2" in notes
    assert "gradio==4.11.0 dropped: only threestudio's gradio app uses it" in notes
    assert "xformers dropped" in notes and "bitsandbytes==0.38.1 dropped: CUDA only" in notes
    assert "controlnet_aux dropped: needs torchvision" in notes


def test_cpu_filter_keeps_torchvision_users_when_torchvision_is_installed():
    filtered = st.filter_requirements(REQUIREMENTS, cuda=False, offline=False, torchvision_installed=True)
    assert {"taming-transformers-rom1504", "controlnet_aux", "git+https://github.com/openai/CLIP.git"} <= set(
        filtered.kept)


def test_cuda_filter_installs_cuda_packages_separately():
    filtered = st.filter_requirements(REQUIREMENTS, cuda=True, offline=False, torchvision_installed=False)
    assert filtered.cuda_git == CUDA_GIT
    assert "bitsandbytes==0.38.1" in filtered.kept and "controlnet_aux" in filtered.kept
    assert "git+https://github.com/openai/CLIP.git" in filtered.kept
    assert not any("xformers" in line or "gradio" in line for line in filtered.kept)


def test_offline_filter_drops_every_git_requirement_with_its_reason():
    filtered = st.filter_requirements(REQUIREMENTS, cuda=True, offline=True, torchvision_installed=True)
    assert filtered.cuda_git == [] and not any(line.startswith("git+") for line in filtered.kept)
    notes = "\n".join(filtered.notes)
    assert "git+https://github.com/ashawkey/envlight.git dropped: offline (a git clone); the NeRF baselines" in notes
    assert "git+https://github.com/openai/CLIP.git dropped: offline" in notes
    assert "pysdf dropped: offline (its build downloads Eigen)" in notes and filtered.optional == []


@pytest.mark.skipif(not USES_REAL_THREESTUDIO, reason="needs THREESTUDIO_ROOT: reads real threestudio's requirements")
def test_real_requirements_resolve_into_known_lines():
    lines = (THREESTUDIO_ROOT / "requirements.txt").read_text().splitlines()
    filtered = st.filter_requirements(lines, cuda=False, offline=True, torchvision_installed=False)
    assert "pytorch-lightning==2.0.0" in filtered.kept and "transformers==4.28.1" in filtered.kept
    assert not any(line.startswith(("lightning", "gradio", "git+", "xformers")) for line in filtered.kept)


def test_unsatisfied_requirements():
    installed = {"numpy": "1.26.4", "diffusers": "0.19.3", "tinycudann": "1.7"}
    lines = ["numpy<2", "diffusers<0.20", "transformers==4.28.1", "numpy>=2",
             "pywin32; sys_platform == 'win32'",
             "git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch",
             "git+https://github.com/NVlabs/nvdiffrast.git"]
    assert st.unsatisfied(lines, installed) == ["transformers==4.28.1", "numpy>=2",
                                                "git+https://github.com/NVlabs/nvdiffrast.git"]


def test_pip_failure_is_summarised_by_its_conflict():
    output = """\
Collecting lightning==2.0.0
WARNING: Location 'file:///opt/pypi/simple/x/' is ignored
INFO: pip is looking at multiple versions of gradio to determine which version is compatible.
ERROR: Cannot install -r requirements.txt (line 1) and gradio==4.11.0 because these package versions have conflicting dependencies.

The conflict is caused by:
    lightning 2.0.0 depends on pydantic<2.0
    gradio 4.11.0 depends on pydantic>=2.0

To fix this you could try to:
ERROR: ResolutionImpossible: for help visit https://pip.pypa.io
"""
    summary = st.summarise_pip_failure(output)
    assert summary.splitlines() == [
        "ERROR: Cannot install -r requirements.txt (line 1) and gradio==4.11.0 because these package versions "
        "have conflicting dependencies.",
        "The conflict is caused by:",
        "    lightning 2.0.0 depends on pydantic<2.0",
        "    gradio 4.11.0 depends on pydantic>=2.0",
        "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io",
    ]


# ---------------------------------------------------------------- the whole command, pip and check faked


@pytest.fixture
def faked(monkeypatch):
    """Record pip calls (with the constraints they pass), fake the installed versions (numpy
    1.26.4, torch 2.1.0) and the import check."""
    calls = []

    def pip(args, what):
        pins = [Path(args[i + 1]).read_text() for i, a in enumerate(args) if a in ("-c", "-r")]
        calls.append((list(args), pins))

    monkeypatch.setattr(st, "pip", pip)
    monkeypatch.setattr(st, "installed_versions", lambda: {"numpy": "1.26.4", "torch": "2.1.0"})
    monkeypatch.setattr(st, "extension_requirements", lambda: ["numpy<2"])
    monkeypatch.setattr(st, "extension_is_this_checkout", lambda repo: True)
    monkeypatch.setattr(st, "check", lambda root, repo: {
        "threestudio": "0.2.3", "registered": ["stabledreamer-system"], "cuda": False, "device": None,
        "stubbed": []})
    return calls


def test_satisfied_requirements_skip_pip_and_links_are_made_once(tmp_path, faked, capsys):
    root = fake_checkout(tmp_path / "threestudio", requirements="numpy\ngit+https://github.com/NVlabs/nvdiffrast.git\n")
    for attempt in range(2):
        code, out = cli(capsys, root, "--cpu")
        assert code == 0, out.err
        assert "nothing to install" in out.out
        assert ("already linked:" in out.out) == (attempt == 1)
    assert faked == []
    assert (root / "custom" / "threestudio-stabledreamer").resolve() == REPO_ROOT / "custom" / "threestudio-stabledreamer"


def test_pip_runs_under_the_constraints_and_a_pin_of_the_installed_torch(tmp_path, faked, capsys, monkeypatch):
    monkeypatch.setattr(st, "torch_info", lambda: st.TorchInfo("2.1.0", None, False))
    monkeypatch.setattr(st.importlib.metadata, "version", {"torch": "2.1.0"}.__getitem__)
    root = fake_checkout(tmp_path / "threestudio", requirements="numpy\nno-such-distribution==1.0\n")
    code, out = cli(capsys, root, "--cpu")
    assert code == 0, out.err
    ((args, pins),) = faked
    assert args[args.index("-e") + 1] == str(REPO_ROOT)
    assert pins == ["numpy\nno-such-distribution==1.0\n", CONSTRAINTS.read_text(), "torch==2.1.0\n"]


def test_with_cuda_the_cuda_builds_follow_without_build_isolation(tmp_path, faked, capsys, monkeypatch):
    monkeypatch.setattr(st, "torch_info", lambda: st.TorchInfo("2.1.0", "12.1", True))
    monkeypatch.setattr(st.importlib.metadata, "version", {"torch": "2.1.0"}.__getitem__)
    lines = ["numpy", "no-such-distribution==1.0", *CUDA_GIT, "xformers"]
    code, out = cli(capsys, fake_checkout(tmp_path / "threestudio", requirements="\n".join(lines) + "\n"), "--gpu")
    assert code == 0, out.err
    (main_args, main_files), (cuda_args, cuda_files) = faked
    assert main_files[0] == "numpy\nno-such-distribution==1.0\n"
    assert cuda_args[0] == "--no-build-isolation" and cuda_args[1:4] == CUDA_GIT
    assert cuda_files == [CONSTRAINTS.read_text(), "torch==2.1.0\n"]
    assert "NeRF baselines" not in out.out and "xformers dropped" in out.out


def test_missing_cuda_builds_alone_are_installed_alone(tmp_path, faked, capsys, monkeypatch):
    """The other requirements satisfied (a CPU set-up before, say): only the CUDA builds."""
    monkeypatch.setattr(st, "torch_info", lambda: st.TorchInfo("2.1.0", "12.1", True))
    monkeypatch.setattr(st.importlib.metadata, "version", {"torch": "2.1.0"}.__getitem__)
    code, out = cli(capsys, fake_checkout(tmp_path / "threestudio", requirements="\n".join(["numpy", *CUDA_GIT])),
                    "--gpu")
    assert code == 0, out.err
    ((args, _),) = faked
    assert args[:4] == ["--no-build-isolation", *CUDA_GIT]

def test_an_optional_build_that_fails_only_warns(tmp_path, faked, capsys, monkeypatch):
    monkeypatch.setattr(st, "torch_info", lambda: st.TorchInfo("2.1.0", None, False))
    monkeypatch.setattr(st.importlib.metadata, "version", {"torch": "2.1.0"}.__getitem__)
    recorded = st.pip

    def pip(args, what):
        recorded(args, what)
        if args[0] == "pysdf":
            raise st.SetupError("pip could not install pysdf:\nERROR: Failed building wheel for pysdf")

    monkeypatch.setattr(st, "pip", pip)
    root = fake_checkout(tmp_path / "threestudio", requirements="no-such-distribution==1.0\npysdf\n")
    code, out = cli(capsys, root, "--cpu")
    assert code == 0, out.err
    assert [args[0] for args, _ in faked] == ["-r", "pysdf"]
    assert "Warning: pip could not install pysdf:\nERROR: Failed building wheel for pysdf\n  Left out; pysdf is " \
           "optional here" in out.out
    assert "Checked:" in out.out

def test_a_torch_replaced_by_pip_is_an_error(tmp_path, faked, capsys, monkeypatch):
    monkeypatch.setattr(st, "torch_info", lambda: st.TorchInfo("2.1.0", None, False))
    monkeypatch.setattr(st.importlib.metadata, "version", {"torch": "2.2.0"}.__getitem__)
    code, out = cli(capsys, fake_checkout(tmp_path / "threestudio", requirements="no-such-distribution\n"), "--cpu")
    assert code == 1
    assert "pip replaced torch 2.1.0 by 2.2.0" in out.err


# ---------------------------------------------------------------- run.py


def test_run_refuses_a_threestudio_folder_that_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "threestudio"
    assert run.main(["--prompt", "a hamburger", "--threestudio", str(missing)]) == 1
    err = capsys.readouterr().err
    assert f"--threestudio (or $THREESTUDIO_ROOT) '{missing}' does not exist" in err
    assert f"stabledreamer-setup-threestudio {missing}" in err


def test_run_refuses_a_threestudio_folder_that_is_not_a_checkout(tmp_path, monkeypatch):
    monkeypatch.setenv("THREESTUDIO_ROOT", str(tmp_path))
    with pytest.raises(run.RunError, match=f"{tmp_path} is not a threestudio checkout"):
        run.threestudio_checkout(tmp_path)
    assert run.threestudio_checkout(None) is None
    assert run.threestudio_checkout(fake_checkout(tmp_path / "ts")) == (tmp_path / "ts").resolve()



def test_run_sets_the_checkout_up_before_the_gpu_run(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(run, "set_up_threestudio", lambda root: calls.append(("set-up", root)))

    def run_in_threestudio(root, gpu, prompt, overrides, exp_root):
        calls.append(("run", root))
        raise run.RunError("stopped here")

    monkeypatch.setattr(run, "run_in_threestudio", run_in_threestudio)
    root = fake_checkout(tmp_path / "threestudio").resolve()
    assert run.main(["--prompt", "a hamburger", "--threestudio", str(root)]) == 1
    assert calls == [("set-up", root), ("run", root)]
    assert "stopped here" in capsys.readouterr().err

# ---------------------------------------------------------------- the real thing


@pytest.mark.skipif(not USES_REAL_THREESTUDIO,
                    reason="needs THREESTUDIO_ROOT set up by the command: it checks the real threestudio")
def test_rerun_on_the_real_checkout_installs_nothing_and_checks(tmp_path):
    """Slow (about a minute): the command on the checkout it set up, run again."""
    # as a user runs it: threestudio is not on the path (conftest puts it on PYTHONPATH, and the
    # extension package would import it, without the CPU stubs), nor the repository's root
    # (`python -m` puts the working directory first, where a build may leave an egg-info)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "threestudio_stabledreamer.setup_threestudio", str(THREESTUDIO_ROOT),
                           "--offline"], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Every requirement is already satisfied: nothing to install." in done.stdout
    registered = len(st.expected_registrations(REPO_ROOT / "custom" / "threestudio-stabledreamer"))
    assert f"threestudio 0.2.3 imports with {registered} stabledreamer-* classes registered" in done.stdout
    assert ("torch sees CUDA" if torch.cuda.is_available() else "torch sees no CUDA device.") in done.stdout
    assert "Installed: torch " in done.stdout


def test_a_pip_conflict_with_a_pin_is_named(tmp_path, monkeypatch, capsys):
    """A real pip run (about 15 s) that cannot resolve: the checkout asks for
    huggingface_hub>=0.26 against the pin <0.26, so pip stops before installing anything."""
    monkeypatch.setattr(st, "installed_versions", lambda: {})
    monkeypatch.setattr(st, "extension_requirements", lambda: [])
    root = fake_checkout(tmp_path / "threestudio", requirements="huggingface_hub>=0.26\n")
    code, out = cli(capsys, root, "--cpu")
    assert code == 1
    assert "pip could not install threestudio's requirements and this extension under " \
           "constraints/threestudio-0.2.3.txt:" in out.err
    summary = out.err.split("constraints/threestudio-0.2.3.txt:", 1)[1].strip().splitlines()
    assert summary[0].startswith("ERROR: Cannot install huggingface_hub>=0.26 because")
    assert "The conflict is caused by:" in summary
    # pip names the pin by its normalised name
    assert any("constraint" in line and re.search(r"huggingface[-_]hub<0\.26", line) for line in summary)
