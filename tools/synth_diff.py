"""Synthesize every environment in config/ at a base revision and in the working tree, and say which templates differ.

    .venv/bin/python tools/synth_diff.py [BASE] [--ignore-assets] [--env NAME ...]

BASE (default HEAD) is checked out into a temporary git worktree; both trees are synthesized by this venv's Python
(cdk-nag included, as `make synth` does), one process per tree. A refactoring that promises "no behaviour change"
shows every environment as identical. --ignore-assets compares templates with asset hashes (the content hash of
the user-data and proxy bundles, 64 hex digits) masked, for a change that moves files inside a bundle but not the
resources. Exits 1 when any template differs, 2 on a synth failure.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSET_HASH = re.compile(r"[0-9a-f]{64}")

# Runs inside one tree (cwd and sys.path = that tree): synthesizes each named environment, prints {env: template}.
# The loader lives in model/ since the model left stacks/; a base revision from before has it in stacks/.
_SYNTH = r"""
import json, sys
import aws_cdk as cdk
try:
    from model.loader import load_environment
except ImportError:
    from stacks.loader import load_environment
from stacks.app_builder import build_app
context = json.load(open("cdk.json"))["context"]
out = {}
for name in sys.argv[1:]:
    config = load_environment(name)
    app = cdk.App(outdir=f"{sys.argv[0]}.{name}", context={**context, "env": name},
                  builtin_cloud_formation_validation=False)
    stack = build_app(app, config)
    out[name] = app.synth().get_stack_artifact(stack.artifact_id).template
json.dump(out, sys.stdout)
"""


def synthesize(tree: Path, environments: list[str], scratch: Path) -> dict[str, dict]:
    env = {**os.environ, "PYTHONPATH": str(tree), "CDK_VALIDATION": "false",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION": "1"}
    done = subprocess.run([sys.executable, "-c", _SYNTH.replace("sys.argv[0]", repr(str(scratch))), *environments],
                          cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"synth failed in {tree}:\n{done.stderr[-4000:]}", file=sys.stderr)
        sys.exit(2)
    return json.loads(done.stdout)


def canonical(template: dict, ignore_assets: bool) -> list[str]:
    text = json.dumps(template, indent=1, sort_keys=True)
    return (ASSET_HASH.sub("<asset-hash>", text) if ignore_assets else text).splitlines()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", nargs="?", default="HEAD", help="git revision to compare against (default HEAD)")
    parser.add_argument("--ignore-assets", action="store_true", help="mask asset content hashes")
    parser.add_argument("--env", action="append", help="only this environment (repeatable)")
    args = parser.parse_args()
    environments = args.env or sorted(p.stem for p in (ROOT / "config").glob("*.yaml"))
    with tempfile.TemporaryDirectory(prefix="synth-diff-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(base), args.base], cwd=ROOT, check=True)
        try:
            before = synthesize(base, environments, Path(tmp) / "before")
            after = synthesize(ROOT, environments, Path(tmp) / "after")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    differ = 0
    for name in environments:
        old, new = canonical(before[name], args.ignore_assets), canonical(after[name], args.ignore_assets)
        if old == new:
            print(f"{name}: identical")
            continue
        differ += 1
        diff = list(difflib.unified_diff(old, new, f"{args.base}:{name}", f"worktree:{name}", n=1, lineterm=""))
        print(f"{name}: DIFFERS ({sum(line[:1] in '+-' for line in diff) - 2} lines)")
        print("\n".join(diff[:40]))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
