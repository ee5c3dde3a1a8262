"""An engine is one plug-in per layer: a toy engine, written into a copy of the model, the proxy and the node scripts,
needs only its own files plus one registry line in the model and one in the proxy (the node finds its file by name).
With those, its settings section, rules, node.env and proxy.env keys, proxy options, side service and metric, and
control-host hook all work, and nothing else in the tree changed."""

from __future__ import annotations

import filecmp
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("model", "diproxy", "userdata")

MODEL_ENGINE = '''
"""Engine `toy`: an example plug-in."""

from pydantic import BaseModel, ConfigDict, Field

from model.engines.base import Engine
from model.node_contract import CONTROL, WORKER, key
from model.problems import Problem
from model.proxies import DISTACK


class ToySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    greeting: str = Field(default="hello", description="What the toy's workers say.")
    notify_port: int = Field(default=7600, ge=1024, le=65535, description="The toy's side service on the proxy.")


class Toy(Engine):
    name = "toy"
    description = "an example plug-in"
    status = "example"
    instance_families = ("trn2",)
    proxies = (DISTACK.name,)
    settings_key = "toy"
    settings_model = ToySettings
    kv_cache_metric = "vllm:kv_cache_usage_perc"
    worker_keys = (key("DI_TOY_GREETING", "text", "userdata/engines/toy.sh", "the greeting", nodes=(WORKER,)),)
    proxy_keys = (key("DIPROXY_TOY_NOTIFY_PORT", "int", "diproxy/protocols/toy.py", "the side service", nodes=(CONTROL,)),)

    @property
    def default_image(self):
        return "public.ecr.aws/example/toy:1"

    def check(self, config):
        if config.toy.greeting == "":
            yield Problem("toy.greeting", "the toy must say something", "set toy.greeting")

    def worker_values(self, config, fleet_name):
        return {"DI_TOY_GREETING": config.toy.greeting}

    def proxy_values(self, config):
        return {"DIPROXY_TOY_NOTIFY_PORT": str(config.toy.notify_port)}


ENGINE = Toy()
'''

PROXY_PROTOCOL = '''
"""Engine toy's protocol: one option, one side service, one metric."""

from dataclasses import dataclass

from diproxy.metrics import Counter
from diproxy.protocols.base import EngineProtocol, Option
from diproxy.protocols.nixl import NixlProtocol


@dataclass(frozen=True)
class ToyOptions:
    notify_port: int = 7600


class Service:
    name = "toy-notify"

    def __init__(self, log):
        self.log = log

    def start(self):
        self.log.append("start")

    async def run(self):
        self.log.append("run")

    def close(self):
        self.log.append("close")


class ToyProtocol(NixlProtocol):
    name = "toy"
    summary = "nixl's flow, as an example"
    options = (Option("notify_port", int, 7600, "the side service's port", lambda v: v > 0, "must be above 0"),)
    options_type = ToyOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.greetings = Counter("diproxy_toy_greetings_total", "Toy: greetings.")
        self.service_log = []

    @property
    def metrics(self):
        return (self.greetings,)

    def side_services(self, host, count_error):
        return (Service(self.service_log),)


PROTOCOL = ToyProtocol
'''

NODE_MODULE = '''#!/usr/bin/env bash
# Engine `toy`: an example plug-in (the control-host hook only).
engine_control_start() { printf 'toy side service for %s\\n' "$DI_ENGINE"; }
'''

