"""GPU workers (issue 15, node side): the accelerator module's preflight and docker devices, and the GPU engines'
containers (nixl on GPU, lmcache) held against their sources: vLLM's NIXL guide and seed 004's launcher and configs.
Until the stack writes a GPU node.env, GPU nodes are a shipped worker switched by override.env to the values the
contract (notes/gpu-contract.md) names."""

from __future__ import annotations

import json
import shlex

import pytest

from tests.userdata.conftest import INSTANCE_ID, find_fleet

VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
LMCACHE_IMAGE = "lmcache/vllm-openai:v0.3.7"

# What a p5.48xlarge worker's node.env carries for the GPU engines (contract "node.env additions").
GPU_VALUES = {
    "DI_ACCELERATOR": "gpu", "DI_EXPECTED_GPUS": "8", "DI_INSTANCE_TYPE": "p5.48xlarge",
    "DI_EXPECTED_EFA_INTERFACES": "32", "DI_EXPECTED_NEURON_DEVICES": "", "DI_LNC": "",
    "DI_MODEL_ID": "meta-llama/Llama-3.1-8B-Instruct", "DI_TENSOR_PARALLEL": "1", "DI_MAX_NUM_SEQS": "8",
    "DI_MAX_MODEL_LEN": "8192", "DI_MAX_NUM_BATCHED_TOKENS": "8192", "DI_BLOCK_SIZE": "", "DI_OPTIMIZATION_LEVEL": "",
    "DI_NEURON_CONFIG": "", "DI_COMPILE_TIMEOUT_SECONDS": "", "DI_READY_TIMEOUT_SECONDS": "",
    "DI_EXECUTE_MODEL_TIMEOUT_SECONDS": "", "DI_PYTHONHASHSEED": "0", "DI_NIXL_SIDE_CHANNEL_BASE_PORT": "5600",
}
NIXL_GPU = {**GPU_VALUES, "DI_ENGINE": "nixl", "DI_IMAGE": VLLM_IMAGE, "DI_KV_CONNECTOR": "NixlConnector",
            "DI_NIXL_BACKEND": "LIBFABRIC"}
LMCACHE_GPU = {**GPU_VALUES, "DI_ENGINE": "lmcache", "DI_IMAGE": LMCACHE_IMAGE, "DI_NIXL_BACKEND": "UCX",
               "DI_LMCACHE_NIXL_BUFFER_SIZE": "1073741824", "DI_LMCACHE_NIXL_BUFFER_DEVICE": "cuda",
               "DI_LMCACHE_CHUNK_SIZE": ""}
# Seed 004's 2P1D on one instance: prefillers on GPU 0 and 1 (ports 8100, 8101), the decoder on GPU 2 (port 8200).
SEED_ENDPOINTS = "prefill:0:8100 prefill:1:8101 decode:2:8200"


def gpu_node(make, values, endpoints, *, role="colocated", uverbs=4):
    env, fleet = find_fleet(role=role)
    n = make(env, fleet, uverbs=uverbs)
    n.override(**values, DI_ENDPOINTS=endpoints)
    return n


def run_endpoint(n, index):
    n.run("di-run", "run", "vllm", str(index))
    argv = n.docker_runs()[-1]
    image = argv.index(n.values["DI_IMAGE"])
    return argv[:image + 1], argv[image + 1:]


def env_of(head):
    return dict(head[i + 1].split("=", 1) for i, w in enumerate(head) if w == "-e")


def devices_of(head):
    """The docker words between the common head and --shm-size: EFA devices, then the accelerator's."""
    return head[head.index("--cgroup-parent=di-containers.slice") + 1:head.index("--shm-size=10g")]


def compiled_key(v):
    import hashlib
    digest = hashlib.sha256("|".join(v[k] for k in ("DI_MODEL_ID", "DI_IMAGE", "DI_TENSOR_PARALLEL", "DI_MAX_NUM_SEQS",
                                                      "DI_MAX_MODEL_LEN")).encode()).hexdigest()[:12]
    return (f"{v['DI_MODEL_ID'].split('/')[-1]}-tp{v['DI_TENSOR_PARALLEL']}-b{v['DI_MAX_NUM_SEQS']}"
            f"-s{v['DI_MAX_MODEL_LEN']}-{digest}")


# ------------------------------------------------------------------------------------------ accelerator: gpu


