"""Import layering: ops.commands and ops.output share ops.results and ops.progress instead of importing each
other, and model.naming (infrastructure) does not depend on the proxy's runtime package."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(relative: str) -> set[str]:
    tree = ast.parse((ROOT / relative).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_commands_and_output_do_not_import_each_other() -> None:
    assert "ops.output" not in _imports("ops/commands.py")
    assert "ops.commands" not in _imports("ops/output.py")


def test_naming_does_not_import_the_proxy_and_keeps_its_namespace() -> None:
    from diproxy.shipper.settings import DEFAULT_NAMESPACE
    from model import naming

    assert not {m for m in _imports("model/naming.py") if m.split(".")[0] == "diproxy"}
    # The stack grants and hands this namespace to the shipper; the shipper's default must stay the same.
    assert naming.PROXY_METRICS_NAMESPACE == DEFAULT_NAMESPACE == "DiStack/Proxy"


def test_the_load_signals_the_fleets_scale_on_are_the_ones_the_shipper_publishes() -> None:
    from diproxy.shipper.metric_data import published
    from model import naming
    from model.scaling_config import ROLE_SIGNALS

    sent = {(m.name, m.dimensions, m.fixed) for m in published()}
    dimensions = (naming.METRIC_DIMENSION_DEPLOYMENT, naming.METRIC_DIMENSION_ROLE)
    assert {naming.PROXY_METRIC_PREFILL_LOAD, naming.PROXY_METRIC_DECODE_LOAD} <= set(ROLE_SIGNALS.values())
    for role, name in ROLE_SIGNALS.items():
        assert (name, dimensions, ((naming.METRIC_DIMENSION_ROLE, role),)) in sent, (role, name)
