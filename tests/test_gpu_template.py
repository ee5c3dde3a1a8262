"""GPU fleets (issue 15): the synthesized gpu-xpyd template (EFA layout of a p5.48xlarge, security groups, worker
AMI, image), the node.env each GPU endpoint receives, and the worker-to-proxy port lmcache adds.

Only gpu-xpyd is synthesized (once per run, through the shared cache of tests/conftest.py); gpu-dev and gpu-lmcache
are loaded and checked by the rules in tests/test_config.py, and their node.env is computed here without synthesis.
cfn-lint on gpu-xpyd costs ~6 s (its 33 interfaces per launch template), over this file's budget: it runs where
tests/test_lint.py's parametrization includes gpu-xpyd.
"""

from __future__ import annotations

import pytest

from model import catalog, images, naming, node_values
from model.engines import lmcache
from model.loader import load_environment
from tests.test_template import launch_templates, resources, worker_group_id

REFS = node_values.DeploymentRefs(stack_name="di-x", control_address="10.42.0.10", bucket_name="b",
                                  node_log_group="/n", container_log_group="/c")


@pytest.fixture(scope="module")
def gpu_xpyd(synth):
    return synth("gpu-xpyd")


def test_p5_gets_an_ena_primary_and_one_efa_only_interface_on_each_of_its_32_cards(gpu_xpyd):
    data = launch_templates(gpu_xpyd.template_dict)["p5.48xlarge"]
    nics = data["NetworkInterfaces"]
    primary = [n for n in nics if n["InterfaceType"] == "interface"]
    efa = [n for n in nics if n["InterfaceType"] == "efa-only"]
    assert [(n["NetworkCardIndex"], n["DeviceIndex"]) for n in primary] == [(0, 0)]
    # p5.48xlarge: 32 network cards (model/catalog.py, from the VPC CNI's DescribeInstanceTypes data).
    assert sorted(n["NetworkCardIndex"] for n in efa) == list(range(32))
    assert [(n["NetworkCardIndex"], n["DeviceIndex"]) for n in efa if n["NetworkCardIndex"] == 0] == [(0, 1)]
    assert all(n["DeviceIndex"] == 0 for n in efa if n["NetworkCardIndex"] > 0)
    assert len(nics) == 33 and primary[0]["AssociatePublicIpAddress"] is False
    assert all("Groups" in n and "SubnetId" in n and "AssociatePublicIpAddress" not in n for n in efa)
    assert "SecurityGroupIds" not in data


def test_gpu_workers_boot_the_deep_learning_base_gpu_ami_and_pull_the_vllm_image(gpu_xpyd):
    data = launch_templates(gpu_xpyd.template_dict)["p5.48xlarge"]
    assert data["ImageId"] == f"resolve:ssm:{images.GPU_DLAMI_PARAMETER}"
    assert images.GPU_DLAMI_PARAMETER == \
        "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"
    # AWS's vLLM DLC, whose release tests NIXL's LIBFABRIC backend; by tag (no source gives its digest).
    assert gpu_xpyd.config.image == "public.ecr.aws/deep-learning-containers/vllm:0.27.1-gpu-py312-ec2"


def test_gpu_workers_open_kv_ports_to_each_other_only_and_vllm_ports_to_the_proxy(gpu_xpyd):
    template = gpu_xpyd.template_dict
    group = {"Fn::GetAtt": [worker_group_id(template), "GroupId"]}
    ingress = [v["Properties"] for v in resources(template, "AWS::EC2::SecurityGroupIngress").values()
               if v["Properties"]["GroupId"] == group]
    # NIXL's side channel (5559+) and every KV port ride the all-traffic rule from the group itself.
    assert [r for r in ingress if r["IpProtocol"] == "-1"] == [
        {"IpProtocol": "-1", "GroupId": group, "SourceSecurityGroupId": group,
         "Description": "EFA and KV transfer between workers"}]
    others = [r for r in ingress if r["IpProtocol"] != "-1"]
    assert sorted((r["FromPort"], r["ToPort"]) for r in others) == [(8000, 8000), (8001, 8001)]
    assert all(r["SourceSecurityGroupId"] != group and "CidrIp" not in r for r in others)


def test_nixl_on_p5_endpoints_get_gpu_ranges_libfabric_and_the_gpu_counts():
    config = load_environment("gpu-xpyd")
    values = node_values.worker_values(config, "prefill", REFS)
    assert values["DI_ACCELERATOR"] == "gpu"
    assert values["DI_ENDPOINTS"] == "prefill:0-3:8000 prefill:4-7:8001"
    assert (values["DI_EXPECTED_GPUS"], values["DI_EXPECTED_EFA_INTERFACES"]) == ("8", "32")
    # Neuron-only values are present and empty (the node contract: empty = not this accelerator).
    assert (values["DI_LNC"], values["DI_EXPECTED_NEURON_DEVICES"]) == ("", "")
    # GPUDirect RDMA over EFA on p5: NIXL's LIBFABRIC backend; upstream NixlConnector, no hash seed needed.
    assert (values["DI_NIXL_BACKEND"], values["DI_KV_CONNECTOR"], values["DI_PYTHONHASHSEED"]) == (
        "LIBFABRIC", "NixlConnector", "")


