"""The README's run command (``python -m threestudio_stabledreamer.run``): its cheap parts.
The full CPU smoke run it starts is the launcher run covered by test_system_e2e.py."""
import pytest
from omegaconf import OmegaConf

from threestudio_stabledreamer import run


@pytest.mark.parametrize(
    "prompt",
    [
        "a zoomed out DSLR photo of a corgi wearing a top hat",
        "a dslr photo of a tarantula, highly detailed",
        'humoristic san goku: body "mixed" with wild boar head',
    ],
)
def test_prompt_override_survives_the_dot_list_parser(prompt):
    parsed = OmegaConf.from_dotlist([run.prompt_override(prompt)])
    assert parsed.system.prompt_processor.prompt == prompt


def test_empty_prompt_is_refused():
    with pytest.raises(run.RunError, match="--prompt is empty"):
        run.prompt_override("  ")


def test_report_lists_every_output_and_flags_missing_ones(tmp_path, capsys):
    save = tmp_path / "save"
    (save / "it20-export").mkdir(parents=True)
    for name in ("it20-test.mp4", "it20-export/model.ply", "it20-export/model-mesh.obj", "metrics.json"):
        (save / name).write_bytes(b"")
    assert run.report_outputs(tmp_path) is False
    out = capsys.readouterr().out
    assert str(save / "it20-test.mp4") in out and str(save / "it20-export" / "model.ply") in out
    assert "mesh (GLB)" in out and "MISSING" in out
    (save / "it20-export" / "model-mesh.glb").write_bytes(b"")
    assert run.report_outputs(tmp_path) is True


def test_unknown_arguments_are_rejected(capsys):
    with pytest.raises(SystemExit):
        run.main(["--prompt", "a hamburger", "--bogus"])
    assert "config overrides look like a.b=c" in capsys.readouterr().err
