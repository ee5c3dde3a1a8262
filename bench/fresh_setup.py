"""What a new user waits for: a fresh clone of this repository's HEAD (no .venv, no node_modules) in a temporary
directory, then, as the README says, `make synth` (set-up included), `make setup` (the test set on top) and
`make test`. Prints each wall time, the .venv size after each set-up, and the ten slowest tests.

`make synth` is timed in its three steps, the same commands it runs: the synth set into a new .venv, the pinned
CDK CLI (npm ci), then the synthesis itself; the headline figure is their sum. Targets (issue 10, 2 cores):
`make synth` <= 30 s on a fresh clone, `make test` <= 90 s after set-up.

Run: `make bench` (or `.venv/bin/python bench/fresh_setup.py [--keep] [--no-test] [--env NAME]`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYNTH_TARGET_S = 30.0
TEST_TARGET_S = 90.0
MAKE = ["make", "--no-print-directory"]


def run(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds and combined output; a failing step stops the benchmark with its output."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.stdout.write(done.stdout[-6000:])
        raise SystemExit(f"{' '.join(command)} failed with exit {done.returncode} after {seconds:.1f} s")
    return seconds, done.stdout


def size_mb(path: Path) -> float:
    """Disk use like `du -s` (allocated blocks, each hard link once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total / 1e6


def slowest(pytest_output: str) -> list[str]:
    """The lines of pytest's `--durations` block."""
    match = re.search(r"=+ slowest \d+ durations =+\n(.*?)(?:\n\n|\n=)", pytest_output, re.S)
    return match.group(1).splitlines() if match else []


def summary_line(pytest_output: str) -> str:
    lines = [line for line in pytest_output.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    return lines[-1].strip("= ") if lines else "(no pytest summary)"


def verdict(seconds: float, target: float) -> str:
    return f"within the {target:.0f} s target" if seconds <= target else \
        f"misses the {target:.0f} s target by {seconds - target:.1f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="dev", help="environment to synthesize (default dev)")
    parser.add_argument("--no-test", action="store_true", help="stop after `make synth` and `make setup`")
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone (its path is printed)")
    args = parser.parse_args(argv)

    # The user's shell, not this venv: the clone must build its own .venv from the system Python.
    venv_bin = str(ROOT / ".venv" / "bin")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    env["PATH"] = path
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    workdir = Path(tempfile.mkdtemp(prefix="distack-fresh-"))
    clone = workdir / "distack"
    try:
        subprocess.run(["git", "clone", "--quiet", "--no-local", str(ROOT), str(clone)], check=True)
        print(f"fresh clone of HEAD {head} in {clone}; {os.cpu_count()} CPUs; "
              f"pip and npm caches as this machine has them")

        steps = [("venv + synth set (pip)", MAKE + [".venv/.synth-deps"]),
                 ("CDK CLI (npm ci)", MAKE + ["node_modules/.deps"]),
                 (f"cdk synth ENV={args.env}", MAKE + ["synth", f"ENV={args.env}"])]
        total = 0.0
        for label, command in steps:
            seconds, _ = run(command, clone, env)
            total += seconds
            print(f"  {label:<28} {seconds:6.1f} s")
        print(f"make synth (fresh clone)       {total:6.1f} s  {verdict(total, SYNTH_TARGET_S)}")
        print(f"  .venv after make synth       {size_mb(clone / '.venv'):6.0f} MB"
              f"   node_modules {size_mb(clone / 'node_modules'):.0f} MB")

        seconds, _ = run(MAKE + ["setup"], clone, env)
        print(f"make setup (test set on top)   {seconds:6.1f} s")
        print(f"  .venv after make setup       {size_mb(clone / '.venv'):6.0f} MB")

        if not args.no_test:
            seconds, output = run(MAKE + ["test", "PYTEST_ARGS=--durations=10 -p no:cacheprovider"], clone, env)
            print(f"make test (after set-up)       {seconds:6.1f} s  {verdict(seconds, TEST_TARGET_S)}")
            print(f"  {summary_line(output)}")
            print("  ten slowest:")
            for line in slowest(output):
                print(f"    {line}")
    finally:
        if args.keep:
            print(f"kept {clone}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
