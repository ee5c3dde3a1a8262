"""The exact `docker run` each unit executes, per engine and role, against the Neuron tutorials' commands."""

from __future__ import annotations

import hashlib
import json
import shlex

import pytest

from model import node_values
from tests.userdata.conftest import INSTANCE_ID, SCRIPTS, SEED_IMAGE, engine_node, find_fleet

IMAGE = SEED_IMAGE


def compiled_key(values) -> str:
    model, image, tp = values["DI_MODEL_ID"], values["DI_IMAGE"], values["DI_TENSOR_PARALLEL"]
    batch, seq = values["DI_MAX_NUM_SEQS"], values["DI_MAX_MODEL_LEN"]
    digest = hashlib.sha256(f"{model}|{image}|{tp}|{batch}|{seq}".encode()).hexdigest()[:12]
    return f"{model.split('/')[-1]}-tp{tp}-b{batch}-s{seq}-{digest}"


def docker_head(node, *, index, uverbs):
    """What every endpoint container gets: --init so tini forwards SIGTERM, host network, the slice the IMDS rule
    matches, EFA devices, the accelerator's devices (the legacy engine: --privileged, as its tutorial), logs, data."""
    devices = [w for i in range(uverbs) for w in ("--device", f"/dev/infiniband/uverbs{i}")]
    if node.values["DI_ENGINE"] == "neuron-connector":
        accelerator = ["--privileged"]
    else:
        count = int(node.values["DI_EXPECTED_NEURON_DEVICES"])
        accelerator = ["--cap-add=IPC_LOCK", *[f"--device=/dev/neuron{i}" for i in range(count)]]
    return ["run", "--rm", "--init", "--no-healthcheck", "--name", f"di-vllm-{index}", "--network", "host",
            "--cgroup-parent=di-containers.slice", *devices, *accelerator, "--shm-size=10g",
            "--log-driver", "awslogs", "--log-opt", "awslogs-region=us-east-2",
            "--log-opt", "awslogs-group=/distack/test/containers",
            "--log-opt", f"awslogs-stream={node.values['DI_FLEET']}/{INSTANCE_ID}/vllm-{index}",
            "-v", f"{node.root / 'data'}:/data"]


def legacy_expected(node, *, index, cores, env_extra=(), uverbs=2):
    """Seed 000's container, with the server as the entrypoint instead of `bash -c "exec python3 ..."`."""
    return [*docker_head(node, index=index, uverbs=uverbs),
            "-e", f"NEURON_RT_VISIBLE_CORES={cores}",
            "-e", f"NEURON_COMPILED_ARTIFACTS=/data/compiled/{compiled_key(node.values)}",
            *env_extra, "--entrypoint", "python3", IMAGE]


def server_args(*, model, tp, batch, seq, port, kv=None):
    """The tutorial's `python3 -m vllm.entrypoints.openai.api_server` words (seed 000 L124-133), model staged
    locally, after the entrypoint `python3`."""
    args = ["-m", "vllm.entrypoints.openai.api_server", "--model", f"/data/models/{model}",
            "--served-model-name", model, "--max-num-seqs", str(batch), "--max-model-len", str(seq),
            "--tensor-parallel-size", str(tp), "--device", "neuron"]
    if kv is not None:
        args += ["--speculative-max-model-len", str(seq), "--override-neuron-config", "{}",
                 "--kv-transfer-config", kv]
    else:
        args += ["--override-neuron-config", "{}"]
    return args + ["--port", str(port)]


def run_endpoint(node, index):
    node.run("di-run", "run", "vllm", str(index))
    (argv,) = node.docker_runs()
    image = argv.index(node.values["DI_IMAGE"])
    return argv[:image + 1], argv[image + 1:]


# ---------------------------------------------------------------------------------------------- neuron-connector


