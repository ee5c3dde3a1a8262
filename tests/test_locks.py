"""The locks: every Python package of every layer pinned with its hashes, the layers agreeing with each other, and
the venv the tests run in holding exactly the test layer's lock (the Makefile installs it with --require-hashes)."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
# Each layer: the human-edited requirements file and the lock `make lock` makes from it.
LAYERS = {
    "synth": ("requirements.txt", "requirements.lock"),
    "ops": ("requirements-ops.txt", "requirements-ops.lock"),
    "test": ("requirements-dev.txt", "requirements-dev.lock"),
    "proxy": ("diproxy/requirements.txt", "diproxy/requirements.lock"),
}
FULL = LAYERS["test"][1]
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


@dataclass(frozen=True)
class Pin:
    requirement: Requirement
    hashes: frozenset[str]

    @property
    def version(self) -> str:
        (spec,) = self.requirement.specifier
        return spec.version

    def applies(self) -> bool:
        marker = self.requirement.marker
        return marker is None or marker.evaluate()


def _entries(path: Path) -> list[str]:
    """The lock's requirement lines, each with its continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def read_lock(name: str) -> dict[tuple[str, str], Pin]:
    """Pins keyed by (package, marker): a universal lock may hold one package twice under exclusive markers."""
    pins: dict[tuple[str, str], Pin] = {}
    for entry in _entries(ROOT / name):
        requirement = Requirement(_HASH.sub("", entry).strip())
        pins[(canonicalize_name(requirement.name), str(requirement.marker or ""))] = Pin(
            requirement, frozenset(_HASH.findall(entry)))
    return pins


def direct_pins(name: str) -> dict[str, str]:
    """The exact pins of a human-edited requirements file, following its -r includes."""
    pins: dict[str, str] = {}
    path = ROOT / name
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            pins.update(direct_pins(str((path.parent / line[3:].strip()).relative_to(ROOT))))
            continue
        requirement = Requirement(line)
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{name}: {line!r} is not an exact pin"
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def _applying(lock: dict[tuple[str, str], Pin]) -> dict[str, Pin]:
    return {package: pin for (package, _), pin in lock.items() if pin.applies()}


@pytest.mark.parametrize("layer", LAYERS)
def test_every_package_of_every_layer_is_pinned_exactly_with_its_hashes(layer: str) -> None:
    lock = read_lock(LAYERS[layer][1])
    assert len(lock) > 5
    loose = [str(pin.requirement) for pin in lock.values()
             if [spec.operator for spec in pin.requirement.specifier] != ["=="] or not pin.hashes]
    assert not loose, f"{LAYERS[layer][1]}: not pinned with hashes: {loose}"


@pytest.mark.parametrize("layer", LAYERS)
def test_each_lock_holds_its_requirements_files_pins(layer: str) -> None:
    source, lock_name = LAYERS[layer]
    locked = {package: pin.version for (package, _), pin in read_lock(lock_name).items()}
    wanted = direct_pins(source)
    assert {package: locked.get(package) for package in wanted} == wanted, \
        f"{source} and {lock_name} disagree: run make lock and commit the locks"


@pytest.mark.parametrize("layer", ["synth", "ops", "proxy"])
def test_each_layer_is_the_test_layers_versions_and_files(layer: str) -> None:
    """Resolved under the test set's constraints, a layer has the same version and the same files as the venv the
    tests run in: what the control host (proxy) or a user's `make synth` installs is what was tested."""
    full = read_lock(FULL)
    full_by_package = {package: pin for (package, _), pin in full.items()}
    different = [f"{package} {pin.version} vs {full_by_package[package].version if package in full_by_package else 'absent'}"
                 for (package, marker), pin in read_lock(LAYERS[layer][1]).items()
                 if package not in full_by_package
                 or (full.get((package, marker)) or full_by_package[package]).version != pin.version
                 or (full.get((package, marker)) or full_by_package[package]).hashes != pin.hashes]
    assert not different, f"{LAYERS[layer][1]} differs from {FULL}: {different}"


def test_the_venv_holds_exactly_the_test_lock() -> None:
    installed = {canonicalize_name(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}
    locked = {package: pin.version for package, pin in _applying(read_lock(FULL)).items()}
    assert {package: installed.get(package) for package in locked} == locked
    # Nothing beyond the lock, but the project itself and what the venv brings (pip; setuptools is locked).
    extra = set(installed) - set(locked) - {"distack", "pip"}
    assert not extra, f"installed but not locked: {sorted(extra)}"


@pytest.mark.parametrize("layer", LAYERS)
def test_each_lock_is_closed_under_its_packages_dependencies(layer: str) -> None:
    """Every dependency an installed package declares (for this interpreter, no extras) is in the same lock, so the
    hash-checked install can never reach for an unpinned package."""
    lock = _applying(read_lock(LAYERS[layer][1]))
    environment = {**default_environment(), "extra": ""}
    missing = []
    for package in lock:
        for declared in metadata.requires(package) or ():
            requirement = Requirement(declared)
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            if canonicalize_name(requirement.name) not in lock:
                missing.append(f"{package} needs {requirement}")
    assert not missing, f"{LAYERS[layer][1]}: {missing}"


def test_every_layer_installs_from_its_lock_with_hashes_required(tmp_path: Path) -> None:
    """What `make setup` would run into a new venv: each layer's lock, hash-checked; the project itself only from
    this tree, with no index."""
    done = subprocess.run(["make", "-n", "-B", "setup", f"VENV={tmp_path.name}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "MAKEFLAGS": ""})
    assert done.returncode == 0, done.stderr
    installs = [line for line in done.stdout.splitlines() if "pip install" in line]
    locks = [re.search(r"-r (\S+)", line).group(1) for line in installs if " -r " in line]
    assert locks == ["requirements.lock", "requirements-ops.lock", "requirements-dev.lock"]
    assert all("--require-hashes" in line for line in installs if " -r " in line)
    (editable,) = [line for line in installs if " -e ." in line]
    assert "--no-index" in editable and "--no-deps" in editable and "--no-build-isolation" in editable