# Runs in the copy: the toy engine through every layer, printed as JSON.
PROBE = '''
import asyncio, json, pathlib, subprocess, sys, yaml
from model import engines, node_values, schema
from model.loader import load_config_file
from model.node_contract import env_file
from diproxy.app import ProxyState
from diproxy.config import parse_settings

config = load_config_file(pathlib.Path(sys.argv[1]), check_name=False, warn=lambda _: None)
refs = node_values.DeploymentRefs(stack_name="di-toy", control_address="10.0.0.1", bucket_name="b",
                                  node_log_group="n", container_log_group="c")
worker = node_values.worker_values(config, "colocated", refs)
control = node_values.control_values(config, refs, network_interface_id="eni", etcd_volume_id="vol")
proxy_env = node_values.proxy_values(config, control)
# The etcd TLS files exist only on a control host (systemd credentials); this start needs no etcd.
settings = parse_settings([], env={k: v for k, v in proxy_env.items() if k not in node_values.proxy_etcd_values("u")})
state = ProxyState(settings, None)

async def start_stop():
    await state.start()
    await asyncio.sleep(0)
    rendered = state.metrics.render()
    await state.stop()
    return rendered

rendered = asyncio.run(start_stop())
bad = dict(yaml.safe_load(pathlib.Path(sys.argv[1]).read_text()), toy={"greeting": ""})
pathlib.Path(sys.argv[2]).write_text(yaml.safe_dump(bad))
try:
    load_config_file(pathlib.Path(sys.argv[2]), check_name=False, warn=lambda _: None)
    refused = ""
except Exception as err:
    refused = str(err)
hook = subprocess.run(["bash", "-c", ". userdata/lib/modules.sh && load_engine_module && run_engine_hook engine_control_start"],
                      env={"PATH": "/usr/bin:/bin", "DI_ENGINE": "toy"}, capture_output=True, text=True)
print(json.dumps({
    "engines": list(engines.NAMES),
    "section": "toy" in json.loads(schema.schema_text())["properties"],
    "greeting": worker["DI_TOY_GREETING"],
    "proxy_env": proxy_env,
    "options": settings.engine_options.notify_port,
    "service": state.protocol.service_log,
    "metric": "diproxy_toy_greetings_total" in rendered,
    "refused": refused,
    "hook": hook.stdout + hook.stderr,
}))
'''


def add_registry_line(path: Path, after: str, line: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(after) == 1
    path.write_text(text.replace(after, after + line), encoding="utf-8")


def test_a_toy_engine_needs_its_own_files_and_one_registry_line_per_layer(tmp_path):
    tree = tmp_path / "tree"
    for layer in LAYERS:
        shutil.copytree(ROOT / layer, tree / layer, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (tree / "model" / "engines" / "toy.py").write_text(textwrap.dedent(MODEL_ENGINE))
    (tree / "diproxy" / "protocols" / "toy.py").write_text(textwrap.dedent(PROXY_PROTOCOL))
    (tree / "userdata" / "engines" / "toy.sh").write_text(NODE_MODULE)
    add_registry_line(tree / "model" / "engines" / "__init__.py", '    "lmcache",\n', '    "toy",\n')
    add_registry_line(tree / "diproxy" / "protocols" / "__init__.py", '    "lmcache",\n', '    "toy",\n')

    config = tmp_path / "toy.yaml"
    config.write_text(textwrap.dedent("""\
        name: toy
        region: us-east-2
        availability_zone: us-east-2a
        engine: toy
        image: public.ecr.aws/example/toy:1
        image_unlisted: true
        worker_ami: {ssm_parameter: /aws/service/neuron/dlami/base/ubuntu-24.04/latest/image_id}
        model: {id: meta-llama/Llama-3.1-8B-Instruct, hf_token_secret: distack/hf-token}
        toy: {greeting: hi there, notify_port: 7700}
        fleets:
          colocated: {role: colocated, instance_type: trn2.48xlarge, tensor_parallel: 8}
        """))
    proc = subprocess.run([sys.executable, "-c", PROBE, str(config), str(tmp_path / "bad.yaml")], cwd=tree,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["engines"][-1] == "toy" and seen["section"]
    assert seen["greeting"] == "hi there"
    assert seen["proxy_env"]["DIPROXY_ENGINE"] == "toy" and seen["proxy_env"]["DIPROXY_TOY_NOTIFY_PORT"] == "7700"
    assert seen["options"] == 7700
    assert seen["service"] == ["start", "run", "close"]
    assert seen["metric"]
    assert "toy.greeting" in seen["refused"] and "the toy must say something" in seen["refused"]
    assert seen["hook"] == "toy side service for toy\n"

    # Nothing else changed: every other file of the three layers is as it was.
    changed = []
    for layer in LAYERS:
        comparison = [filecmp.dircmp(ROOT / layer, tree / layer, ignore=["__pycache__"])]
        while comparison:
            d = comparison.pop()
            changed += [str(Path(d.right).relative_to(tree) / n) for n in d.diff_files + d.right_only]
            comparison += d.subdirs.values()
    assert sorted(changed) == ["diproxy/protocols/__init__.py", "diproxy/protocols/toy.py", "model/engines/__init__.py",
                               "model/engines/toy.py", "userdata/engines/toy.sh"]
