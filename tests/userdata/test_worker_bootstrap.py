"""Worker first boot end to end with fakes: what it runs, in which order, and how it fails."""

from __future__ import annotations

import json
import stat
import subprocess

import pytest

from tests.userdata.conftest import INSTANCE_ID, SCRIPTS, engine_node, find_fleet

# Shipped configs by engine: the legacy engine's cheap trn1 colocated example and its tutorial reproduction.
LEGACY_COLOCATED = find_fleet(engine="neuron-connector", role="colocated")
LEGACY_DECODE = find_fleet(engine="neuron-connector", role="decode")


LIFECYCLE = "di-lifecycle.service"


def without_launch_hook(node):
    """A group without a launch hook: the boot ends once the servers start, whether they serve or not."""
    node.override(DI_LAUNCH_HOOK="")
    return node


def signal_of(node):
    (argv,) = node.signals()
    return argv[argv.index("--status") + 1], argv[argv.index("--unique-id") + 1]


def started_units(node):
    return [argv[-1] for argv in node.calls("systemctl") if argv[:2] == ["enable", "--now"]]


def downloads(node):
    return [a for a in node.docker_runs() if a[a.index("--entrypoint") + 1:][:1] == ["huggingface-cli"]]


def test_colocated_worker_boots_both_endpoints_and_signals_success(node):
    n = node(*LEGACY_COLOCATED)
    n.run("di-bootstrap")
    assert started_units(n) == ["docker", "di-vllm@0.service", "di-vllm@1.service", LIFECYCLE]
    assert (n.root / "systemd" / "di-vllm@.service").is_file()
    assert signal_of(n) == ("SUCCESS", INSTANCE_ID)
    (signal,) = n.signals()
    assert signal[signal.index("--logical-resource-id") + 1] == "ColocatedFleetGroup"
    assert signal[signal.index("--stack-name") + 1] == "di-test"
    # Model from Hugging Face through the DLC with the token in a root-only env file, then removed.
    (download,) = n.docker_runs()
    assert download[:4] == ["run", "--rm", "--cgroup-parent=di-containers.slice", "--env-file"]
    assert download[download.index("--entrypoint") + 1] == "huggingface-cli"
    assert "meta-llama/Llama-3.1-8B-Instruct" in download
    assert not (n.root / "run" / "hf.env").exists()
    assert (n.root / "data" / "models" / "meta-llama/Llama-3.1-8B-Instruct" / ".complete").exists()


def test_the_token_never_reaches_a_command_line_or_a_log(node, tmp_path):
    n = node(*LEGACY_COLOCATED)
    n.set("secret", "hf_SuperSecretValue123")
    proc = n.run("di-bootstrap")
    everything = (n.state / "calls.jsonl").read_text() + proc.stderr + proc.stdout
    assert "hf_SuperSecretValue123" not in everything


def test_env_file_for_the_download_is_root_only(node):
    n = node(*LEGACY_COLOCATED)
    n.set("secret", '{"HF_TOKEN": "hf_fromjson"}')
    # The function alone, to look at the file it writes (the bootstrap removes it after the download).
    subprocess.run(["bash", "-c", f". {n.env['DI_HOME']}/worker.sh && load_node_env && write_hf_env"],
                   env=n.env, check=True)
    hf_env = n.root / "run" / "hf.env"
    assert hf_env.read_text() == "HF_TOKEN=hf_fromjson\n"
    assert stat.S_IMODE(hf_env.stat().st_mode) == 0o600