def test_gpu_endpoint_gets_its_gpus_the_efa_devices_and_host_ipc(node):
    n = gpu_node(node, NIXL_GPU, "prefill:0-3:8000 decode:4-7:8001", uverbs=4)
    head, _ = run_endpoint(n, 1)
    efa = [w for i in range(4) for w in ("--device", f"/dev/infiniband/uverbs{i}")]
    # NVIDIA Container Toolkit "GPU Enumeration": `docker run --rm --gpus '"device=1,2"'` (the inner quotes are docker's
    # syntax for a list; here they reach docker as part of the argument, as the shell's single quotes would pass them).
    # vLLM's Docker guide: "You can either use the `ipc=host` flag or `--shm-size` flag".
    # No --privileged, which would expose every GPU and defeat the split between colocated endpoints.
    assert "--privileged" not in head
    assert devices_of(head) == [*efa, "--cap-add=IPC_LOCK", "--gpus", '"device=4,5,6,7"', "--ipc=host"]
    assert "CUDA_VISIBLE_DEVICES" not in env_of(head)


def test_gpu_ranges_become_docker_device_lists(node):
    n = gpu_node(node, NIXL_GPU, "standard:2-3,6:8000")
    head, _ = run_endpoint(n, 0)
    assert head[head.index("--gpus") + 1] == '"device=2,3,6"'


def test_neuron_nodes_get_no_gpu_arguments_when_node_env_names_no_accelerator(node):
    n = node(*find_fleet(engine="nixl", role="prefill", instance="trn"), uverbs=2)
    assert "DI_ACCELERATOR" not in n.values or n.values["DI_ACCELERATOR"] in ("", "neuron")
    head, _ = run_endpoint(n, 0)
    assert "--gpus" not in head and "--ipc=host" not in head


def test_gpu_preflight_fails_with_the_gpu_count_named(node):
    n = gpu_node(node, NIXL_GPU, "prefill:0-3:8000 decode:4-7:8001")
    n.set("gpu-count", "7")
    proc = n.run("di-bootstrap", check=False)
    assert proc.returncode != 0
    assert "found 7 GPUs (nvidia-smi), expected 8" in proc.stderr
    (signal,) = n.signals()
    assert signal[signal.index("--status") + 1] == "FAILURE"
    assert signal[signal.index("--unique-id") + 1].startswith(f"{INSTANCE_ID}:found-7-GPUs")
    assert n.docker_runs() == []


def test_gpu_preflight_counts_nothing_when_the_driver_does_not_answer(node):
    n = gpu_node(node, NIXL_GPU, "prefill:0-3:8000 decode:4-7:8001")
    n.set("nvidia-smi-fails")
    proc = n.run("di-bootstrap", check=False)
    assert "found 0 GPUs (nvidia-smi), expected 8" in proc.stderr


def test_an_unknown_accelerator_names_the_known_ones(node):
    n = gpu_node(node, {**NIXL_GPU, "DI_ACCELERATOR": "tpu"}, "standard:0:8000")
    proc = n.run("di-run", "run", "vllm", "0", check=False)
    assert proc.returncode != 0 and "DI_ACCELERATOR='tpu'" in proc.stderr and "known: gpu neuron" in proc.stderr


def test_gpu_worker_boots_probes_its_nixl_backend_and_starts_every_endpoint(node):
    n = gpu_node(node, {**NIXL_GPU, "DI_NIXL_BACKEND": "UCX", "DI_LAUNCH_HOOK": ""},
                 "prefill:0-3:8000 decode:4-7:8001")
    n.run("di-bootstrap")
    probe = next(a for a in n.docker_runs() if "nixl_agent" in " ".join(a))
    assert probe[:5] == ["run", "--rm", "--cgroup-parent=di-containers.slice", "--gpus", "all"]
    assert probe[-1] == ("from nixl._api import nixl_agent, nixl_agent_config; nixl_agent('probe', "
                         "nixl_agent_config(backends=['UCX'])); print('UCX OK')")
    units = [a[-1] for a in n.calls("systemctl") if a[:2] == ["enable", "--now"]]
    assert units[1:5] == ["di-vllm@0.service", "di-register@0.service", "di-vllm@1.service", "di-register@1.service"]
    status = json.loads(n.run("di-status").stdout)
    assert status["gpus"] == 8 and status["expected_gpus"] == 8 and "neuron_devices" not in status


