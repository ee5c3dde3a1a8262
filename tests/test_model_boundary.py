"""The model (model/) needs no CDK: `dictl` and the proxy's tooling import it, and importing aws_cdk costs seconds and
Node.js. Nothing under model/ may import aws_cdk, constructs, cdk_nag or the CDK app (stacks/)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL_FILES = sorted((ROOT / "model").rglob("*.py"))
FORBIDDEN = ("aws_cdk", "constructs", "cdk_nag", "stacks")


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
    return roots


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_model_module_imports_the_cdk_or_the_cdk_app(path: Path) -> None:
    assert not imported_roots(path) & set(FORBIDDEN), f"{path.relative_to(ROOT)} imports the CDK side"


def test_importing_the_whole_model_and_dictl_loads_no_cdk() -> None:
    """The same boundary at run time, through every import path, lazy ones in function bodies excepted."""
    modules = [".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in MODEL_FILES]
    code = ("import importlib, sys\n"
            f"for name in {modules!r} + ['ops.cli', 'ops.commands', 'ops.preflight', 'ops.top']:\n"
            "    importlib.import_module(name)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'aws_cdk', 'constructs', 'cdk_nag', 'jsii', 'stacks'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_stacks_package_holds_only_cdk_side_modules() -> None:
    """stacks/ keeps the constructs and the app wiring: a module there that never touches the CDK belongs in model/."""
    pure = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "stacks").rglob("*.py"))
            if p.name != "__init__.py" and not imported_roots(p) & {"aws_cdk", "constructs", "cdk_nag"}]
    assert pure == [], f"move to model/: {pure}"
