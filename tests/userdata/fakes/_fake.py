"""Stand-in for the commands node scripts call: records each call as one JSON line in $FAKE_LOG and answers
from state files in $FAKE_STATE, so tests drive success and failure paths and read back exact argv."""

import json
import os
import sys
from pathlib import Path

STATE = Path(os.environ.get("FAKE_STATE", "/tmp/fake-state"))
INSTANCE_ID = "i-0123456789abcdef0"


def flag(name: str) -> str | None:
    """A behaviour switch: the content of $FAKE_STATE/<name>, or None."""
    path = STATE / name
    return path.read_text().strip() if path.exists() else None


def bump(name: str) -> int:
    """Count calls of one kind (persisted across processes)."""
    path = STATE / f"count-{name}"
    count = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(count))
    return count


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def docker(argv):
    if argv[:1] == ["pull"]:
        fails = int(flag("docker-pull-fails") or 0)
        if bump("pull") <= fails:
            print("Error response from daemon: toomanyrequests", file=sys.stderr)
            return 1
        return 0
    if argv[:1] == ["ps"]:
        print(flag("docker-ps") or "", end="")
        return 0
    if argv[:1] == ["run"] and option(argv, "--entrypoint") == "python" and "-c" in argv:
        # The NIXL backend probe of the setup guide; "nixl-probe-fails" plays an image without the libcuda stub.
        if flag("nixl-probe-fails"):
            print("E nixl_agent.cpp createBackend: unsupported backend 'LIBFABRIC'\n"
                  "nixl._bindings.nixlNotFoundError: NIXL_ERR_NOT_FOUND", file=sys.stderr)
            return 1
        print("NIXL INFO Backend LIBFABRIC was instantiated\nLIBFABRIC OK")
        return 0
    if argv[:1] == ["run"] and flag("docker-run-fails"):
        return 125
    return 0


def aws(argv):
    service, op = (argv + ["", ""])[:2]
    if (service, op) == ("secretsmanager", "get-secret-value"):
        if flag("secret-fails"):
            print("An error occurred (AccessDeniedException)", file=sys.stderr)
            return 254
        print(flag("secret") or "hf_faketoken")
        return 0
    if (service, op) == ("s3", "ls"):
        present = (flag("s3-prefixes") or "").split()
        return 0 if any(f"/{p}" in argv[-1] for p in present) else 1
    if (service, op) == ("s3", "cp"):
        if flag("s3-cp-fails"):
            print("fatal error: An error occurred (403) when calling the HeadObject operation", file=sys.stderr)
            return 1
        source = STATE / "s3-object"
        if source.exists():
            Path(argv[-1]).write_bytes(source.read_bytes())
        return 0
    if (service, op) == ("ec2", "attach-network-interface"):
        if flag("eni-elsewhere"):
            print("An error occurred (InvalidParameterValue): Interface is currently in use", file=sys.stderr)
            return 254
        (STATE / "eni").write_text(option(argv, "--instance-id"))
        return 0
    if (service, op) == ("ec2", "attach-volume"):
        (STATE / "volume").write_text(option(argv, "--instance-id"))
        return 0
    if (service, op) == ("ec2", "describe-network-interfaces"):
        owner = flag("eni-elsewhere") or flag("eni")
        print(f"{owner}\tattached" if owner else "None")
        return 0
    if (service, op) == ("ec2", "describe-volumes"):
        owner = flag("volume")
        print(f"{owner}\tattached" if owner else "None")
        return 0
    if (service, op) == ("cloudformation", "signal-resource") and flag("signal-fails"):
        print("ValidationError: Stack di-dev is in CREATE_COMPLETE state and can not be signaled", file=sys.stderr)
        return 254
    return 0


def curl(argv):
    url = next(a for a in argv if a.startswith("http"))
    writes_code = "%{http_code}" in argv
    if url.endswith("/latest/api/token"):
        print("fake-token", end="")
        return 0
    if "/meta-data/instance-id" in url:
        print(INSTANCE_ID, end="")
        return 0
    if "/meta-data/local-ipv4" in url:
        print(flag("local-ip") or "10.42.1.5", end="")
        return 0
    if url.endswith(":8989/health"):
        if flag("etcd-down"):
            return 7
        print('{"health":"true"}')
        return 0
    if url.endswith("/v3/kv/range"):
        return 7 if flag("etcd-down") else (print('{"count":"1"}') or 0)
    port = url.split(":")[2].split("/")[0]
    code = flag(f"health-{port}") or "200"
    if writes_code:
        print(code, end="")
        return 0 if code != "000" else 7
    return 0 if code == "200" else 22


def systemctl(argv):
    if argv[:1] == ["is-active"]:
        failed = (flag("units-failed") or "").split()
        unit = [a for a in argv[1:] if not a.startswith("-")][0]
        if unit in failed:
            print("failed")
            return 3
        print("active")
        return 0
    return 0


def fi_info(argv):
    count = int(flag("efa-count") or os.environ.get("DI_EXPECTED_EFA_INTERFACES", "1"))
    if count == 0:
        print("fi_getinfo: -61 (No data available)", file=sys.stderr)
        return 61
    fabrics = ["efa", "efa-direct"] if flag("efa-direct") else ["efa"]
    for fabric in fabrics:
        for i in range(count):
            print(f"provider: efa\n    fabric: {fabric}\n    domain: rdmap{i}s0-rdm\n    version: 122.0\n"
                  "    type: FI_EP_RDM")
    return 0


def neuron_ls(argv):
    print(json.dumps([{"neuron_device": i} for i in range(16)]))
    return 0


def blkid(argv):
    formatted = flag("volume-formatted") or (STATE / "count-mkfs").exists()
    if not formatted:
        return 2
    print("ext4" if "TYPE" in argv else "1111-2222-uuid")
    return 0


def mkfs(argv):
    bump("mkfs")
    return 0


def findmnt(argv):
    """`findmnt -n TARGET`: is TARGET a mount point ("mounted" list or "all-mounted").
    `findmnt -rn -o TARGET -S DEVICE`: where DEVICE is mounted, from "mounts" lines "DEVICE TARGET"."""
    if "-S" in argv:
        device = option(argv, "-S")
        targets = [line.split()[1] for line in (flag("mounts") or "").splitlines() if line.split()[:1] == [device]]
        print("\n".join(targets), end="\n" if targets else "")
        return 0 if targets else 1
    mounted = (flag("mounted") or "").split()
    return 0 if argv[-1] in mounted or flag("all-mounted") else 1


def ip(argv):
    if flag("eni"):
        print(f"3: ens6    inet {flag('control-address') or '10.42.0.10'}/24 brd 10.42.0.255 scope global ens6")
    print("2: ens5    inet 10.42.0.77/24 brd 10.42.0.255 scope global ens5")
    return 0


def python3(argv):
    return 0


HANDLERS = {"docker": docker, "aws": aws, "curl": curl, "systemctl": systemctl, "fi_info": fi_info,
            "neuron-ls": neuron_ls, "blkid": blkid, "mkfs.ext4": mkfs, "findmnt": findmnt, "ip": ip,
            "python3": python3}


def main() -> int:
    name, argv = sys.argv[1], sys.argv[2:]
    STATE.mkdir(parents=True, exist_ok=True)
    with open(os.environ.get("FAKE_LOG", STATE / "calls.jsonl"), "a", encoding="utf-8") as log:
        log.write(json.dumps({"cmd": name, "argv": argv}) + "\n")
    return HANDLERS.get(name, lambda _: 0)(argv)


if __name__ == "__main__":
    sys.exit(main())
