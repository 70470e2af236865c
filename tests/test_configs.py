"""The YAML configs load through threestudio's ``load_config`` and every component section
parses with its class's ``Config`` (unknown keys are errors); the system's stage set-up
checks name the offending field."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import threestudio
import threestudio_stabledreamer  # noqa: F401  (registers the extension's classes)
import threestudio_stabledreamer.exporters  # noqa: F401
import threestudio_stabledreamer.systems  # noqa: F401
from threestudio.utils.config import load_config, parse_structured
from threestudio_stabledreamer.systems.stabledreamer import StableDreamerSystem, check_config

from conftest import REPO_ROOT

CONFIGS = sorted((REPO_ROOT / "configs").glob("stabledreamer*.yaml"))
PROMPT = "a zoomed out DSLR photo of a corgi wearing a top hat"
COMPONENTS = ("geometry", "renderer", "material", "background", "prompt_processor", "guidance",
              "prompt_processor_stage2", "guidance_stage2", "exporter")


def load(path: Path, tmp_path, monkeypatch, *overrides):
    monkeypatch.chdir(tmp_path)  # load_config creates the trial directory
    return load_config(str(path), cli_args=[f"system.prompt_processor.prompt={PROMPT}", *overrides])


def test_every_expected_config_exists():
    names = {path.name for path in CONFIGS}
    assert {"stabledreamer.yaml", "stabledreamer-if-only.yaml", "stabledreamer-sd-only.yaml",
            "stabledreamer-no-anneal.yaml", "stabledreamer-cpu.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_sections_parse_with_their_classes(path, tmp_path, monkeypatch):
    cfg = load(path, tmp_path, monkeypatch)
    system_cfg = parse_structured(StableDreamerSystem.Config, cfg.system)
    check_config(system_cfg)
    assert cfg.system_type == "stabledreamer-system"
    for name in COMPONENTS:
        component_type = getattr(system_cfg, f"{name}_type")
        if not component_type:
            continue
        parse_structured(threestudio.find(component_type).Config, getattr(system_cfg, name))
    start = system_cfg.stage2_start_step
    if start is None or start == 0:
        return
    # one prompt drives both stages; the data module switches resolution with the stage
    assert system_cfg.prompt_processor_stage2.prompt == PROMPT
    assert list(cfg.data.resolution_milestones) == [start]
    assert system_cfg.guidance_stage2.get("anneal_start_step", start) == start


def test_sd_only_prompt_reaches_the_stage2_processor(tmp_path, monkeypatch):
    cfg = load(REPO_ROOT / "configs" / "stabledreamer-sd-only.yaml", tmp_path, monkeypatch)
    assert cfg.system.stage2_start_step == 0
    assert cfg.system.prompt_processor_stage2.prompt == PROMPT


def test_annealing_differs_only_in_the_no_anneal_ablation(tmp_path, monkeypatch):
    main = load(REPO_ROOT / "configs" / "stabledreamer.yaml", tmp_path, monkeypatch)
    ablation = load(REPO_ROOT / "configs" / "stabledreamer-no-anneal.yaml", tmp_path, monkeypatch)
    assert main.system.guidance.anneal == main.system.guidance_stage2.anneal == "sqrt"
    assert ablation.system.guidance.anneal == ablation.system.guidance_stage2.anneal == "none"
    for section in ("guidance", "guidance_stage2"):
        main_rest = {k: v for k, v in main.system[section].items() if not k.startswith(("anneal", "min_", "max_"))}
        ablation_rest = {k: v for k, v in ablation.system[section].items()
                         if not k.startswith(("anneal", "min_", "max_"))}
        assert main_rest == ablation_rest
    assert OmegaConf.to_container(main.data) == OmegaConf.to_container(ablation.data)
    assert OmegaConf.to_container(main.system.geometry) == OmegaConf.to_container(ablation.system.geometry)


def system_config(tmp_path, monkeypatch, *overrides):
    cfg = load(REPO_ROOT / "configs" / "stabledreamer-cpu.yaml", tmp_path, monkeypatch, *overrides)
    return parse_structured(StableDreamerSystem.Config, cfg.system)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (['system.guidance_stage2_type=""'], "system.guidance_stage2_type"),
        (["system.stage2_start_step=-1"], "system.stage2_start_step"),
        (['system.prompt_processor.prompt=" "'], "system.prompt_processor.prompt"),
        (['system.guidance_type=""'], "system.guidance_type"),
        (["system.vis_interval=-5"], "system.vis_interval"),
        (["system.scheduler.name=ExponentialLR"], "system.scheduler"),
    ],
)
def test_inconsistent_stage_setups_name_the_field(tmp_path, monkeypatch, overrides, field):
    cfg = system_config(tmp_path, monkeypatch, *overrides)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        check_config(cfg)


def test_stage2_guidance_without_a_start_step_is_an_error(tmp_path, monkeypatch):
    cfg = system_config(tmp_path, monkeypatch)
    cfg.stage2_start_step = None
    with pytest.raises(ValueError, match=r"system\.stage2_start_step is null"):
        check_config(cfg)


def test_stage1_settings_are_not_needed_when_stage2_starts_at_zero(tmp_path, monkeypatch):
    cfg = system_config(tmp_path, monkeypatch, "system.stage2_start_step=0", 'system.guidance_type=""')
    check_config(cfg)


def test_stage_follows_the_global_step():
    stage_at = StableDreamerSystem.stage_at

    class Stub:
        has_stage2 = True

        class cfg:
            stage2_start_step = 10

    assert [stage_at(Stub, s) for s in (0, 9, 10, 11)] == [1, 1, 2, 2]
    Stub.has_stage2 = False
    assert stage_at(Stub, 10_000) == 1
