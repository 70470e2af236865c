"""``stabledreamer-link <threestudio_root>``: put this extension into a threestudio checkout.

Creates symbolic links
  <root>/custom/threestudio-stabledreamer -> <repo>/custom/threestudio-stabledreamer
  <root>/configs/<name>.yaml              -> <repo>/configs/<name>.yaml  (every one)
so that ``python launch.py --config configs/<name>.yaml ...`` works from the threestudio
root. Links that already point at the right place are left alone (re-running is a
no-op); any other file or link in the way is an error and nothing is changed.
The repository is found from this module's own location, which must be a source
checkout (an editable install).
"""
import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional, Tuple

EXTENSION_NAME = "threestudio-stabledreamer"
CHECKOUT_MARKERS = ("launch.py", "threestudio/__init__.py")


class LinkError(Exception):
    """A problem that stops linking; the message says what and where."""


def extension_dir() -> Path:
    """This extension's folder, symlinks resolved."""
    return Path(__file__).resolve().parent


def repository_root(ext_dir: Path) -> Path:
    """The source checkout holding ``ext_dir`` as ``custom/threestudio-stabledreamer``."""
    repo = ext_dir.parent.parent
    if ext_dir.parent.name != "custom" or not (repo / "configs").is_dir():
        raise LinkError(
            f"the package at {ext_dir} is not inside a source checkout "
            f"(expected <repo>/custom/{EXTENSION_NAME} next to <repo>/configs/); "
            f"install the repository with `pip install -e .` and run this again"
        )
    return repo


def check_threestudio_root(root: Path) -> None:
    missing = [m for m in CHECKOUT_MARKERS if not (root / m).is_file()]
    if missing:
        raise LinkError(
            f"{root} is not a threestudio checkout: missing {', '.join(missing)} "
            f"(expected the root of a clone of github.com/threestudio-project/threestudio)"
        )


def planned_links(repo: Path, ext_dir: Path, root: Path) -> List[Tuple[Path, Path]]:
    """(link path, target) pairs: the extension folder and every ``configs/*.yaml``."""
    links = [(root / "custom" / EXTENSION_NAME, ext_dir)]
    links += [(root / "configs" / cfg.name, cfg.resolve()) for cfg in sorted((repo / "configs").glob("*.yaml"))]
    return links


def is_linked(link: Path, target: Path) -> bool:
    return link.is_symlink() and link.resolve() == target


def conflicts(links: List[Tuple[Path, Path]]) -> List[str]:
    """Descriptions of paths that exist but are not links to their target."""
    found = []
    for link, target in links:
        if is_linked(link, target):
            continue
        if link.is_symlink():
            found.append(f"{link} is a link to {os.readlink(link)}, not to {target}")
        elif link.exists():
            kind = "directory" if link.is_dir() else "file"
            found.append(f"{link} is an existing {kind}, not a link to {target}")
    return found


def link_into(root: Path, ext_dir: Optional[Path] = None) -> List[str]:
    """Create the links in the threestudio checkout ``root``; returns one line per link
    saying what was done. Raises ``LinkError`` (changing nothing) on a bad root or a
    conflicting path."""
    ext_dir = (ext_dir or extension_dir()).resolve()
    repo = repository_root(ext_dir)
    root = root.resolve()
    check_threestudio_root(root)
    links = planned_links(repo, ext_dir, root)
    problems = conflicts(links)
    if problems:
        raise LinkError(
            "refusing to overwrite; remove these and run again:\n  " + "\n  ".join(problems)
        )
    report = []
    for link, target in links:
        if is_linked(link, target):
            report.append(f"already linked: {link} -> {target}")
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=target.is_dir())
        report.append(f"linked: {link} -> {target}")
    return report


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stabledreamer-link",
        description=(
            f"Link custom/{EXTENSION_NAME} and configs/*.yaml of this repository into a "
            "threestudio checkout."
        ),
    )
    parser.add_argument("threestudio_root", type=Path, help="root of a threestudio clone")
    args = parser.parse_args(argv)
    try:
        lines = link_into(args.threestudio_root)
    except LinkError as e:
        print(f"stabledreamer-link: error: {e}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