def test_model_and_compiled_artifacts_come_from_the_bucket_when_cached(node):
    n = node("prod", "prefill", uverbs=16)
    v = n.values
    n.run("worker.sh")
    syncs = [a for a in n.calls("aws") if a[:2] == ["s3", "sync"]]
    assert syncs == []  # nothing cached yet: nothing synced
    model = v["DI_MODEL_ID"]
    n.set("s3-prefixes", f"models/{model}/ compiled/")
    (n.root / "data" / "models" / model / ".complete").unlink()
    n.run("worker.sh")
    # Both at once, beside the image pull (their order in the log is the scheduler's).
    sources = sorted(a[-2] for a in n.calls("aws") if a[:2] == ["s3", "sync"])
    assert sources[1] == f"s3://di-test-artifactsbucket-abc123/models/{model}/"
    assert sources[0].startswith(f"s3://di-test-artifactsbucket-abc123/compiled/{model.split('/')[-1]}-"
                                 f"tp{v['DI_TENSOR_PARALLEL']}-b{v['DI_MAX_NUM_SEQS']}-s{v['DI_MAX_MODEL_LEN']}-")
    assert len(downloads(n)) == 1  # no second Hugging Face download
    # Through the CRT transfer client, at the rate the CRT itself knows for this instance type.
    assert (n.root / "run" / "aws-s3.config").read_text() == (
        "[default]\ns3 =\n  preferred_transfer_client = crt\n  target_bandwidth = 400Gb/s\n")


def test_image_pull_is_retried_until_it_succeeds(node):
    n = node(*LEGACY_COLOCATED)
    n.set("docker-pull-fails", "2")
    n.run("di-bootstrap")
    pulls = [a for a in n.calls("docker") if a[:1] == ["pull"]]
    assert len(pulls) == 3
    assert signal_of(n)[0] == "SUCCESS"


def test_image_pull_that_never_succeeds_fails_the_node(node):
    n = node(*LEGACY_COLOCATED)
    n.set("docker-pull-fails", "99")
    proc = n.run("di-bootstrap", check=False, RETRY_ATTEMPTS="3")
    assert proc.returncode != 0
    status, unique = signal_of(n)
    assert status == "FAILURE" and unique.startswith(f"{INSTANCE_ID}:cannot-pull")
    assert started_units(n) == ["docker"]


def test_missing_efa_fails_loudly_with_the_reason_in_the_signal(node):
    n = node(*LEGACY_COLOCATED)
    n.set("efa-count", "0")
    proc = n.run("di-bootstrap", check=False)
    assert proc.returncode != 0
    assert "EFA missing" in proc.stderr
    status, unique = signal_of(n)
    assert status == "FAILURE"
    assert unique.startswith(f"{INSTANCE_ID}:EFA-missing-fi_info-p-efa-finds-no-interface")
    assert len(unique) <= 64
    assert n.docker_runs() == [] and started_units(n) == ["docker"]
    # The full reason also goes to the node log group, and Auto Scaling is told to replace the instance.
    events = [a for a in n.calls("aws") if a[:2] == ["logs", "put-log-events"]]
    assert "EFA missing: fi_info -p efa finds no interface" in events[0][-1]
    (abandon,) = [a for a in n.calls("aws") if a[:2] == ["autoscaling", "complete-lifecycle-action"]]
    assert abandon[abandon.index("--lifecycle-action-result") + 1] == "ABANDON"


def test_wrong_efa_count_names_both_numbers(node):
    n = node("prod", "decode", uverbs=16)
    n.set("efa-count", "8")
    proc = n.run("di-bootstrap", check=False)
    assert "EFA: 8 interfaces, expected 16" in proc.stderr
    assert signal_of(n)[0] == "FAILURE"


def test_missing_neuron_devices_fail_the_preflight(node):
    n = node(*LEGACY_COLOCATED)
    for dev in (n.root / "dev").glob("neuron1*"):
        dev.unlink()
    proc = n.run("di-bootstrap", check=False)
    assert "found 9 Neuron devices (/dev/neuron*), expected 16" in proc.stderr
    assert signal_of(n)[1].startswith(f"{INSTANCE_ID}:found-9-Neuron-devices")


