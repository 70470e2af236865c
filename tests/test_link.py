"""``stabledreamer-link``: links the extension and its configs into a threestudio checkout."""
from pathlib import Path

import pytest

import threestudio_stabledreamer
from threestudio_stabledreamer.link import LinkError, link_into, main

EXTENSION_DIR = Path(threestudio_stabledreamer.__file__).resolve().parent
REPO_CONFIGS = EXTENSION_DIR.parents[1] / "configs"


def make_threestudio_checkout(root: Path) -> Path:
    """A directory shaped like a threestudio clone: launch.py, threestudio/, custom/, configs/."""
    (root / "threestudio").mkdir(parents=True)
    (root / "threestudio" / "__init__.py").write_text("")
    (root / "launch.py").write_text("")
    (root / "custom").mkdir()
    (root / "configs").mkdir()
    (root / "configs" / "dreamfusion-sd.yaml").write_text("name: dreamfusion-sd\n")
    return root


def make_source_repo(root: Path, config_names) -> Path:
    """A source checkout of this project with the given configs; returns its extension dir."""
    ext = root / "custom" / "threestudio-stabledreamer"
    ext.mkdir(parents=True)
    (ext / "__init__.py").write_text("")
    (root / "configs").mkdir()
    for name in config_names:
        (root / "configs" / name).write_text(f"name: {name}\n")
    (root / "configs" / "notes.txt").write_text("not a config\n")
    return ext


def test_links_extension_and_every_config_then_is_a_no_op(tmp_path, capsys):
    root = make_threestudio_checkout(tmp_path / "threestudio")

    assert main([str(root)]) == 0
    first = capsys.readouterr().out

    link = root / "custom" / "threestudio-stabledreamer"
    assert link.is_symlink() and link.resolve() == EXTENSION_DIR
    assert (link / "link.py").is_file()
    repo_configs = sorted(REPO_CONFIGS.glob("*.yaml"))
    for config in repo_configs:
        linked = root / "configs" / config.name
        assert linked.is_symlink() and linked.resolve() == config.resolve()
    assert first.count("linked: ") == 1 + len(repo_configs)
    assert not (root / "configs" / "dreamfusion-sd.yaml").is_symlink()

    before = {p: p.lstat().st_ino for p in [link, *(root / "configs").iterdir()]}
    assert main([str(root)]) == 0
    second = capsys.readouterr().out
    assert second.count("already linked: ") == 1 + len(repo_configs)
    assert "\nlinked: " not in "\n" + second
    assert {p: p.lstat().st_ino for p in [link, *(root / "configs").iterdir()]} == before


def test_links_each_yaml_config_of_the_repository(tmp_path):
    ext = make_source_repo(tmp_path / "repo", ["stabledreamer.yaml", "stabledreamer-cpu.yaml"])
    root = make_threestudio_checkout(tmp_path / "threestudio")

    lines = link_into(root, ext_dir=ext)

    assert len(lines) == 3
    for name in ("stabledreamer.yaml", "stabledreamer-cpu.yaml"):
        linked = root / "configs" / name
        assert linked.resolve() == (tmp_path / "repo" / "configs" / name).resolve()
        assert linked.read_text() == f"name: {name}\n"
    assert not (root / "configs" / "notes.txt").exists()
    assert (root / "custom" / "threestudio-stabledreamer").resolve() == ext.resolve()


def test_refuses_a_directory_that_is_not_a_threestudio_checkout(tmp_path, capsys):
    not_checkout = tmp_path / "somewhere"
    not_checkout.mkdir()
    (not_checkout / "launch.py").write_text("")

    assert main([str(not_checkout)]) == 1

    err = capsys.readouterr().err
    assert f"{not_checkout.resolve()} is not a threestudio checkout" in err
    assert "threestudio/__init__.py" in err
    assert list(not_checkout.iterdir()) == [not_checkout / "launch.py"]


def test_conflicting_file_is_named_and_nothing_is_linked(tmp_path):
    ext = make_source_repo(tmp_path / "repo", ["stabledreamer.yaml"])
    root = make_threestudio_checkout(tmp_path / "threestudio")
    (root / "configs" / "stabledreamer.yaml").write_text("someone else's config\n")

    with pytest.raises(LinkError, match=r"configs/stabledreamer\.yaml is an existing file"):
        link_into(root, ext_dir=ext)

    assert not (root / "custom" / "threestudio-stabledreamer").exists()
    assert (root / "configs" / "stabledreamer.yaml").read_text() == "someone else's config\n"


def test_link_to_another_target_is_a_conflict(tmp_path):
    ext = make_source_repo(tmp_path / "repo", [])
    other = make_source_repo(tmp_path / "other-clone", [])
    root = make_threestudio_checkout(tmp_path / "threestudio")
    (root / "custom" / "threestudio-stabledreamer").symlink_to(other, target_is_directory=True)

    with pytest.raises(LinkError, match="is a link to .*other-clone"):
        link_into(root, ext_dir=ext)