@pytest.mark.parametrize("index,cores,port,kv_role", [
    (0, "0-15", 8000, "kv_producer"),
    (1, "16-31", 8001, "kv_consumer"),
])
def test_legacy_colocated_1p1d_endpoints_on_trn1(node, index, cores, port, kv_role):
    n = engine_node(node, "neuron-connector", "colocated", instance="trn1")
    head, words = run_endpoint(n, index)
    # trn1 has no LNC: neither LNC variable is set.
    assert head == legacy_expected(n, index=index, cores=cores)
    kv = words[words.index("--kv-transfer-config") + 1]
    assert json.loads(kv) == {"kv_connector": "NeuronConnector", "kv_role": kv_role, "kv_buffer_size": 1e11,
                              "etcd": "10.42.0.10:8989"}
    assert words == server_args(model="meta-llama/Llama-3.1-8B-Instruct", tp=16, batch=8, seq=8192, port=port, kv=kv)


@pytest.mark.parametrize("role,kv_role", [("prefill", "kv_producer"), ("decode", "kv_consumer")])
def test_legacy_prefill_and_decode_workers_match_the_di_tutorial(node, role, kv_role):
    # Seed 000 L112-133 (prefill) and L155-176 (decode): TP 64, batch 8, 8192, kv_buffer_size 2e11, etcd on :8989.
    n = engine_node(node, "neuron-connector", role, instance="trn2", uverbs=16)
    head, words = run_endpoint(n, 0)
    # LNC on trn2: what the NxDI tutorials set and what runtime and compiler read (logical-neuroncore-config.rst).
    assert head == legacy_expected(n, index=0, cores="0-63", uverbs=16,
                                   env_extra=("-e", "NEURON_RT_VIRTUAL_CORE_SIZE=2", "-e", "NEURON_LOGICAL_NC_CONFIG=2"))
    kv = json.dumps({"kv_connector": "NeuronConnector", "kv_role": kv_role, "kv_buffer_size": 2e11,
                     "etcd": "10.42.0.10:8989"}, separators=(",", ":")).replace("200000000000.0", "2e+11")
    assert words == server_args(model="meta-llama/Llama-3.3-70B-Instruct", tp=64, batch=8, seq=8192, port=8000, kv=kv)
    # The seed's own words, after its shell expanded them: the same server arguments, the model id for --model.
    seed = shlex.split("""python3 -m vllm.entrypoints.openai.api_server --model meta-llama/Llama-3.3-70B-Instruct
        --max-num-seqs 8 --max-model-len 8192 --tensor-parallel-size 64 --device neuron
        --speculative-max-model-len 8192 --override-neuron-config '{}'
        --kv-transfer-config '{"kv_connector":"NeuronConnector","kv_role":"%s","kv_buffer_size":2e11,"etcd":"10.42.0.10:8989"}'
        --port 8000""" % kv_role)
    ours = ["python3", *words]
    del ours[ours.index("--served-model-name"):ours.index("--served-model-name") + 2]
    ours[ours.index("--model") + 1] = "meta-llama/Llama-3.3-70B-Instruct"
    assert [w for w in ours if w != kv] == [w for w in seed if not w.startswith('{"kv_connector"')]
    assert json.loads(kv) == json.loads(seed[seed.index("--kv-transfer-config") + 1])


@pytest.mark.parametrize("lnc_env", [True, False])
def test_legacy_standard_mode_is_the_tutorials_baseline_server(node, lnc_env):
    # baseline_server.sh (seed 000 L257-302): `export NEURON_RT_ASYNC_EXEC_MAX_INFLIGHT_REQUESTS=2`, no KV connector.
    n = engine_node(node, "neuron-connector", "standard")
    if not lnc_env:
        n.override(DI_INSTANCE_TYPE="trn1.32xlarge", DI_LNC_APPLIES="0")
    cores, port = n.values["DI_ENDPOINTS"].split()[1].split(":")[1:]
    head, words = run_endpoint(n, 1)
    lnc = ("-e", "NEURON_RT_VIRTUAL_CORE_SIZE=2", "-e", "NEURON_LOGICAL_NC_CONFIG=2") if lnc_env else ()
    assert head == legacy_expected(n, index=1, cores=cores,
                                   env_extra=(*lnc, "-e", "NEURON_RT_ASYNC_EXEC_MAX_INFLIGHT_REQUESTS=2"))
    v = n.values
    assert words == server_args(model=v["DI_MODEL_ID"], tp=v["DI_TENSOR_PARALLEL"], batch=v["DI_MAX_NUM_SEQS"],
                                seq=v["DI_MAX_MODEL_LEN"], port=port)


# ---------------------------------------------------------------------------------------------------------- nixl