def test_too_little_nvme_fails_the_preflight(node):
    n = node(*LEGACY_COLOCATED)
    n.override(DI_MIN_DATA_GB="999999")
    proc = n.run("di-bootstrap", check=False)
    assert "GB free" in proc.stderr and "need 999999 GB" in proc.stderr
    assert signal_of(n)[0] == "FAILURE"


def instance_store(node, *disks, ns_links=False):
    """By-id links to fake NVMe devices, as udev makes them (newer udev adds an -ns-1 link per disk)."""
    node.state.joinpath("all-mounted").unlink(missing_ok=True)
    for serial, disk in enumerate(disks):
        device = node.root / "dev" / disk
        device.touch()
        link = node.root / "by-id" / f"nvme-Amazon_EC2_NVMe_Instance_Storage_AWS{serial}"
        link.symlink_to(device)
        if ns_links:
            link.with_name(link.name + "-ns-1").symlink_to(device)
        link.with_name(link.name + "-part1").symlink_to(device)  # a partition link is never a disk of its own
    return [str(node.root / "dev" / d) for d in disks]


def test_unmounted_nvme_is_assembled_into_raid0_and_mounted(node):
    n = node(*LEGACY_COLOCATED)
    devices = instance_store(n, "nvme1n1", "nvme2n1", "nvme3n1", "nvme4n1")
    n.run("worker.sh")
    (mdadm,) = n.calls("mdadm")
    assert mdadm == ["--create", "/dev/md/di-data", "--run", "--level=0", "--raid-devices=4", *devices]
    assert n.calls("mkfs.ext4") == [["-q", "-F", "-E", "nodiscard", "/dev/md/di-data"]]
    assert n.calls("mount") == [["/dev/md/di-data", str(n.root / "data")]]
    assert (n.root / "etc" / "fstab").read_text() == f"UUID=1111-2222-uuid {n.root / 'data'} ext4 defaults,nofail 0 2\n"


def test_namespace_suffixed_links_of_the_same_disks_count_once(node):
    # Newer udev: nvme-Amazon_EC2_NVMe_Instance_Storage_AWS0 and …_AWS0-ns-1 both point at the same disk.
    n = node(*LEGACY_COLOCATED)
    devices = instance_store(n, "nvme1n1", "nvme2n1", ns_links=True)
    n.run("worker.sh")
    (mdadm,) = n.calls("mdadm")
    assert mdadm[4:] == ["--raid-devices=2", *devices]


def test_a_single_disk_is_formatted_and_mounted_without_raid(node):
    n = node(*LEGACY_COLOCATED)
    (device,) = instance_store(n, "nvme1n1", ns_links=True)
    n.run("worker.sh")
    assert n.calls("mdadm") == []
    assert n.calls("mkfs.ext4") == [["-q", "-F", "-E", "nodiscard", device]]
    assert n.calls("mount") == [[device, str(n.root / "data")]]


def test_disks_the_ami_already_mounted_are_left_alone(node):
    n = node(*LEGACY_COLOCATED)
    first, second, third = instance_store(n, "nvme1n1", "nvme2n1", "nvme3n1")
    n.set("mounts", f"{first} /opt/dlami/nvme\n")
    proc = n.run("worker.sh")
    assert f"leaving {first} alone: already mounted on /opt/dlami/nvme" in proc.stderr
    (mdadm,) = n.calls("mdadm")
    assert mdadm[4:] == ["--raid-devices=2", second, third]
    assert first not in [w for call in n.calls("mkfs.ext4") for w in call]


def test_disks_all_mounted_elsewhere_fail_clearly_and_format_nothing(node):
    n = node(*LEGACY_COLOCATED)
    first, second = instance_store(n, "nvme1n1", "nvme2n1")
    n.set("mounts", f"{first} /opt/dlami/nvme\n{second} /scratch\n")
    proc = n.run("di-bootstrap", check=False)
    assert proc.returncode != 0
    assert "instance-store NVMe all mounted elsewhere" in proc.stderr and "/opt/dlami/nvme" in proc.stderr
    assert n.calls("mdadm") == [] and n.calls("mkfs.ext4") == [] and n.calls("mount") == []
    assert signal_of(n)[1].startswith(f"{INSTANCE_ID}:instance-store-NVMe-all-mounted-elsewhere")


