"""Build the ``edgeloop-edge`` wheel: the repository's ``edge/`` folder with device-only dependencies.

setuptools packages only what lies under the project folder, so ``edge/`` (its ``.py`` files, no
caches) and ``pyproject.toml.in`` (the root project's version filled in) are staged into a temp
folder and the wheel is built there, without build isolation (setuptools comes from the calling
Python, so no registry is needed).

    .venv/bin/python packaging/edgeloop-edge/build.py [--out dist]    # prints the wheel's path
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def stage(dst: Path) -> Path:
    """Write the device project into ``dst`` (pyproject.toml, README.md, edge/*.py); return ``dst``."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    dst.mkdir(parents=True, exist_ok=True)
    text = (HERE / "pyproject.toml.in").read_text().replace("@VERSION@", version)
    (dst / "pyproject.toml").write_text(text)
    shutil.copyfile(HERE / "README.md", dst / "README.md")
    shutil.copytree(ROOT / "edge", dst / "edge", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


def build_wheel(out_dir: str | Path) -> Path:
    """Build the wheel into ``out_dir`` and return its path."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeloop-edge-build-") as tmp:
        src = stage(Path(tmp) / "src")
        before = set(out.glob("edgeloop_edge-*.whl"))
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                               "--no-cache-dir", "-q", "-w", str(out), str(src)],
                              capture_output=True, text=True, cwd=tmp)
        if proc.returncode != 0:
            raise RuntimeError(f"building the edgeloop-edge wheel failed:\n{proc.stdout}\n{proc.stderr}")
    wheels = sorted(out.glob("edgeloop_edge-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise RuntimeError(f"pip wheel succeeded but left no edgeloop_edge wheel in {out}")
    new = [w for w in wheels if w not in before]
    return (new or wheels)[-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build the edgeloop-edge (device-only) wheel.")
    p.add_argument("--out", default=str(ROOT / "dist"), help="folder for the wheel (default dist/)")
    print(build_wheel(p.parse_args(argv).out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