# vllm-neuron/docs/tutorials/tutorial-di-1p1d-xpyd.md (aws-neuron-sdk 81ce03ae), verbatim. Prefill L141-169:
TUTORIAL_PREFILL = """NEURON_VISIBLE_DEVICES=0-3 VLLM_NIXL_SIDE_CHANNEL_PORT=5559 vllm serve "$MODEL" \
    --port 8100 \
    --tensor-parallel-size 4 \
    --data-parallel-size 1 \
    --enable-expert-parallel \
    --dtype bfloat16 \
    --max-num-seqs 1 \
    --max-model-len 16384 \
    --max-num-batched-tokens 8192 \
    --no-disable-hybrid-kv-cache-manager \
    --hf-overrides '{"quantization_config": {}}' \
    --kv-transfer-config '{"kv_connector": "NeuronNixlConnector", "kv_role": "kv_producer", "kv_buffer_device": "cuda", "kv_connector_extra_config": {"backends": ["LIBFABRIC"]}}' \
    --additional-config '{
        "neuron_config": {
            "quantization": "mxfp4",
            "ep_degree": 2,
            "kv_segment_size_buckets": [8192],
            "num_batched_tokens_buckets": [8192],
            "num_seqs_buckets": [1]
        }
    }'"""
# Decode L196-221:
TUTORIAL_DECODE = """NEURON_VISIBLE_DEVICES=32-63 VLLM_NIXL_SIDE_CHANNEL_PORT=5659 vllm serve "$MODEL" \
    --port 8200 \
    --tensor-parallel-size 8 \
    --data-parallel-size 4 \
    --enable-expert-parallel \
    --optimization-level 2 \
    --dtype bfloat16 \
    --max-num-seqs 4 \
    --max-model-len 16384 \
    --max-num-batched-tokens 8192 \
    --max-logprobs 0 \
    --no-disable-hybrid-kv-cache-manager \
    --hf-overrides '{"quantization_config": {}}' \
    --kv-transfer-config '{"kv_connector": "NeuronNixlConnector", "kv_role": "kv_consumer", "kv_buffer_device": "cuda", "kv_connector_extra_config": {"backends": ["LIBFABRIC"]}}' \
    --additional-config '{
        "neuron_config": {
            "quantization": "mxfp4",
            "embedding_dp_size": 4,
            "lm_head_dp_size": 4,
            "kv_segment_size_buckets": [8192],
            "num_batched_tokens_buckets": [8192],
            "num_seqs_buckets": [4]
        }
    }'"""
# The tutorial's GPT-OSS MoE flags, which a dense model's server leaves out ("--data-parallel-size /
# --enable-expert-parallel are only needed for DP+EP (MoE) decode; a basic decode server omits them", design
# doc L263-264; --dtype/--hf-overrides/--no-disable-hybrid-kv-cache-manager/--max-logprobs are GPT-OSS settings).
MOE_ONLY = {"--data-parallel-size", "--enable-expert-parallel", "--dtype", "--no-disable-hybrid-kv-cache-manager",
            "--hf-overrides", "--max-logprobs"}
VALUELESS = {"--enable-expert-parallel", "--no-disable-hybrid-kv-cache-manager"}


def parse_tutorial(command):
    """(env, {flag: value}) of a tutorial `VAR=... vllm serve "$MODEL" --flag value ...` command."""
    words = shlex.split(command.replace("\\\n", " "))
    env = dict(w.split("=", 1) for w in words[:words.index("vllm")])
    flags, rest = {}, words[words.index("serve") + 2:]
    while rest:
        flag = rest.pop(0)
        flags[flag] = None if flag in VALUELESS else rest.pop(0)
    return env, flags


def parse_ours(words):
    env = dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "-e")
    return env