@pytest.mark.parametrize("env,fleet,index,gpus", [("gpu-lmcache", "colocated", 2, "2"), ("gpu-xpyd", "prefill", 0, None)])
def test_shipped_gpu_configs_run_as_rendered(node, env, fleet, index, gpus):
    # The node.env the stack renders for the shipped GPU environments, unchanged: the endpoint's container starts
    # with its GPUs (a one-GPU range renders "2-2"), and no Neuron setting.
    n = node(env, fleet, uverbs=int(node_values_of(env, fleet)["DI_EXPECTED_EFA_INTERFACES"]))
    n.run("di-run", "prepare", "vllm", str(index))
    head, words = run_endpoint(n, index)
    first = n.values["DI_ENDPOINTS"].split()[index].split(":")[1]
    expected = gpus or ",".join(str(i) for i in range(int(first.split("-")[0]), int(first.split("-")[-1]) + 1))
    assert head[head.index("--gpus") + 1] == f'"device={expected}"'
    assert "--kv-transfer-config" in words
    assert not [w for w in head + words if "NEURON" in w]


def node_values_of(env, fleet):
    from tests.userdata.conftest import rendered_values
    return rendered_values(env, fleet)


# --------------------------------------------------------------------------------------------- nixl on GPU

# vllm-project/vllm docs/features/nixl_connector_usage.md@026c83f974fc, "Multiple Prefiller Instances on Different
# Machines" and "Multiple Decoder Instances on Different Machines", verbatim:
GUIDE_PREFILL = """VLLM_NIXL_SIDE_CHANNEL_HOST=${IP1} \\
VLLM_NIXL_SIDE_CHANNEL_PORT=5600 \\
UCX_NET_DEVICES=all \\
vllm serve Qwen/Qwen3-0.6B --port 8000 \\
  --tensor-parallel-size 8 \\
  --kv-transfer-config '{"kv_connector":"NixlConnector","kv_role":"kv_producer","kv_load_failure_policy":"fail"}'"""
GUIDE_DECODE = GUIDE_PREFILL.replace("IP1", "IP3").replace("kv_producer", "kv_consumer")
# "Selecting a NIXL transport backend": "kv_connector_extra_config":{"backends":["LIBFABRIC"]}


def parse_guide(command):
    words = shlex.split(command.replace("\\\n", " "))
    env = dict(w.split("=", 1) for w in words[:words.index("vllm")])
    rest = words[words.index("serve") + 2:]
    return env, dict(zip(rest[::2], rest[1::2]))


@pytest.mark.parametrize("backend", ["UCX", "LIBFABRIC"])
@pytest.mark.parametrize("role,guide,kv_role", [("prefill", GUIDE_PREFILL, "kv_producer"),
                                                 ("decode", GUIDE_DECODE, "kv_consumer")])
def test_nixl_gpu_servers_match_the_vllm_nixl_guide(node, role, guide, kv_role, backend):
    g_env, g_flags = parse_guide(guide)
    n = gpu_node(node, {**NIXL_GPU, "DI_NIXL_BACKEND": backend, "DI_TENSOR_PARALLEL": g_flags["--tensor-parallel-size"]},
                 f"{role}:0-7:{g_flags['--port']}", role=role)
    head, words = run_endpoint(n, 0)
    env = env_of(head)
    # The guide's environment: the side channel on this node's routable address and the guide's port (base + 0);
    # UCX_NET_DEVICES=all is a UCX setting, given with the UCX backend only.
    expected_env = {"VLLM_NIXL_SIDE_CHANNEL_HOST": "10.42.1.5",
                    "VLLM_NIXL_SIDE_CHANNEL_PORT": g_env["VLLM_NIXL_SIDE_CHANNEL_PORT"],
                    "PYTHONHASHSEED": "0", "VLLM_CACHE_ROOT": f"/data/compiled/{compiled_key(n.values)}"}
    if backend == "UCX":
        expected_env["UCX_NET_DEVICES"] = g_env["UCX_NET_DEVICES"]
    assert env == expected_env
    assert head[-3:] == ["--entrypoint", "vllm", VLLM_IMAGE]
    model = n.values["DI_MODEL_ID"]
    assert words[:4] == ["serve", f"/data/models/{model}", "--served-model-name", model]
    ours = dict(zip(words[4::2], words[5::2]))
    for flag in ("--port", "--tensor-parallel-size"):
        assert ours[flag] == g_flags[flag]
    kv, g_kv = json.loads(ours["--kv-transfer-config"]), json.loads(g_flags["--kv-transfer-config"])
    # The guide's connector and role; kv_load_failure_policy left at its documented default ("fail (default)").
    assert {k: v for k, v in g_kv.items() if k != "kv_load_failure_policy"} == {
        k: v for k, v in kv.items() if k != "kv_connector_extra_config"}
    assert kv["kv_connector_extra_config"] == {"backends": [backend]}
    assert ours["--kv-transfer-config"] == (
        '{"kv_connector":"NixlConnector","kv_role":"%s","kv_connector_extra_config":{"backends":["%s"]}}'
        % (kv_role, backend))
    # No Neuron setting reaches a GPU server.
    assert not [w for w in head + words if "NEURON" in w or "neuron_config" in w]


