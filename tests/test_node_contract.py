"""The node contract (model/node_contract.py): every key of node.env and proxy.env is declared once, produced for some
environment, read by the consumers it names; the shipped environments' files match their golden copies."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytest

from diproxy.config import parse_settings as proxy_settings
from diproxy.shipper.settings import parse_settings as shipper_settings
from model import engines, node_contract, node_values
from model.loader import load_config_file
from model.node_contract import CONTROL, NODE_ENV, PROXY_ENV, WORKER

ROOT = Path(__file__).resolve().parent.parent
# tools/ is scripts, not a package: the renderer is loaded from its file.
_SPEC = importlib.util.spec_from_file_location("node_files", ROOT / "tools" / "node_files.py")
node_files = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(node_files)
DATA = Path(__file__).parent / "data"
USERDATA = ROOT / "userdata"
SHARED = (*node_contract.COMMON, *node_contract.WORKER_ONLY, *node_contract.CONTROL_ONLY, *node_contract.PROXY_ONLY)
ENGINE_KEYS = tuple(k for engine in engines.ENGINES.values() for k in (*engine.worker_keys, *engine.proxy_keys))
DECLARED = {k.name: k for k in (*SHARED, *ENGINE_KEYS)}
# A shell read of NAME: $NAME or ${NAME (with or without a default).
READ = r"\$\{?%s\b"


def rendered_files() -> Iterator[tuple[str, str, Mapping[str, str]]]:
    """(environment, file name, values) of every shipped environment, plus the legacy engine with DiStack's proxy
    (tests/data/variant.yaml), which no shipped one runs."""
    for env in node_files.environments():
        for name, text in node_files.render(env).items():
            yield env, name, dict(shlex.split(line)[0].split("=", 1) for line in text.splitlines())
    config = load_config_file(DATA / "variant.yaml", check_name=False, warn=lambda _: None)
    control = node_values.control_values(config, node_files.refs("di-variant"), network_interface_id="eni",
                                         etcd_volume_id="vol")
    yield "variant", "control.proxy.env", node_values.proxy_values(config, control) or {}


def test_the_golden_files_are_what_the_shipped_environments_render():
    stale = node_files.differences()
    assert not stale, f"run {node_files.REGENERATE} and review the diff: {', '.join(stale)}"


def test_every_declared_key_is_produced_for_some_environment():
    produced = {name for _, _, values in rendered_files() for name in values}
    assert sorted(set(DECLARED) - produced) == []


@pytest.mark.parametrize("key", sorted((k for k in DECLARED.values() if k.file == NODE_ENV), key=lambda k: k.name),
                         ids=lambda k: k.name)
def test_every_node_env_key_is_read_by_each_consumer_it_names(key):
    assert key.consumers
    for consumer in key.consumers:
        text = (ROOT / consumer).read_text(encoding="utf-8")
        assert re.search(READ % key.name, text), f"{key.name} is declared as read by {consumer}, which does not read it"


class Reads(dict):
    """An environment that records which names a settings parser looked up."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.looked_up: set[str] = set()

    def get(self, name: str, default: Any = None) -> Any:
        self.looked_up.add(name)
        return super().get(name, default)


def test_every_proxy_env_key_is_read_by_the_proxy_or_its_shipper():
    looked_up: dict[str, set[str]] = {"proxy": set(), "shipper": set()}
    for _, name, values in rendered_files():
        if name != "control.proxy.env":
            continue
        for reader, parse in (("proxy", proxy_settings), ("shipper", shipper_settings)):
            env = Reads(values)
            parse([], env=env)
            looked_up[reader] |= env.looked_up
    for key in (k for k in DECLARED.values() if k.file == PROXY_ENV):
        readers = {"shipper" if c == node_contract.SHIPPER else "proxy" for c in key.consumers}
        for reader in readers:
            assert key.name in looked_up[reader], f"{key.name}: the {reader}'s settings never read it"


def test_every_di_variable_the_node_scripts_read_is_declared_or_a_local_knob():
    local = {k.name for k in node_contract.LOCAL_KNOBS}
    node_env = {name for name, k in DECLARED.items() if k.file == NODE_ENV}
    assert not local & node_env, "a node-local knob must never be written by the synth"
    read = {m for path in USERDATA.rglob("*") if path.is_file()
            for m in re.findall(r"\$\{?(DI_[A-Z0-9_]+)", path.read_text(encoding="utf-8", errors="replace"))}
    assert sorted(read - node_env - local) == []
    for knob in node_contract.LOCAL_KNOBS:
        assert re.search(READ % knob.name, (ROOT / knob.consumer).read_text(encoding="utf-8")) or \
            knob.name in (ROOT / knob.consumer).read_text(encoding="utf-8"), knob


def test_a_value_outside_the_contract_stops_the_render_naming_every_problem(monkeypatch):
    config = load_config_file(ROOT / "config" / "dev.yaml", warn=lambda _: None)
    engine = config.engine_module
    values = engine.worker_values(config, "colocated")
    monkeypatch.setattr(type(engine), "worker_values", lambda self, c, f: {
        **values, "DI_SURPRISE": "1", "DI_COMPILE_TIMEOUT_SECONDS": "soon"})
    with pytest.raises(ValueError) as raised:
        node_values.worker_values(config, "colocated", node_files.refs("di-dev"))
    message = str(raised.value)
    assert "DI_SURPRISE is not declared in model/node_contract.py" in message
    assert "DI_COMPILE_TIMEOUT_SECONDS='soon' is not of type int" in message


def test_each_file_carries_exactly_its_nodes_keys():
    for env, name, values in rendered_files():
        node = CONTROL if name.startswith("control.") else WORKER
        file = PROXY_ENV if name.endswith(".proxy.env") else NODE_ENV
        config_engine = values.get("DI_ENGINE") or values.get("DIPROXY_ENGINE")
        engine = engines.get(config_engine)
        keys = engine.proxy_keys if file == PROXY_ENV else engine.worker_keys
        assert node_contract.problems(node, file, values, keys) == [], (env, name)