@pytest.mark.parametrize("role,tutorial,index,tp,seqs", [
    ("prefill", TUTORIAL_PREFILL, 0, "4", "1"),
    ("decode", TUTORIAL_DECODE, 1, "8", "4"),
])
def test_nixl_colocated_endpoints_match_the_di_tutorial(node, role, tutorial, index, tp, seqs):
    """The tutorial's single-node 1P1D servers, given the tutorial's own values through node.env."""
    t_env, t_flags = parse_tutorial(tutorial)
    n = engine_node(node, "nixl", "colocated", uverbs=16)
    port, cores = t_flags["--port"], t_env["NEURON_VISIBLE_DEVICES"]
    neuron_config = json.loads(t_flags["--additional-config"])["neuron_config"]
    endpoints = ["prefill:0-3:8100", "decode:32-63:8200"]
    # The tutorial's side-channel ports 5559/5659: one base, endpoints 100 apart (room for a listener per TP rank).
    n.override(DI_ENDPOINTS=" ".join(endpoints), DI_TENSOR_PARALLEL=tp, DI_MAX_NUM_SEQS=seqs,
               DI_MAX_MODEL_LEN=t_flags["--max-model-len"], DI_MAX_NUM_BATCHED_TOKENS=t_flags["--max-num-batched-tokens"],
               DI_KV_CONNECTOR="NeuronNixlConnector", DI_NIXL_SIDE_CHANNEL_BASE_PORT="5559",
               DI_BLOCK_SIZE="", DI_OPTIMIZATION_LEVEL=t_flags.get("--optimization-level", ""),
               DI_NEURON_CONFIG=json.dumps(neuron_config, separators=(",", ":")),
               DI_COMPILE_TIMEOUT_SECONDS="2400", DI_READY_TIMEOUT_SECONDS="1800",
               DI_EXECUTE_MODEL_TIMEOUT_SECONDS="1200")
    head, words = run_endpoint(n, index)
    env = parse_ours(head)
    # Same cores and side-channel port as the tutorial; host = this node's private IP (the tutorial's 0.0.0.0 would
    # reach the proxy as remote_host); the environment of tutorial L105-114.
    assert env == {"NEURON_VISIBLE_DEVICES": cores,
                   "VLLM_NIXL_SIDE_CHANNEL_HOST": "10.42.1.5",
                   "VLLM_NIXL_SIDE_CHANNEL_PORT": t_env["VLLM_NIXL_SIDE_CHANNEL_PORT"],
                   "FI_EFA_ENABLE_SHM_TRANSFER": "0",
                   "VLLM_NEURON_COMPILATION_TIMEOUT": "2400", "VLLM_ENGINE_READY_TIMEOUT_S": "1800",
                   "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "1200",
                   "NEURON_LOGICAL_NC_CONFIG": "2",
                   "VLLM_CACHE_ROOT": f"/data/compiled/{compiled_key(n.values)}"}
    assert head[-3:] == ["--entrypoint", "vllm", n.values["DI_IMAGE"]]
    model = n.values["DI_MODEL_ID"]
    assert words[:4] == ["serve", f"/data/models/{model}", "--served-model-name", model]
    ours = dict(zip(words[4::2], words[5::2]))
    # Every flag we pass is the tutorial's, with the tutorial's value (JSON compared as JSON) ...
    for flag, value in ours.items():
        if flag in ("--kv-transfer-config", "--additional-config"):
            assert json.loads(value) == json.loads(t_flags[flag]), flag
        else:
            assert value == t_flags[flag], flag
    assert ours["--kv-transfer-config"] == t_flags["--kv-transfer-config"]  # byte for byte, as in the tutorial
    # ... and every tutorial flag we leave out is a GPT-OSS MoE one.
    assert set(t_flags) - set(ours) == MOE_ONLY & set(t_flags)


