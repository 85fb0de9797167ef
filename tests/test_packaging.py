"""The wheel holds every package and every data file of the source tree (cheap: one wheel build, no
dependency install, no import of the built package). ``tests/test_install.py`` (slow) installs it and runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT

#: what a wheel is built from (everything else in the checkout is not shipped)
SOURCES = ("bench", "editors", "conf", "pyproject.toml", "README.md")
#: files of the source tree that are never shipped
SKIP_SUFFIXES = (".pyc",)


def tracked_files() -> list[str]:
    """The source tree's files that a wheel must ship, as their path inside the wheel (``conf/x`` is
    ``bench/conf/x``): git's files (tracked, or new and not ignored) in a git clone, else every file on disk."""
    r = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "bench", "editors", "conf"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if r.returncode == 0 and r.stdout:
        files = [f for f in r.stdout.split("\0") if f]
    else:
        files = [
            str(p.relative_to(ROOT))
            for top in ("bench", "editors", "conf")
            for p in (ROOT / top).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and (ROOT / "bench" / "conf") not in p.parents
        ]
    out = []
    for f in files:
        if f.endswith(SKIP_SUFFIXES) or f == "bench/conf":  # bench/conf: the link to conf/
            continue
        out.append("bench/" + f if f.startswith("conf/") else f)
    return sorted(out)


def build_wheel(tmp_path: Path, pyproject: str | None = None) -> list[str]:
    """Build the wheel from a copy of the sources (build/ and *.egg-info never land in the checkout),
    with ``pyproject`` as its pyproject.toml when given; the names of the files in it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    if pyproject is not None:
        (src / "pyproject.toml").write_text(pyproject, encoding="utf-8")
    wheels = tmp_path / "wheels"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(wheels), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = wheels.glob("bench-*.whl")
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


def missing(shipped) -> list[str]:
    return [f for f in tracked_files() if f not in set(shipped)]


def test_the_wheel_ships_every_package_and_data_file(tmp_path):
    shipped = set(build_wheel(tmp_path))
    want = tracked_files()
    assert len(want) > 80, want  # the tree itself was read (packages, configs, assets)
    left_out = missing(shipped)
    assert not left_out, f"{len(left_out)} files of the source tree are not in the wheel: {left_out[:20]}"
    packages = {str(Path(f).parent) for f in want if f.endswith("__init__.py")}
    assert {"bench", "bench/core", "bench/backbones", "bench/toy", "editors"} <= packages
    # nothing from outside the package tree (tests, scripts, results) is shipped
    tops = {f.split("/", 1)[0] for f in shipped}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"bench", "editors"}, tops


def test_the_check_sees_a_package_left_out(tmp_path):
    """A hand-written package list that forgets ``bench.core`` (as this project's once did) fails the check."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    head, sep, rest = text.partition("[tool.setuptools.packages.find]")
    assert sep, "pyproject.toml no longer discovers packages"
    rest = rest.split("\n[", 1)[1]  # drop the find table
    listed = (
        '[tool.setuptools]\npackages = ["bench", "bench.backbones", "bench.toy", "bench.conf", "editors"]\n\n'
        '[tool.setuptools.package-dir]\n"bench.conf" = "conf"\n\n['
    )
    left_out = missing(build_wheel(tmp_path, head + listed + rest))
    assert "bench/core/editor.py" in left_out
    assert all(f.startswith("bench/core/") for f in left_out), left_out