def test_data_dir_already_mounted_is_used_as_it_is(node):
    n = node(*LEGACY_COLOCATED)
    instance_store(n, "nvme1n1", "nvme2n1")
    n.set("mounted", str(n.root / "data"))
    n.run("worker.sh")
    assert n.calls("mdadm") == [] and n.calls("mkfs.ext4") == [] and n.calls("mount") == []


def test_no_instance_store_fails_with_a_clear_reason(node):
    n = node(*LEGACY_COLOCATED)
    instance_store(n)
    proc = n.run("di-bootstrap", check=False)
    assert "no instance-store NVMe found" in proc.stderr
    status, unique = signal_of(n)
    assert status == "FAILURE" and unique.startswith(f"{INSTANCE_ID}:no-instance-store-NVMe-found")
    assert n.docker_runs() == [] and started_units(n) == ["docker"]


def test_efa_devices_listed_under_two_fabrics_count_once(node):
    n = node(*LEGACY_COLOCATED)
    n.set("efa-direct")
    n.run("di-bootstrap")
    assert json.loads(n.run("di-status").stdout)["efa"]["interfaces"] == int(n.values["DI_EXPECTED_EFA_INTERFACES"])


def test_secret_fetch_failure_is_clear_and_starts_nothing(node):
    n = node(*LEGACY_COLOCATED)
    n.set("secret-fails")
    proc = n.run("di-bootstrap", check=False)
    assert proc.returncode != 0
    assert "cannot read secret 'distack/hf-token' from Secrets Manager" in proc.stderr
    assert downloads(n) == []
    assert started_units(n) == ["docker"]
    assert signal_of(n)[0] == "FAILURE"


def test_legacy_disaggregated_worker_waits_for_etcd_and_fails_when_it_never_answers(node):
    # NeuronConnector needs etcd as vLLM starts.
    n = node(*LEGACY_DECODE, uverbs=16)
    n.set("etcd-down")
    proc = n.run("di-bootstrap", check=False)
    assert "etcd at 10.42.0.10:8989 unreachable" in proc.stderr
    assert started_units(n) == ["docker"]
    assert signal_of(n)[0] == "FAILURE"


def endpoint_units(node, registrars):
    indexes = range(len(node.values["DI_ENDPOINTS"].split()))
    return [u for i in indexes for u in (f"di-vllm@{i}.service", *([f"di-register@{i}.service"] if registrars else []))]


@pytest.mark.parametrize("engine", ["nixl", "neuron-connector"])
def test_standard_mode_does_not_need_etcd(node, engine):
    n = without_launch_hook(engine_node(node, engine, "standard", uverbs=16))
    n.set("etcd-down")
    n.run("di-bootstrap")
    assert started_units(n) == ["docker", *endpoint_units(n, registrars=True), LIFECYCLE]
    assert signal_of(n)[0] == "SUCCESS"


def test_standard_mode_enables_a_registrar_after_each_endpoint(node):
    n = engine_node(node, "nixl", "standard", uverbs=16)
    n.run("di-bootstrap")
    calls = n.calls("systemctl")
    reload = calls.index(["daemon-reload"])
    for index in ("0", "1"):
        vllm = calls.index(["enable", "--now", f"di-vllm@{index}.service"])
        registrar = calls.index(["enable", "--now", f"di-register@{index}.service"])
        assert reload < vllm < registrar
    assert (n.root / "systemd" / "di-register@.service").is_file()