def test_nixl_prod_prefill_endpoint_exact_vector(node):
    """One whole vector as it runs on a prod-style prefill worker (four TP-16 endpoints on a trn2.48xlarge)."""
    n = engine_node(node, "nixl", "prefill", instance="trn2", uverbs=16)
    v = n.values
    cores, port = v["DI_ENDPOINTS"].split()[2].split(":")[1:]
    head, words = run_endpoint(n, 2)
    optional = {"DI_COMPILE_TIMEOUT_SECONDS": "VLLM_NEURON_COMPILATION_TIMEOUT",
                "DI_READY_TIMEOUT_SECONDS": "VLLM_ENGINE_READY_TIMEOUT_S",
                "DI_EXECUTE_MODEL_TIMEOUT_SECONDS": "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"}
    assert head == [*docker_head(n, index=2, uverbs=16),
                    "-e", f"NEURON_VISIBLE_DEVICES={cores}", "-e", "VLLM_NIXL_SIDE_CHANNEL_HOST=10.42.1.5",
                    "-e", f"VLLM_NIXL_SIDE_CHANNEL_PORT={int(v['DI_NIXL_SIDE_CHANNEL_BASE_PORT']) + 200}",
                    "-e", "FI_EFA_ENABLE_SHM_TRANSFER=0",
                    *[w for k, name in optional.items() if v[k] for w in ("-e", f"{name}={v[k]}")],
                    "-e", f"NEURON_LOGICAL_NC_CONFIG={v['DI_LNC']}",
                    "-e", f"VLLM_CACHE_ROOT=/data/compiled/{compiled_key(v)}",
                    "--entrypoint", "vllm", v["DI_IMAGE"]]
    expected = ["serve", f"/data/models/{v['DI_MODEL_ID']}", "--served-model-name", v["DI_MODEL_ID"],
                "--port", port, "--tensor-parallel-size", v["DI_TENSOR_PARALLEL"],
                "--max-model-len", v["DI_MAX_MODEL_LEN"], "--max-num-seqs", v["DI_MAX_NUM_SEQS"],
                "--max-num-batched-tokens", v["DI_MAX_NUM_BATCHED_TOKENS"]]
    if v["DI_BLOCK_SIZE"]:
        expected += ["--block-size", v["DI_BLOCK_SIZE"]]
    if v["DI_OPTIMIZATION_LEVEL"]:
        expected += ["--optimization-level", v["DI_OPTIMIZATION_LEVEL"]]
    if v["DI_NEURON_CONFIG"]:
        expected += ["--additional-config", '{"neuron_config": %s}' % v["DI_NEURON_CONFIG"]]
    # The design doc's generic TP server (disaggregated-inference.md L248-278), kv_role per the endpoint's role.
    expected += ["--kv-transfer-config",
                 '{"kv_connector": "%s", "kv_role": "kv_producer", "kv_buffer_device": "cuda", '
                 '"kv_connector_extra_config": {"backends": ["LIBFABRIC"]}}' % v["DI_KV_CONNECTOR"]]
    assert words == expected


def test_nixl_empty_optional_values_leave_vllm_defaults(node):
    n = engine_node(node, "nixl", "prefill", instance="trn2", uverbs=16)
    n.override(DI_BLOCK_SIZE="", DI_OPTIMIZATION_LEVEL="", DI_NEURON_CONFIG="", DI_COMPILE_TIMEOUT_SECONDS="",
               DI_READY_TIMEOUT_SECONDS="", DI_EXECUTE_MODEL_TIMEOUT_SECONDS="")
    head, words = run_endpoint(n, 0)
    assert not {"--block-size", "--optimization-level", "--additional-config"} & set(words)
    assert not [w for w in head if "TIMEOUT" in w]


def test_nixl_standard_mode_serves_without_kv_transfer(node):
    n = engine_node(node, "nixl", "standard", uverbs=16)
    head, words = run_endpoint(n, 1)
    assert "--kv-transfer-config" not in words and words[0] == "serve"
    env = parse_ours(head)
    assert env["VLLM_NIXL_SIDE_CHANNEL_PORT"] == str(int(n.values["DI_NIXL_SIDE_CHANNEL_BASE_PORT"]) + 100)
    assert "NEURON_RT_ASYNC_EXEC_MAX_INFLIGHT_REQUESTS" not in env


def test_colocated_nixl_endpoints_get_distinct_side_channel_ports(node):
    n = engine_node(node, "nixl", "colocated", uverbs=16)
    ports = []
    for index in (0, 1):
        n.run("di-run", "run", "vllm", str(index))
        ports.append(parse_ours(n.docker_runs()[-1])["VLLM_NIXL_SIDE_CHANNEL_PORT"])
    base = int(n.values["DI_NIXL_SIDE_CHANNEL_BASE_PORT"])
    assert ports == [str(base), str(base + 100)]
    # vLLM may listen on port + tp_rank per TP rank: endpoint 0's ranks stay below endpoint 1's port.
    assert int(ports[0]) + int(n.values["DI_TENSOR_PARALLEL"]) <= int(ports[1])