def test_trainium_node_env_keeps_its_neuron_values_and_gains_the_accelerator():
    values = node_values.worker_values(load_environment("dev"), "colocated", REFS)
    assert (values["DI_ACCELERATOR"], values["DI_LNC"], values["DI_EXPECTED_NEURON_DEVICES"]) == ("neuron", "2", "16")
    assert (values["DI_EXPECTED_GPUS"], values["DI_NIXL_BACKEND"]) == ("", "LIBFABRIC")


def test_gpu_dev_is_single_node_nixl_over_ucx_on_the_cheap_type():
    config = load_environment("gpu-dev")
    values = node_values.worker_values(config, "colocated", REFS)
    assert values["DI_ENDPOINTS"] == "prefill:0-1:8000 decode:2-3:8001"
    # No GPUDirect RDMA on g6: UCX, vLLM's default NIXL backend.
    assert config.fleets["colocated"].instance_type == "g6.12xlarge"
    assert (values["DI_NIXL_BACKEND"], values["DI_EXPECTED_GPUS"]) == ("UCX", "4")


def test_gpu_lmcache_reproduces_seed_004_two_prefill_one_decode_on_one_instance():
    config = load_environment("gpu-lmcache")
    values = node_values.worker_values(config, "colocated", REFS)
    # Seed 004: prefillers on GPU 0 and 1 at ports 8100 and 8101, the decoder on GPU 2 at 8200.
    assert values["DI_ENDPOINTS"] == "prefill:0-0:8100 prefill:1-1:8101 decode:2-2:8200"
    # Seed 004: "export PYTHONHASHSEED=0"; nixl_buffer_size 1073741824, nixl_buffer_device "cuda".
    assert values["DI_PYTHONHASHSEED"] == "0"
    assert (values["DI_LMCACHE_NIXL_BUFFER_SIZE"], values["DI_LMCACHE_NIXL_BUFFER_DEVICE"]) == ("1073741824", "cuda")
    assert config.image == "docker.io/lmcache/vllm-openai:v0.3.9"
    # The receiver ports the proxy derives from a decode endpoint's port (contract: +1000/+2000, 100 per rank).
    assert (values["DI_LMCACHE_INIT_PORT_OFFSET"], values["DI_LMCACHE_ALLOC_PORT_OFFSET"],
            values["DI_LMCACHE_RANK_PORT_STRIDE"]) == ("1000", "2000", "100")
    assert lmcache.receiver_ports(8200, 2) == [9200, 9300, 10200, 10300]
    control = node_values.control_values(config, REFS, network_interface_id="eni-1", etcd_volume_id="vol-1")
    proxy = node_values.proxy_values(config, control)
    assert (proxy["DIPROXY_ENGINE"], proxy["DIPROXY_LMCACHE_DECODE_TP"], proxy["DIPROXY_LMCACHE_NOTIFY_PORT"]) == (
        "lmcache", "1", "7500")


def test_lmcache_senders_reach_the_proxy_notify_port_and_nothing_else_opens():
    import aws_cdk as cdk
    from aws_cdk import aws_ec2 as ec2
    from aws_cdk.assertions import Template

    from stacks.components.security import Security
    from model.config import NetworkConfig

    stack = cdk.Stack(cdk.App())
    vpc = ec2.Vpc.from_vpc_attributes(stack, "Vpc", vpc_id="vpc-1", availability_zones=["us-east-2a"])
    Security(stack, "Security", vpc=vpc, network=NetworkConfig(), vllm_ports=[8100],
             engine_control_ports=lmcache.ENGINE.control_ports)
    template = Template.from_stack(stack).to_json()
    ports = sorted(v["Properties"]["FromPort"] for v in resources(template, "AWS::EC2::SecurityGroupIngress").values()
                   if v["Properties"]["IpProtocol"] == "tcp")
    assert ports == sorted([8100, naming.ETCD_CLIENT_PORT, lmcache.PROXY_NOTIFY_PORT])


def test_gpu_catalog_facts_and_device_queries_work_for_both_accelerators():
    p5, p5en, g6 = (catalog.WORKER_TYPES[n] for n in ("p5.48xlarge", "p5en.48xlarge", "g6.12xlarge"))
    assert [(t.gpus, t.gpu_memory_gib, t.network_cards, t.efa_interfaces) for t in (p5, p5en, g6)] == [
        (8, 80, 32, 32), (8, 141, 16, 16), (4, 24, 1, 1)]
    trn2 = catalog.WORKER_TYPES["trn2.48xlarge"]
    assert (trn2.devices(), trn2.devices(1), p5.devices()) == (64, 128, 8)
    assert (trn2.memory_gib_per_device(), p5.memory_gib_per_device()) == (24.0, 80.0)
    assert {t.accelerator for t in catalog.WORKER_TYPES.values()} == {"neuron", "gpu"}
