"""LLMPerf's lock (userdata/llmperf/requirements.lock): every package of the benchmark's dependency tree pinned with its
hashes, made by `make lock` for the Python and platform bench.sh installs it on, and shipped with the node scripts.

It is not installed here (another Python, another platform), so closure is read from the resolver's own record: each
entry's `# via` names the packages that required it, and every one of them must be an entry or the input file.
bench.sh installs it with --require-hashes, under which pip refuses any dependency the lock lacks, so an incomplete
lock fails the run before LLMPerf starts."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from packaging.utils import canonicalize_name

from model import wheelhouse
from tests.test_locks import direct_pins, read_lock

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "userdata/llmperf/requirements.txt"
LOCK = "userdata/llmperf/requirements.lock"
BENCH = ROOT / "userdata" / "ops" / "bench.sh"


def bench_value(name: str) -> str:
    done = subprocess.run(["bash", "-c", f'. "{BENCH}"; printf %s "${name}"'], capture_output=True, text=True,
                          check=True, env={"PATH": os.environ["PATH"], "DI_LIB_DIR": str(ROOT / "userdata" / "lib")})
    return done.stdout


def lock_command() -> list[str]:
    """The LLMPerf lock's line of `make lock`, as make would run it."""
    done = subprocess.run(["make", "-n", "-B", "lock"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MAKEFLAGS": ""})
    assert done.returncode == 0, done.stderr
    commands = done.stdout.replace("\\\n", " ").splitlines()
    (line,) = [c for c in commands if f"-o {LOCK}" in c]
    return line.split()


def test_every_package_is_pinned_exactly_with_its_hashes() -> None:
    lock = read_lock(LOCK)
    assert len(lock) > 5
    loose = [str(pin.requirement) for pin in lock.values()
             if [spec.operator for spec in pin.requirement.specifier] != ["=="] or not pin.hashes]
    assert not loose, f"{LOCK}: not pinned with hashes: {loose}"
    # One platform, one Python: no entry is left to an environment marker.
    assert not [str(pin.requirement) for pin in lock.values() if pin.requirement.marker is not None]


def test_the_lock_holds_its_requirements_files_pins() -> None:
    locked = {package: pin.version for (package, _), pin in read_lock(LOCK).items()}
    wanted = direct_pins(SOURCE)
    assert {package: locked.get(package) for package in wanted} == wanted, \
        f"{SOURCE} and {LOCK} disagree: run make lock and commit the lock"


def _required_by() -> dict[str, set[str]]:
    """Each entry and what its `# via` annotation names (packages, or `-r FILE`)."""
    entries: dict[str, set[str]] = {}
    current = None
    lines = (ROOT / LOCK).read_text().splitlines()
    for index, line in enumerate(lines):
        head = re.match(r"^([A-Za-z0-9._-]+)==", line)
        if head:
            current = canonicalize_name(head.group(1))
            entries[current] = set()
            continue
        via = re.match(r"^\s+# via(?: (.+))?$", line)
        if via and current:
            names = [via.group(1)] if via.group(1) else []
            for following in lines[index + 1:]:
                more = re.match(r"^\s+#   (.+)$", following)
                if via.group(1) or not more:
                    break
                names.append(more.group(1))
            entries[current] |= {name if name.startswith("-r ") else canonicalize_name(name.split()[0])
                                 for name in names}
    return entries


def test_the_lock_is_closed_under_the_dependencies_the_resolver_recorded() -> None:
    entries = _required_by()
    assert set(entries) == {package for package, _ in read_lock(LOCK)}
    orphans = sorted(package for package, via in entries.items() if not via)
    dangling = sorted(f"{package} via {parent}" for package, via in entries.items() for parent in via
                      if parent not in entries and parent != f"-r {SOURCE}")
    assert not orphans and not dangling, f"{LOCK}: {orphans} {dangling}: run make lock"
    # Exactly the input's packages are the roots.
    roots = {package for package, via in entries.items() if f"-r {SOURCE}" in via}
    assert roots == set(direct_pins(SOURCE))


def test_make_lock_resolves_it_for_the_python_and_platform_bench_installs_it_on() -> None:
    command = lock_command()
    assert command[command.index("-o") - 1] == SOURCE and "--generate-hashes" in command
    # bench.sh makes its virtualenv with the control host's own CPython, the one the proxy's wheels are built for
    # (model/wheelhouse.py): one interpreter from Amazon Linux 2023's repositories serves both.
    python = bench_value("LLMPERF_PYTHON")
    assert python == wheelhouse.PYTHON_VERSION
    assert bench_value("LLMPERF_PYTHON_BIN") == f"python{python}"
    assert command[command.index("--python-version") + 1] == python
    assert command[command.index("--only-binary") + 1] == ":all:"
    # Wheels that load on the host's glibc, and no newer.
    assert command[command.index("--python-platform") + 1] == "x86_64-manylinux_{}_{}".format(*wheelhouse.GLIBC)


def test_the_lock_ships_where_bench_reads_it() -> None:
    shipped = bench_value("LLMPERF_LOCK_DIR").replace("/opt/di", str(ROOT / "userdata"))
    assert (Path(shipped) / "requirements.lock").resolve() == (ROOT / LOCK).resolve()