def test_an_unknown_engine_names_the_known_ones(node):
    n = engine_node(node, "nixl", "colocated")
    n.override(DI_ENGINE="vllm-gpu")
    proc = n.run("di-run", "run", "vllm", "0", check=False)
    assert proc.returncode != 0
    assert "DI_ENGINE='vllm-gpu'" in proc.stderr and "known: lmcache neuron-connector nixl" in proc.stderr
    assert n.docker_runs() == []


def test_control_host_etcd_serves_clients_over_https_with_client_certificates_on_the_fixed_address(node):
    n = node("prod")
    n.run("di-run", "run", "etcd")
    (argv,) = n.docker_runs()
    tls = n.env["DI_ETCD_DIR"]
    assert argv == ["run", "--rm", "--name", "di-etcd", "--network", "host",
                    "--log-driver", "awslogs", "--log-opt", "awslogs-region=us-east-2",
                    "--log-opt", "awslogs-group=/distack/test/containers",
                    "--log-opt", f"awslogs-stream=control/{INSTANCE_ID}/etcd",
                    "-v", f"{tls}:{tls}:ro",
                    "-v", f"{n.root / 'etcd'}/data:/etcd-data", n.values["DI_ETCD_IMAGE"], "/usr/local/bin/etcd",
                    "--data-dir=/etcd-data",
                    "--listen-client-urls=https://0.0.0.0:8989",
                    "--advertise-client-urls=https://10.42.0.10:8989",
                    "--client-cert-auth", f"--trusted-ca-file={tls}/ca.pem", f"--cert-file={tls}/server.pem",
                    f"--key-file={tls}/server-key.pem",
                    "--auto-compaction-mode=periodic", "--auto-compaction-retention=1h",
                    "--quota-backend-bytes=2147483648", "--listen-metrics-urls=http://127.0.0.1:8990",
                    "--listen-peer-urls=http://127.0.0.1:21323",
                    "--initial-advertise-peer-urls=http://127.0.0.1:21323",
                    "--initial-cluster=default=http://127.0.0.1:21323",
                    "--name=default"]


def test_the_legacy_engines_etcd_keeps_plain_http_for_neuronconnector(node):
    # NeuronConnector and neuron-proxy-server have no TLS or credential option: their etcd stays as in the tutorial.
    n = node(find_fleet(engine="neuron-connector", role="prefill")[0])
    n.run("di-run", "run", "etcd")
    (argv,) = n.docker_runs()
    assert [a for a in argv if a.startswith("--listen-client-urls")] == ["--listen-client-urls=http://0.0.0.0:8989"]
    assert not [a for a in argv if "cert" in a or a.endswith(":ro")]


def test_the_legacy_engines_members_replicate_over_tls_while_its_clients_stay_plain(node):
    # Its three members: the client port is NeuronConnector's plain HTTP, the peer port is the members' alone.
    n = node(find_fleet(engine="neuron-connector", role="prefill")[0])
    assert n.values["DI_ETCD_PEER_TLS"] == "1"
    slots = "eni-0,vol-0,10.42.0.20 eni-1,vol-1,10.42.0.21 eni-2,vol-2,10.42.0.22"
    n.override(DI_CONTROL_SLOTS=slots)
    member_env = n.root / "etc" / "member.env"  # as control.sh claim_member leaves it (lib/members.sh use_slot)
    member_env.write_text("DI_ETCD_MEMBER=m2\nDI_CONTROL_ENI=eni-2\nDI_ETCD_VOLUME=vol-2\nDI_CONTROL_ADDRESS=10.42.0.22\n")
    n.run("di-run", "run", "etcd", DI_MEMBER_ENV=str(member_env))
    (argv,) = n.docker_runs()
    tls = n.env["DI_ETCD_DIR"]
    assert [a for a in argv if a.startswith("--listen-client-urls")] == ["--listen-client-urls=http://0.0.0.0:8989"]
    assert not [a for a in argv if a in ("--client-cert-auth",) or a.startswith(("--cert-file", "--trusted-ca"))]
    assert f"{tls}:{tls}:ro" in argv
    assert "--listen-peer-urls=https://0.0.0.0:21323" in argv
    assert "--initial-advertise-peer-urls=https://10.42.0.22:21323" in argv
    assert ("--initial-cluster=m0=https://10.42.0.20:21323,m1=https://10.42.0.21:21323,"
            "m2=https://10.42.0.22:21323") in argv
    assert argv[-5:] == ["--peer-client-cert-auth", f"--peer-trusted-ca-file={tls}/peer-ca.pem",
                         f"--peer-cert-file={tls}/peer.pem", f"--peer-key-file={tls}/peer-key.pem",
                         "--peer-cert-allowed-cn=di-etcd-peer"]


