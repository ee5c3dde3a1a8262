"""Render the node files of every environment in config/ (the golden copies in tests/golden/<env>/), or check them.

    .venv/bin/python tools/node_files.py           # rewrite tests/golden/ from config/*.yaml
    .venv/bin/python tools/node_files.py --check   # exit 1 and name each file that differs

Each environment gets `control.node.env`, `control.proxy.env` (when it runs DiStack's proxy) and `<fleet>.node.env`,
exactly as user data installs them (model/node_contract.py env_file), with the deploy-time references (addresses, bucket,
log groups, asset URLs) as <placeholders>: the synth fills them with CloudFormation references.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model import control_plane, node_values  # noqa: E402
from model.loader import CONFIG_DIR, load_environment  # noqa: E402
from model.node_contract import env_file  # noqa: E402

GOLDEN_DIR = ROOT / "tests" / "golden"
REGENERATE = ".venv/bin/python tools/node_files.py"


def refs(stack_name: str) -> node_values.DeploymentRefs:
    return node_values.DeploymentRefs(
        stack_name=stack_name, control_address="<control-address>", bucket_name="<bucket>",
        node_log_group="<node-log-group>", container_log_group="<container-log-group>", scripts_url="<scripts-url>",
        proxy_package_url="<proxy-package-url>", proxy_wheelhouse_url="<proxy-wheelhouse-url>",
        ecr_registry="<ecr-registry>", etcd_ca_secret="<etcd-ca-secret>", etcd_client_secret="<etcd-registrar-secret>")


def render(env: str) -> dict[str, str]:
    """File name -> content of one environment's node files."""
    config = load_environment(env, warn=lambda _: None)
    deployment = refs(config.stack_name)
    hosts = control_plane.control_hosts(config)
    members = [(f"<control-eni-{i}>", f"<etcd-volume-{i}>", f"<control-address-{i}>") for i in range(hosts)]
    control = node_values.control_values(config, deployment, members=members, signal_resource="<control-group>")
    files = {"control.node.env": env_file(control)}
    # DIPROXY_WORKER_NETWORKS here is the VPC's CIDR: the synth narrows it to the worker subnet CDK allocates in a VPC
    # it creates (stacks/components/network.py worker_networks; tests/test_control_plane.py checks the template).
    proxy = node_values.proxy_values(config, control)
    if proxy is not None:
        files["control.proxy.env"] = env_file(proxy)
    for fleet in config.fleets:
        files[f"{fleet}.node.env"] = env_file(node_values.worker_values(
            config, fleet, deployment, signal_resource=f"<{fleet}-group>"))
    return files


def environments() -> list[str]:
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def differences() -> list[str]:
    """Golden files that are missing, stale or left over, relative to the repository."""
    found = []
    for env in environments():
        wanted = render(env)
        folder = GOLDEN_DIR / env
        for name, text in wanted.items():
            path = folder / name
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                found.append(str(path.relative_to(ROOT)))
        found += [str(p.relative_to(ROOT)) for p in sorted(folder.glob("*.env")) if p.name not in wanted]
    return found


def write() -> None:
    for env in environments():
        folder = GOLDEN_DIR / env
        folder.mkdir(parents=True, exist_ok=True)
        wanted = render(env)
        for stale in folder.glob("*.env"):
            if stale.name not in wanted:
                stale.unlink()
        for name, text in wanted.items():
            (folder / name).write_text(text, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say which golden files differ")
    if parser.parse_args().check:
        stale = differences()
        for path in stale:
            print(f"{path} differs from what config/ renders; run {REGENERATE} and review the diff", file=sys.stderr)
        return 1 if stale else 0
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