def test_nixl_gpu_colocated_endpoints_get_distinct_side_channel_ports(node):
    n = gpu_node(node, NIXL_GPU, "prefill:0-3:8000 decode:4-7:8001")
    ports = [env_of(run_endpoint(n, i)[0])["VLLM_NIXL_SIDE_CHANNEL_PORT"] for i in (0, 1)]
    # 100 apart: each TP-4 endpoint's ranks may listen on port + tp_rank (5600-5603), clear of the next endpoint.
    assert ports == ["5600", "5700"]


# ----------------------------------------------------------------------------------------------------- lmcache

# Seed 004 (LMCache docs "XpYd", disagg_vllm_launcher.sh), verbatim: Prefiller1 L174-183, Prefiller2 L189-198,
# Decoder L204-213.
SEED_LAUNCH = {
    0: """UCX_TLS=cuda_ipc,cuda_copy,tcp \\
   LMCACHE_CONFIG_FILE=configs/lmcache-prefiller-config.yaml \\
   VLLM_ENABLE_V1_MULTIPROCESSING=1 \\
   VLLM_WORKER_MULTIPROC_METHOD=spawn \\
   CUDA_VISIBLE_DEVICES=0 \\
   vllm serve meta-llama/Llama-3.1-8B-Instruct \\
       --port 8100 \\
       --disable-log-requests \\
       --enforce-eager \\
       --kv-transfer-config '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_producer","kv_connector_extra_config": {"discard_partial_chunks": false, "lmcache_rpc_port": "producer1"}}'""",
    1: """UCX_TLS=cuda_ipc,cuda_copy,tcp \\
   LMCACHE_CONFIG_FILE=configs/lmcache-prefiller-config.yaml \\
   VLLM_ENABLE_V1_MULTIPROCESSING=1 \\
   VLLM_WORKER_MULTIPROC_METHOD=spawn \\
   CUDA_VISIBLE_DEVICES=1 \\
   vllm serve meta-llama/Llama-3.1-8B-Instruct \\
       --port 8101 \\
       --disable-log-requests \\
       --enforce-eager \\
       --kv-transfer-config '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_producer","kv_connector_extra_config": {"discard_partial_chunks": false, "lmcache_rpc_port": "producer2"}}'""",
    2: """UCX_TLS=cuda_ipc,cuda_copy,tcp \\
   LMCACHE_CONFIG_FILE=configs/lmcache-decoder-config.yaml \\
   VLLM_ENABLE_V1_MULTIPROCESSING=1 \\
   VLLM_WORKER_MULTIPROC_METHOD=spawn \\
   CUDA_VISIBLE_DEVICES=2 \\
   vllm serve meta-llama/Llama-3.1-8B-Instruct \\
       --port 8200 \\
       --disable-log-requests \\
       --enforce-eager \\
       --kv-transfer-config '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_consumer","kv_connector_extra_config": {"discard_partial_chunks": false, "lmcache_rpc_port": "consumer1"}}'""",
}
# Seed 004's configs (prefiller L100-111, decoder L125-136), verbatim.
SEED_PREFILLER_YAML = """local_cpu: False
max_local_cpu_size: 0
max_local_disk_size: 0
remote_serde: NULL

enable_nixl: True
nixl_role: "sender"
nixl_receiver_host: "localhost"
nixl_receiver_port: 55555
nixl_buffer_size: 1073741824 # 1GB
nixl_buffer_device: "cuda"
nixl_enable_gc: True
"""
SEED_DECODER_YAML = SEED_PREFILLER_YAML.replace('"sender"', '"receiver"')