def test_control_host_proxy_is_the_dlc_neuron_proxy_server(node):
    n = node(find_fleet(engine="neuron-connector", role="prefill")[0])
    n.run("di-run", "run", "proxy")
    (argv,) = n.docker_runs()
    assert argv == ["run", "--rm", "--name", "di-proxy", "--network", "host", "--shm-size=10g",
                    "--cgroup-parent=di-containers-control.slice", "--log-driver", "awslogs", "--log-opt", "awslogs-region=us-east-2",
                    "--log-opt", "awslogs-group=/distack/test/containers",
                    "--log-opt", f"awslogs-stream=control/{INSTANCE_ID}/proxy",
                    "-e", "ETCD_IP=10.42.0.10", "-e", "ETCD_PORT=8989", n.values["DI_IMAGE"],
                    "bash", "-c", "exec neuron-proxy-server --etcd $ETCD_IP:$ETCD_PORT"]
    # The seed's image, through the deployment's ECR pull-through cache: same repository path and tag.
    assert n.values["DI_IMAGE"].endswith("/" + IMAGE.removeprefix("public.ecr.aws/"))
    assert n.values["DI_UPSTREAM_IMAGE"] == IMAGE


def test_the_proxy_container_is_bounded_and_kept_from_instance_metadata(node):
    """No --privileged; the control slice (a child of the one the IMDS rule matches, with a memory bound) exists and
    the rule is in place before the container starts."""
    n = node(find_fleet(engine="neuron-connector", role="prefill")[0])
    n.run("di-run", "run", "proxy")
    calls = n.calls()
    (argv,) = n.docker_runs()
    assert "--privileged" not in argv
    rule = ["iptables", "-w", "-I", "OUTPUT", "1", "-d", "169.254.169.254/32", "-m", "cgroup",
            "--path", "di.slice/di-containers.slice", "-j", "REJECT"]
    assert calls.index(["systemctl", "start", "di-containers-control.slice"]) < calls.index(rule)
    assert calls.index(rule) < next(i for i, c in enumerate(calls) if c[:2] == ["docker", "run"])
    unit = (n.root / "systemd" / "di-containers-control.slice").read_text()
    assert "MemoryMax=50%" in unit.splitlines()


def test_a_changed_slice_unit_is_installed_again(node):
    n = node(find_fleet(engine="neuron-connector", role="prefill")[0])
    installed = n.root / "systemd" / "di-containers-control.slice"
    installed.parent.mkdir(parents=True, exist_ok=True)
    installed.write_text("[Slice]\nMemoryMax=90%\n")
    n.run("di-run", "run", "proxy")
    assert installed.read_text() == (SCRIPTS / "units" / "di-containers-control.slice").read_text()
    assert ["systemctl", "daemon-reload"] in n.calls()


def test_the_proxy_container_does_not_start_without_the_imds_rule(node):
    blocked = node(find_fleet(engine="neuron-connector", role="prefill")[0])
    blocked.set("iptables-fail", "1")
    proc = blocked.run("di-run", "run", "proxy", check=False)
    assert proc.returncode != 0 and "instance metadata" in proc.stderr
    assert not blocked.docker_runs()


def test_prepare_removes_a_stale_kv_lock_and_the_old_container(node):
    n = node("dev", "colocated")
    lock = n.root / "nrt_kv_store_server.lock"
    lock.write_text("held by an earlier run")
    n.run("di-run", "prepare", "vllm", "1")
    assert not lock.exists()
    assert n.calls("docker") == [["rm", "-f", "di-vllm-1"]]


def test_unknown_endpoint_index_fails_before_docker(node):
    n = node("dev", "colocated")
    proc = n.run("di-run", "run", "vllm", "7", check=False)
    assert proc.returncode != 0 and "no endpoint 7" in proc.stderr
    assert n.docker_runs() == []
