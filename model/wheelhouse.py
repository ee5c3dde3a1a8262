"""The proxy's wheelhouse: every wheel diproxy/requirements.lock names, for the control host's platform, downloaded
once per lock into build/wheelhouse/<lock sha256>/ and shipped as a stack asset, so the control host installs the
proxy with `pip install --no-index --find-links` and never reaches PyPI (diproxy/deploy/install.sh).

    .venv/bin/python -m model.wheelhouse    # build it unless this lock's is there; print its directory

Imports neither aws_cdk nor the config model: `make wheelhouse` runs it before anything is synthesized.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "diproxy" / "requirements.lock"
BUILD_DIR = ROOT / "build" / "wheelhouse"
BUILD_COMMAND = "make wheelhouse"

# The control host: Amazon Linux 2023 on x86_64 (m7i by default) with dnf's python3.11 (userdata/control.sh
# DI_PROXY_PYTHON). AL2023's glibc is taken as 2.34 (UNVERIFIED: no primary source read; docs/control-plane.md
# "Booting without the internet"). A wheel for an older glibc runs on a newer one (PEP 600: a manylinux_x_y wheel
# "should work on any distro using glibc x.y or later"), and the wheels today's lock resolves to need glibc 2.26 at
# most (pyzmq's manylinux_2_26), so the guess matters only once a locked wheel needs more.
PYTHON_VERSION = "3.11"
IMPLEMENTATION = "cp"
ABIS = ("cp311", "abi3", "none")
GLIBC = (2, 34)
# PEP 600's first perennial tag is manylinux_2_5 (= manylinux1); 2_12 = manylinux2010, 2_17 = manylinux2014.
OLDEST_GLIBC_MINOR = 5
LEGACY_ALIASES = ("manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64")


def platforms() -> list[str]:
    """Every manylinux tag the host accepts, newest first. pip's --platform takes each tag as given: pip 23.2
    (pip/_internal/utils/compatibility_tags.py _get_custom_platforms) widens only manylinux2014/2010 to the older
    legacy tags, never manylinux_2_34 to manylinux_2_17, so each glibc from 2.34 down is named here."""
    major, newest = GLIBC
    perennial = [f"manylinux_{major}_{minor}_x86_64" for minor in range(newest, OLDEST_GLIBC_MINOR - 1, -1)]
    return [*perennial, *LEGACY_ALIASES]


def lock_digest(lock: Path = LOCK) -> str:
    """The lock's sha256: the wheelhouse's key, so a changed lock gets its own download."""
    return hashlib.sha256(lock.read_bytes()).hexdigest()


def path(lock: Path = LOCK, root: Path = BUILD_DIR) -> Path:
    """Where the wheelhouse of this lock is (built or not)."""
    return root / lock_digest(lock)


def download_command(lock: Path, dest: Path) -> list[str]:
    """pip download of exactly the lock's files: every one checked against its hash (--require-hashes), wheels only,
    for the host's interpreter and platform rather than this machine's."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--require-hashes", "--only-binary", ":all:", "--python-version", PYTHON_VERSION,
               "--implementation", IMPLEMENTATION, "--dest", str(dest), "--requirement", str(lock)]
    for abi in ABIS:
        command += ["--abi", abi]
    for platform in platforms():
        command += ["--platform", platform]
    return command


def build(lock: Path = LOCK, root: Path = BUILD_DIR) -> Path:
    """Download the wheelhouse of `lock` unless it is there; return its directory. The download goes to a temporary
    directory beside it that is renamed into place whole, so a cut-off download never looks finished and two
    builders at once (parallel test workers) leave one complete copy."""
    target = path(lock, root)
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        run = subprocess.run(download_command(lock, partial), capture_output=True, text=True, check=False)
        if run.returncode != 0:
            errors = "\n".join(line for line in run.stderr.splitlines() if "WARNING: Location" not in line)
            raise RuntimeError(f"cannot download the proxy's wheels for {lock} (pip exited {run.returncode}):\n"
                               f"{errors.strip()}")
        try:
            os.rename(partial, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def built(lock: Path = LOCK, root: Path = BUILD_DIR) -> Path:
    """The wheelhouse of `lock`, which the synth ships; a clear error naming the build command when it is missing
    (synth downloads nothing itself)."""
    target = path(lock, root)
    if not target.is_dir():
        raise FileNotFoundError(
            f"the DiStack proxy's wheelhouse for {lock.relative_to(ROOT) if lock.is_relative_to(ROOT) else lock} "
            f"(sha256 {lock_digest(lock)[:12]}) is not built: run `{BUILD_COMMAND}` (downloads its wheels once)")
    return target


def main() -> int:
    try:
        print(build())
    except RuntimeError as error:
        print(f"wheelhouse: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
