"""Time `make synth` per environment against an empty CDK app on this machine (set-up already done).

Prints wall times and the ratio to the empty app (goal: at most 1.5x). The fresh-clone figures (set-up
included, .venv sizes, `make test`) are bench/fresh_setup.py's (`make bench`).
Run: `make bench-synth` (or `.venv/bin/python bench/synth_time.py [--runs N] [--env NAME ...]`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENVS = sorted(p.stem for p in (ROOT / "config").glob("*.yaml"))
# Same App settings as app.py (no built-in CloudFormation Validate engine), so the ratio measures DiStack itself.
EMPTY_APP = """
import aws_cdk as cdk
app = cdk.App(builtin_cloud_formation_validation=False)
cdk.Stack(app, "Empty")
app.synth()
"""


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_of(runs: int, command: list[str], cwd: Path, env: dict[str, str]) -> float:
    return statistics.median(timed(command, cwd, env) for _ in range(runs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median reported)")
    parser.add_argument("--env", nargs="+", default=ENVS, help="environments (default: every config/*.yaml)")
    args = parser.parse_args()
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    cdk = str(ROOT / "node_modules" / ".bin" / "cdk")

    with tempfile.TemporaryDirectory() as empty:
        Path(empty, "app.py").write_text(EMPTY_APP)
        # DiStack's feature flags too: unconfigured ones make the CLI read and report the flags after every synth.
        context = json.loads((ROOT / "cdk.json").read_text())["context"]
        Path(empty, "cdk.json").write_text(json.dumps({"app": f"{sys.executable} app.py", "versionReporting": False,
                                                       "context": context}))
        baseline = median_of(args.runs, [cdk, "synth", "--quiet", "--no-notices"], Path(empty), env)
    print(f"{'empty CDK app':<22} {baseline:6.2f} s")

    for name in args.env:
        seconds = median_of(args.runs, ["make", "--no-print-directory", "synth", f"ENV={name}"], ROOT, env)
        ratio = seconds / baseline
        print(f"{'make synth ENV=' + name:<22} {seconds:6.2f} s  {ratio:4.2f}x empty  "
              f"({'within' if ratio <= 1.5 else 'over'} the 1.5x goal)")

    print(f"machine: {os.cpu_count()} CPUs; medians of {args.runs} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
