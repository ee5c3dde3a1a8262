"""The proxy installs on a control host without an index: diproxy/deploy/install.sh, for real, into a fresh venv, from
the wheelhouse the synth ships (model/wheelhouse.py), in a network namespace with no interface but loopback.

This machine runs CPython 3.11 on x86_64 (glibc 2.36), the control host's interpreter and architecture, so the
wheels downloaded for the host install here as they would there. Cost, measured on 2 cores: the install about 3 s
(6 s and more while other tests load both cores), once per test session (shared by xdist workers); the
tampered-wheel case copies a fresh venv and fails within a second, at pip's hash check.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model import wheelhouse
from tests.conftest import ROOT, shared_dir

INSTALLER = ROOT / "diproxy" / "deploy" / "install.sh"
pytestmark = pytest.mark.skipif(
    sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64",
    reason="the wheelhouse holds CPython 3.11 x86_64 wheels (the control host's); this interpreter cannot take them")


def offline() -> list[str]:
    """A prefix that runs a command in a new network namespace (loopback only, and down), when the kernel lets this
    user make one: the install then cannot reach any index, whatever pip's configuration says."""
    for prefix in (["unshare", "--net"], ["unshare", "--map-root-user", "--net"]):
        if shutil.which("unshare") and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return []


def install(venv: Path, wheels: Path, work: Path) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": str(work), "PROXY_VENV": str(venv), "PROXY_WHEELHOUSE": str(wheels),
           "PROXY_START": "no", "PROXY_ENV_FILE": str(work / "proxy.env"), "PROXY_UNIT_DIR": str(work / "units"),
           # No cache to fall back on; no byte-compiling of the installed files (botocore alone has over a thousand),
           # which the host does but which proves nothing here and would cost seconds.
           "PIP_NO_CACHE_DIR": "1", "PIP_NO_COMPILE": "1"}
    return subprocess.run([*offline(), "bash", str(INSTALLER), str(ROOT)], env=env, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture(scope="session")
def install_dir(tmp_path_factory) -> Path:
    directory = shared_dir(tmp_path_factory) / "proxy-install"
    directory.mkdir(exist_ok=True)
    return directory


@pytest.fixture(scope="session")
def fresh_venv(install_dir) -> Path:
    """A venv of the base interpreter (not of the test venv, whose packages must not leak in) with pip and nothing
    else, made once per session; tests copy it. pip is copied in from the test venv rather than installed by
    ensurepip, which would cost about 5 s of the suite for the same pip package."""
    import pip
    from filelock import FileLock

    venv = install_dir / "fresh-venv"
    with FileLock(install_dir / "fresh-venv.lock"):
        if not (venv / "bin" / "python").exists():
            base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
            subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
            site = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
            shutil.copytree(Path(pip.__file__).parent, site / "pip", ignore=shutil.ignore_patterns("__pycache__"))
    return venv


@pytest.fixture(scope="session")
def installed(tmp_path_factory, install_dir, fresh_venv):
    """The proxy installed into a copy of the fresh venv from the built wheelhouse: (venv, install.sh's log)."""
    from filelock import FileLock

    wheels = wheelhouse.build()
    venv, ok, log = install_dir / "installed", install_dir / "installed.ok", install_dir / "installed.stderr"
    with FileLock(install_dir / "installed.lock"):
        if not ok.exists():
            start = time.monotonic()
            shutil.rmtree(venv, ignore_errors=True)
            shutil.copytree(fresh_venv, venv, symlinks=True)
            result = install(venv, wheels, install_dir)
            log.write_text(result.stderr)
            if result.returncode == 0:
                ok.touch()
                with open(shared_dir(tmp_path_factory) / "figures.txt", "a") as figures:
                    figures.write(f"proxy install from the wheelhouse, no network: {time.monotonic() - start:.1f} s "
                                  "(+ the fresh venv)\n")
    assert ok.exists(), f"install.sh failed:\n{log.read_text()}"
    return venv, log.read_text()


def locked_pins() -> dict[str, str]:
    """name -> version of every package the lock installs on CPython 3.11 (markers for PyPy or 3.13+ left out)."""
    pins = {}
    for line in wheelhouse.LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)(.*)$", line)
        if match and "implementation_name == 'pypy'" not in match.group(3):
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_install_sh_installs_the_proxy_from_the_wheelhouse_alone_and_it_imports(installed):
    venv, stderr = installed
    assert "with the wheels in" in stderr and "(no index)" in stderr
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import diproxy.app, diproxy.shipper.service, aiohttp, boto3, uvloop, zmq, msgspec, prometheus_client; "
         "import importlib.metadata as m; print('\\n'.join(f'{d.metadata[\"Name\"]}=={d.version}' "
         "for d in m.distributions()))"],
        capture_output=True, text=True, check=False, cwd="/")
    assert probe.returncode == 0, probe.stderr
    installed_versions = {line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
                          for line in probe.stdout.splitlines()}
    # Exactly the lock's versions, each one: nothing resolved anew, nothing missing.
    for name, version in locked_pins().items():
        assert installed_versions.get(name) == version, name
    # install.sh also put the units in place (the control host enables them itself).
    units = venv.parent / "units"
    assert sorted(p.name for p in units.iterdir()) == ["distack-proxy-shipper.service", "distack-proxy.service"]


def test_a_wheel_changed_in_the_wheelhouse_fails_the_install_at_the_hash_check(tmp_path, fresh_venv):
    wheels = tmp_path / "wheels"
    shutil.copytree(wheelhouse.build(), wheels)
    (six,) = wheels.glob("six-*.whl")
    with open(six, "ab") as wheel:
        wheel.write(b"\0")  # still a readable zip; no longer the file the lock hashed
    venv = tmp_path / "venv"
    shutil.copytree(fresh_venv, venv, symlinks=True)
    result = install(venv, wheels, tmp_path)
    assert result.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE" in result.stderr
    assert "six" in result.stderr
    assert not list(venv.glob("lib/python3.11/site-packages/diproxy"))


def test_a_missing_wheelhouse_directory_fails_before_pip(tmp_path):
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").symlink_to("/bin/false")  # an existing venv: install.sh makes none
    result = install(tmp_path / "venv", tmp_path / "nowhere", tmp_path)
    assert result.returncode != 0
    assert f"no wheelhouse directory {tmp_path / 'nowhere'}" in result.stderr