@pytest.mark.parametrize("index", [0, 1, 2])
def test_lmcache_servers_match_seed_004s_launcher(node, index):
    n = gpu_node(node, LMCACHE_GPU, SEED_ENDPOINTS, uverbs=1)
    head, words = run_endpoint(n, index)
    seed = shlex.split(SEED_LAUNCH[index].replace("\\\n", " "))
    s_env = dict(w.split("=", 1) for w in seed[:seed.index("vllm")])
    # The seed's environment; CUDA_VISIBLE_DEVICES=N is docker's --gpus "device=N" (the container sees one GPU, as
    # the seed's server does), the config file the one generated for this endpoint.
    assert head[head.index("--gpus") + 1] == f'"device={s_env.pop("CUDA_VISIBLE_DEVICES")}"'
    s_env["LMCACHE_CONFIG_FILE"] = f"/data/lmcache/endpoint-{index}.yaml"
    assert env_of(head) == {**s_env, "PYTHONHASHSEED": "0",
                            "VLLM_CACHE_ROOT": f"/data/compiled/{compiled_key(n.values)}"}
    # The seed's server words, the model staged locally and served under its id, plus the deployment's shapes.
    ours = list(words)
    assert ours[:4] == ["serve", "/data/models/meta-llama/Llama-3.1-8B-Instruct", "--served-model-name",
                        "meta-llama/Llama-3.1-8B-Instruct"]
    ours[1:4] = ["meta-llama/Llama-3.1-8B-Instruct"]
    shapes = ["--tensor-parallel-size", "1", "--max-model-len", "8192", "--max-num-seqs", "8"]
    at = ours.index("--tensor-parallel-size")
    assert ours[at:at + 6] == shapes
    del ours[at:at + 6]
    assert ours == seed[seed.index("serve"):]  # the kv-transfer-config byte for byte


def lmcache_yaml(n, index):
    n.run("di-run", "prepare", "vllm", str(index))
    return (n.root / "data" / "lmcache" / f"endpoint-{index}.yaml").read_text()


def test_lmcache_configs_keep_the_seeds_settings_in_the_xpyd_layout(node):
    import yaml
    n = gpu_node(node, LMCACHE_GPU, SEED_ENDPOINTS, uverbs=1)
    sender, receiver = yaml.safe_load(lmcache_yaml(n, 1)), yaml.safe_load(lmcache_yaml(n, 2))
    for ours, seed in ((sender, yaml.safe_load(SEED_PREFILLER_YAML)), (receiver, yaml.safe_load(SEED_DECODER_YAML))):
        # Seed keys kept as they are: no CPU or disk tier, no remote serde; its buffer as pd_buffer_*.
        for key in ("local_cpu", "max_local_cpu_size", "max_local_disk_size", "remote_serde"):
            assert ours[key] == seed[key], key
        assert (ours["pd_buffer_size"], ours["pd_buffer_device"]) == (seed["nixl_buffer_size"], seed["nixl_buffer_device"])
        assert ours["pd_role"] == seed["nixl_role"]
        # LMCache's xpyd example (examples/disagg_prefill/xpyd/configs/*.yaml): enable_pd, transfer_channel "nixl".
        assert ours["enable_pd"] is True and ours["transfer_channel"] == "nixl" and ours["nixl_backends"] == ["UCX"]
    # lmcache-prefiller-config.yaml@a970cea6: pd_proxy_host/pd_proxy_port 7500; the proxy is on the control host.
    assert (sender["pd_proxy_host"], sender["pd_proxy_port"]) == ("10.42.0.10", 7500)
    # lmcache-decoder-1-config.yaml@bb3af27e: pd_peer_host, pd_peer_init_port, pd_peer_alloc_port; ports from the
    # decode endpoint's HTTP port as the proxy derives them (contract Decisions: PORT + 1000, PORT + 2000).
    assert (receiver["pd_peer_host"], receiver["pd_peer_init_port"], receiver["pd_peer_alloc_port"]) == (
        "10.42.1.5", 9200, 10200)
    assert "pd_peer_host" not in sender and "pd_proxy_host" not in receiver


def test_lmcache_receiver_ports_per_tp_rank(node):
    import yaml
    n = gpu_node(node, {**LMCACHE_GPU, "DI_TENSOR_PARALLEL": "2"}, "prefill:0-1:8100 decode:2-3:8200 decode:4-5:8201")
    assert yaml.safe_load(lmcache_yaml(n, 2))["pd_peer_init_port"] == [9201, 9301]
    assert yaml.safe_load(lmcache_yaml(n, 2))["pd_peer_alloc_port"] == [10201, 10301]


def test_lmcache_pythonhashseed_follows_node_env(node):
    # Seed L87-91: "ensure all processes use the same PYTHONHASHSEED"; the stack writes one value per deployment.
    n = gpu_node(node, {**LMCACHE_GPU, "DI_PYTHONHASHSEED": "1234"}, SEED_ENDPOINTS)
    head, _ = run_endpoint(n, 2)
    assert env_of(head)["PYTHONHASHSEED"] == "1234"