@pytest.mark.parametrize("found", [LEGACY_COLOCATED, LEGACY_DECODE], ids=lambda f: "-".join(f))
def test_legacy_disaggregated_workers_get_no_registrar(node, found):
    # NeuronConnector registers DI endpoints itself.
    n = node(*found, uverbs=16)
    n.run("worker.sh")
    assert [u for u in started_units(n) if u.startswith("di-vllm@")]
    assert not [u for u in started_units(n) if u.startswith("di-register@")]
    assert not (n.root / "systemd" / "di-register@.service").exists()


@pytest.mark.parametrize("role", ["colocated", "prefill", "decode"])
def test_nixl_disaggregated_workers_get_a_registrar_per_endpoint_and_do_not_wait_for_etcd(node, role):
    # vLLM's NixlConnector registers nothing: di-register keeps each endpoint in etcd, and waits for etcd itself.
    n = without_launch_hook(engine_node(node, "nixl", role, uverbs=16))
    n.set("etcd-down")
    n.run("di-bootstrap")
    assert started_units(n) == ["docker", *endpoint_units(n, registrars=True), LIFECYCLE]
    assert (n.root / "systemd" / "di-register@.service").is_file()
    assert signal_of(n) == ("SUCCESS", INSTANCE_ID)


def test_nixl_worker_probes_the_libfabric_backend_in_the_pulled_image_before_any_unit(node):
    n = engine_node(node, "nixl", "colocated", uverbs=16)
    n.run("di-bootstrap")
    docker = n.calls("docker")
    pull = docker.index(["pull", n.values["DI_IMAGE"]])
    probe = next(i for i, a in enumerate(docker) if a[:1] == ["run"] and "nixl_agent" in " ".join(a))
    assert pull < probe
    devices = [w for i in range(16) for w in ("--device", f"/dev/infiniband/uverbs{i}")]
    # The setup guide's probe (vllm-neuron/docs/getting-started/setup-guide.md), with the EFA devices.
    neuron = [f"--device=/dev/neuron{i}" for i in range(int(n.values["DI_EXPECTED_NEURON_DEVICES"]))]
    assert docker[probe] == ["run", "--rm", "--cgroup-parent=di-containers.slice", *neuron, *devices, "--entrypoint", "python", n.values["DI_IMAGE"],
                             "-c", "from nixl._api import nixl_agent, nixl_agent_config; nixl_agent('probe', "
                             "nixl_agent_config(backends=['LIBFABRIC'])); print('LIBFABRIC OK')"]
    calls = n.calls()
    probe_at = next(i for i, c in enumerate(calls) if c[0] == "docker" and "nixl_agent" in " ".join(c))
    first_unit = next(i for i, c in enumerate(calls) if c[:3] == ["systemctl", "enable", "--now"] and "di-vllm" in c[-1])
    assert probe_at < first_unit


def test_an_image_without_the_nixl_libfabric_backend_fails_the_boot_before_any_unit(node):
    n = engine_node(node, "nixl", "prefill", uverbs=16)
    n.set("nixl-probe-fails")
    proc = n.run("di-bootstrap", check=False)
    assert proc.returncode != 0
    assert "createBackend: unsupported backend 'LIBFABRIC'" in proc.stderr or "NIXL_ERR_NOT_FOUND" in proc.stderr
    status, unique = signal_of(n)
    assert status == "FAILURE" and unique.startswith(f"{INSTANCE_ID}:NIXL-LIBFABRIC-backend-unavailable-in-image")
    assert started_units(n) == ["docker"] and downloads(n) == []


def test_the_legacy_engine_runs_no_nixl_probe(node):
    n = node(*LEGACY_COLOCATED)
    n.set("nixl-probe-fails")
    n.run("di-bootstrap")
    assert not [a for a in n.docker_runs() if "nixl_agent" in " ".join(a)]


def test_a_unit_that_dies_at_start_fails_the_node(node):
    n = node(*LEGACY_COLOCATED)
    n.set("units-failed", "di-vllm@1.service")
    proc = n.run("di-bootstrap", check=False)
    assert "di-vllm@1.service is not running" in proc.stderr
    assert signal_of(n)[0] == "FAILURE"


