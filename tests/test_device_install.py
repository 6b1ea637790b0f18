"""The device-only distribution (packaging/edgeloop-edge): what the wheel holds and what it needs;
and the pins of requirements/ agree with each other.

The install itself (a fresh venv from the registries) is `make device-check`, which CI runs after
the tests; here: the wheel holds edge/ and nothing else, declares only device dependencies, the
code in edge/ imports nothing beyond them, and requirements/device.txt pins exactly their closure.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import tomllib
import zipfile
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging" / "edgeloop-edge"
DEVICE_DEPENDENCIES = {"onnxruntime", "tokenizers", "numpy", "cryptography", "tuf"}
# Importable names a device may use: its dependencies, and tuf's own (it hands them to callers).
DEVICE_IMPORTS = DEVICE_DEPENDENCIES | {"securesystemslib", "urllib3"}
# tokenizers declares the hub for from_pretrained downloads; a device reads tokenizer.json instead.
LEFT_OUT = {"huggingface-hub"}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"edgeloop_edge_{name}", PACKAGING / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_norm(name)] = version
    return pins


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return _load("build").build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_holds_edge_only_with_device_dependencies_and_the_entry_point(wheel):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert wheel.name == f"edgeloop_edge-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = f"edgeloop_edge-{version}.dist-info/"
        metadata = z.read(info + "METADATA").decode()
        entry_points = z.read(info + "entry_points.txt").decode()
    code = sorted(n for n in names if not n.startswith(info))
    assert code == sorted(f"edge/{p.name}" for p in (ROOT / "edge").glob("*.py"))
    declared = {_norm(Requirement(line.split(":", 1)[1]).name)
                for line in metadata.splitlines() if line.startswith("Requires-Dist:")}
    assert declared == DEVICE_DEPENDENCIES
    assert re.search(r"^edgeloop-edge = edge\.cli:main$", entry_points, re.M)


def test_edge_imports_nothing_beyond_the_stdlib_and_the_device_dependencies():
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "edge").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                tops = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = {node.module.split(".")[0]}
            else:
                continue
            for top in tops - set(sys.stdlib_module_names) - DEVICE_IMPORTS - {"edge", "__future__"}:
                found.setdefault(top, set()).add(path.name)
    assert not found, f"edge/ imports packages a device does not install: {found}"


def test_device_lock_pins_exactly_the_dependency_closure():
    """requirements/device.txt (installed with --no-deps) = the declared dependencies and theirs."""
    closure, todo = set(), sorted(DEVICE_DEPENDENCIES)
    while todo:
        name = todo.pop()
        if name in closure or name in LEFT_OUT:
            continue
        closure.add(name)
        for spec in requires(name) or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_norm(req.name))
    lock = _pins(ROOT / "requirements" / "device.txt")
    assert set(lock) == closure
    assert all(re.fullmatch(r"\d+(\.\d+)*(\.post\d+)?", v) for v in lock.values()), lock


def test_device_pins_agree_with_the_training_side_except_onnxruntime():
    """Same numpy, tokenizers, crypto and TUF as the training side; ONNX Runtime is older on purpose
    (smaller, no sympy) and make device-check compares its answer with the training side's."""
    lock = _pins(ROOT / "requirements" / "device.txt")
    train = _pins(ROOT / "requirements" / "constraints.txt")
    differ = {n: (v, train.get(n)) for n, v in lock.items() if train.get(n) != v}
    assert set(differ) == {"onnxruntime"}, differ


def test_latest_bundle_is_the_newest_manifest(tmp_path):
    latest_bundle = _load("device_check").latest_bundle
    assert latest_bundle(tmp_path) is None
    for version, created in [("7", "2026-11-20T02:00:00+00:00"), ("12", "2026-11-25T02:00:00+00:00"),
                             ("9", "2026-11-22T02:00:00+00:00")]:
        (tmp_path / version).mkdir()
        (tmp_path / version / "manifest.json").write_text(f'{{"created_at": "{created}"}}')
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    assert latest_bundle(tmp_path) == tmp_path / "12"


def test_device_extra_is_the_device_package_dependency_list():
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    device = tomllib.loads((PACKAGING / "pyproject.toml.in").read_text())["project"]["dependencies"]
    assert root["device"] == device


def test_every_pin_in_requirements_agrees_with_constraints():
    """One version per package across requirements/ (device.txt may differ only where it says so)."""
    constraints = _pins(ROOT / "requirements" / "constraints.txt")
    for path in sorted((ROOT / "requirements").glob("*.txt")):
        if path.name in ("constraints.txt", "device.txt"):
            continue
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, version = line.split("==")
                assert constraints.get(_norm(name)) == version, f"{path.name}: {line} vs constraints.txt"
