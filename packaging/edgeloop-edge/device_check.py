"""``make device-check``: install only the device package in a fresh venv and prove it works there.

1. build the ``edgeloop-edge`` wheel (build.py);
2. create a venv outside ``.venv`` (no pip inside: the calling pip installs into it with
   ``--python``), install the wheel and ``requirements/device.txt`` with ``--no-deps --no-compile``;
3. ``edgeloop-edge --help`` there; ``edge`` must come from that venv, and torch must be absent;
4. verify, load and ask the latest bundle under ``$EDGELOOP_HOME/bundles`` (newest manifest
   ``created_at``; key ``$EDGELOOP_HOME/keys/edge_signing.pub``) one message through
   ``edgeloop-edge verify``; with no bundle there, a student-shaped int8 bundle is built with the
   training stack first. The answer must match the training side's (same label, confidence
   within 1e-3: the device pins another ONNX Runtime);
5. print ``installed size: N MB`` (the venv's site-packages after the run) and fail above the goal.

Runs with the main venv's Python; exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT))

from build import build_wheel  # noqa: E402

MESSAGE = "where is my order 1137? it has not arrived"


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"device-check: `{' '.join(map(str, cmd))}` failed ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def latest_bundle(bundles: Path) -> Path | None:
    """The bundle folder under ``bundles`` whose manifest is newest, or None."""
    found = []
    for manifest in list(bundles.glob("*/manifest.json")) + list(bundles.glob("*/*/manifest.json")):
        try:
            found.append((json.loads(manifest.read_text()).get("created_at", ""), manifest.parent))
        except (OSError, json.JSONDecodeError):
            continue
    return max(found)[1] if found else None


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", default=shutil.which("python3.11") or sys.executable,
                   help="interpreter for the device venv (default python3.11)")
    p.add_argument("--home", type=Path, default=Path(os.environ.get("EDGELOOP_HOME", ROOT / "var")))
    p.add_argument("--max-mb", type=float, default=float(os.environ.get("DEVICE_MAX_MB", 150)))
    p.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="edgeloop-device-check-"))
    try:
        wheel = build_wheel(work / "dist")
        print(f"device-check: built {wheel.name}")
        venv = work / "venv"
        run([args.python, "-m", "venv", "--without-pip", venv])
        py = venv / "bin" / "python"
        run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-compile",
             "-r", ROOT / "requirements" / "device.txt", wheel])
        site = Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
        print(f"device-check: installed the wheel and requirements/device.txt into {venv}")

        cwd = work  # not the repository: `edge` must come from the venv
        run([venv / "bin" / "edgeloop-edge", "--help"], cwd=cwd)
        probe = run([py, "-c", "import importlib.util as u, edge, onnxruntime as o; "
                     "print(edge.__file__); print(o.__version__); print(u.find_spec('torch') is None)"], cwd=cwd)
        edge_file, ort_version, no_torch = probe.stdout.split()
        if not Path(edge_file).is_relative_to(site) or no_torch != "True":
            raise SystemExit(f"device-check: edge imported from {edge_file} (expected under {site}); "
                             f"torch absent: {no_torch}")
        print(f"device-check: edgeloop-edge --help ok; edge from the venv; onnxruntime {ort_version}; no torch")

        bundles, key = args.home / "bundles", args.home / "keys" / "edge_signing.pub"
        folder = latest_bundle(bundles) if key.is_file() else None
        if folder is None:
            from benchmarks.bench_edge_server import build_student_bundle

            print(f"device-check: no signed bundle under {bundles}; building a student-shaped one")
            bundles, key = build_student_bundle(work / "made")
            folder = latest_bundle(bundles)
        verify = ["--public-key", key, "verify", folder, "--text", MESSAGE]
        device = json.loads(run([venv / "bin" / "edgeloop-edge", *verify], cwd=cwd).stdout)
        train = json.loads(run([sys.executable, "-m", "edge.cli", *verify], cwd=ROOT).stdout)
        (d,), (t,) = device["answers"], train["answers"]
        if d["label"] != t["label"] or abs(d["confidence"] - t["confidence"]) > 1e-3:
            raise SystemExit(f"device-check: the device answered {d}, the training side {t}")
        print(f"device-check: bundle {device['model_version']} ({folder}) verified and loaded; "
              f"{MESSAGE!r} -> {d['label']} ({d['confidence']:.3f}), same as the training side")

        size = dir_mb(site)
        print(f"installed size: {size:.0f} MB")
        if size > args.max_mb:
            biggest = sorted(((dir_mb(x), x.name) for x in site.iterdir() if x.is_dir()), reverse=True)[:6]
            raise SystemExit(f"device-check: {size:.1f} MB is above the {args.max_mb:g} MB goal; largest: "
                             + ", ".join(f"{n} {mb:.1f} MB" for mb, n in biggest))
        print(f"device-check: ok ({size:.1f} MB <= {args.max_mb:g} MB)")
        return 0
    finally:
        if args.keep:
            print(f"device-check: work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