def test_a_late_signal_the_stack_no_longer_waits_for_is_not_a_failure(node):
    n = node(*LEGACY_COLOCATED)
    n.set("signal-fails")
    n.run("di-bootstrap")


def test_docker_is_installed_with_apt_when_missing(node):
    n = node(*LEGACY_COLOCATED, fakes=["apt-get", "systemctl"])
    subprocess.run(["bash", "-c", f". {n.env['DI_HOME']}/worker.sh && install_docker"], env=n.env, check=True)
    assert n.calls("apt-get")[-1] == ["install", "-y", "-q", "docker.io"]
    assert n.calls("systemctl") == [["enable", "--now", "docker"]]


# ------------------------------------------------------------------------------------ containers and instance metadata

# di-containers.slice's cgroup: systemd places a-b.slice inside a.slice (systemd.slice(5)), and the match's path is
# relative to the cgroup2 root (iptables-extensions(8)), so the rule names di.slice/di-containers.slice.
IMDS_RULE = ["-d", "169.254.169.254/32", "-m", "cgroup", "--path", "di.slice/di-containers.slice", "-j", "REJECT"]


@pytest.mark.parametrize(("slice_name", "path"), [
    ("di-containers.slice", "di.slice/di-containers.slice"),
    ("di-containers-control.slice", "di.slice/di-containers.slice/di-containers-control.slice"),
    ("system.slice", "system.slice"),
])
def test_a_slices_cgroup_path_follows_systemds_naming(slice_name, path):
    done = subprocess.run(["bash", "-c", f". {SCRIPTS / 'lib' / 'containment.sh'}; slice_cgroup_path {slice_name}"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == path


def test_the_imds_rule_is_in_place_before_any_container_starts(node):
    n = engine_node(node, "nixl", "colocated", uverbs=16)
    n.run("di-bootstrap")
    calls = n.calls()
    insert = calls.index(["iptables", "-w", "-I", "OUTPUT", "1", *IMDS_RULE])
    first_run = next(i for i, c in enumerate(calls) if c[:2] == ["docker", "run"])
    assert insert < first_run
    assert ["ip6tables", "-w", "-I", "OUTPUT", "1", "-d", "fd00:ec2::254/128", *IMDS_RULE[2:]] in calls
    assert (n.root / "systemd" / "di-containers.slice").is_file()
    assert calls.index(["systemctl", "start", "di-containers.slice"]) < insert
    # Every container the boot ran is under the slice the rule matches, and none is privileged.
    runs = n.docker_runs()
    assert runs and all("--cgroup-parent=di-containers.slice" in a for a in runs)
    assert not [a for a in runs if "--privileged" in a]
    # Each endpoint start checks the rule again (a reboot drops it) and adds nothing when it is there.
    n.run("di-run", "run", "vllm", "0")
    assert [c for c in n.calls() if c[:3] == ["iptables", "-w", "-I"]] == [["iptables", "-w", "-I", "OUTPUT", "1", *IMDS_RULE]]


def test_a_rule_that_cannot_be_installed_fails_the_boot_before_any_container(node):
    n = engine_node(node, "nixl", "colocated", uverbs=16)
    n.set("iptables-fail", "1")
    proc = n.run("di-bootstrap", check=False)
    assert "instance metadata" in proc.stderr
    assert not n.docker_runs()
    assert signal_of(n)[0] == "FAILURE"


def test_an_endpoint_does_not_start_without_the_rule(node):
    n = engine_node(node, "nixl", "colocated", uverbs=16)
    n.set("iptables-fail", "1")
    proc = n.run("di-run", "run", "vllm", "0", check=False)
    assert proc.returncode != 0 and "instance metadata" in proc.stderr
    assert not n.docker_runs()
