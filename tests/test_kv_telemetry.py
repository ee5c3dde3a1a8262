"""KV-transfer telemetry: the agent configuration collects what the new panels and alarms read (EFA counters
through the agent's efa input, NIXL counters and prompt tokens through its Prometheus input, DCGM on GPU fleets),
each alarm exists exactly where its signal does, and GPU nodes start the DCGM exporter the agent scrapes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from model import catalog
from model.loader import load_environment
from model.observability import agent_config, kv_telemetry
from tests.test_monitoring import collected, drawn, resources

ROOT = Path(__file__).resolve().parent.parent


def alarm_names(template: dict) -> set[str]:
    return {v["Properties"]["AlarmName"] for v in resources(template, "AWS::CloudWatch::Alarm").values()}


@pytest.mark.parametrize("env", ("prod", "gpu-xpyd", "gpu-dev", "tutorial"))
def test_kv_panels_and_alarms_read_what_a_collector_emits_and_exist_where_their_signal_does(synth, env):
    result = synth(env)
    template, config = result.template_dict, result.config
    read = drawn(template)
    assert not [m for m in read if m not in collected(config, template)]
    names = {name for _, name, _ in read}
    alarms = alarm_names(template)
    nixl = kv_telemetry.nixl_engine(config)
    assert (f"distack-{env}-nixl-transfer-failures" in alarms) == nixl
    assert (f"distack-{env}-nixl-metrics-missing" in alarms) == nixl
    assert (kv_telemetry.NIXL_FAILED_TRANSFERS in names) == nixl
    # TCP fallback only where KV should ride EFA RDMA (LIBFABRIC): not on g6 (UCX, cuda_ipc between local GPUs).
    assert (f"distack-{env}-kv-tcp-fallback" in alarms) == kv_telemetry.kv_over_efa(config)
    assert (env in ("prod", "gpu-xpyd")) == kv_telemetry.kv_over_efa(config)
    assert (f"distack-{env}-canary-mismatch" in alarms) == (nixl and config.proxy == "distack")
    if kv_telemetry.kv_over_efa(config):
        assert set(kv_telemetry.EFA_RDMA_BYTES) <= names
    # The proxy's handoff panel wherever it tracks handoffs; the alarm only where an EFA bound exists.
    shipped = nixl and config.proxy == "distack"
    assert (kv_telemetry.HANDOFF_TIME in names) == shipped
    assert (f"distack-{env}-kv-handoff-slow" in alarms) == (shipped and kv_telemetry.kv_over_efa(config))


def test_handoff_alarm_bound_is_a_prefill_endpoints_memory_over_the_instances_efa_bandwidth(synth):
    result = synth("prod")
    config = result.config
    (props,) = [v["Properties"] for v in resources(result.template_dict, "AWS::CloudWatch::Alarm").values()
                if v["Properties"]["AlarmName"] == "distack-prod-kv-handoff-slow"]
    (query,) = props["Metrics"]
    stat = query["MetricStat"]
    assert (stat["Metric"]["MetricName"], stat["Stat"], stat["Metric"]["Namespace"]) == (
        kv_telemetry.HANDOFF_TIME, "p99", "DiStack/Proxy")
    expected = 0.0
    for fleet in config.fleets.values():
        itype = catalog.WORKER_TYPES[fleet.instance_type]
        for ep in fleet.resolved_endpoints:
            if ep.role == "prefill":
                memory = (ep.last_core - ep.first_core + 1) * itype.memory_gib_per_device(fleet.lnc) * 2**30
                expected = max(expected, memory * 8 / (itype.efa_gbps * 1e9))
    assert props["Threshold"] == pytest.approx((expected + kv_telemetry.HANDOFF_ALLOWANCE_SECONDS) * 1000, abs=100)
    assert props["EvaluationPeriods"] == 3 and props["TreatMissingData"] == "notBreaching"


def test_fallback_alarm_fires_on_prompts_without_rdma_bytes_from_every_fleet(synth):
    result = synth("prod")
    (props,) = [v["Properties"] for v in resources(result.template_dict, "AWS::CloudWatch::Alarm").values()
                if v["Properties"]["AlarmName"] == "distack-prod-kv-tcp-fallback"]
    queries = {q["Id"]: q for q in props["Metrics"]}
    top = next(q for q in props["Metrics"] if q.get("ReturnData", True))
    assert top["Expression"].startswith("IF(FILL(tokens, 0) >= 1000 AND rdma < 1048576")
    stats = [q["MetricStat"]["Metric"] for q in queries.values() if "MetricStat" in q]
    efa = [m for m in stats if m["Namespace"] == "DiStack/Efa"]
    groups = {json.dumps(m["Dimensions"][0]["Value"]) for m in efa}
    assert len(groups) == len(result.config.fleets) and len(efa) == 4 * len(result.config.fleets)
    (tokens,) = [m for m in stats if m["MetricName"] == kv_telemetry.PROMPT_TOKENS]
    assert {d["Name"]: d["Value"] for d in tokens["Dimensions"]} == {"Deployment": "prod", "Role": "prefill"}
    assert props["EvaluationPeriods"] == 3 and props["TreatMissingData"] == "notBreaching"


def test_workers_with_efa_may_publish_the_efa_namespace_only_and_read_their_group_tag(synth):
    template = synth("prod").template_dict
    policies = [json.dumps(p["Properties"]["PolicyDocument"]) for p in resources(template, "AWS::IAM::Policy").values()
                if p["Properties"]["Roles"][0]["Ref"].startswith("WorkerRole")]
    text = "".join(policies)
    assert '"cloudwatch:namespace": "DiStack/Efa"' in text and "ec2:DescribeTags" in text


@pytest.mark.parametrize("env", ("prod", "gpu-xpyd"))
def test_agent_collects_efa_per_group_and_dcgm_on_gpu_fleets(env):
    config = load_environment(env)
    for fleet in config.fleets:
        files = agent_config.worker_agent(config, fleet)
        metrics = files.agent["metrics"]
        assert metrics["namespace"] == "DiStack/Efa"
        assert metrics["aggregation_dimensions"] == [["AutoScalingGroupName"]]
        assert metrics["append_dimensions"] == {"AutoScalingGroupName": "${aws:AutoScalingGroupName}"}
        assert set(metrics["metrics_collected"]["efa"]["measurement"]) >= set(kv_telemetry.EFA_RDMA_BYTES)
        jobs = {j["job_name"]: j for j in yaml.safe_load(files.scrape)["scrape_configs"]}
        assert ("dcgm" in jobs) == (env == "gpu-xpyd")
        if "dcgm" in jobs:
            assert jobs["dcgm"]["static_configs"][0]["targets"] == [f"127.0.0.1:{kv_telemetry.DCGM_PORT}"]
            assert set(jobs["dcgm"]["metric_relabel_configs"][0]["regex"].split("|")) == set(kv_telemetry.DCGM_METRICS)
        kept = set(jobs["vllm"]["metric_relabel_configs"][0]["regex"].split("|"))
        assert set(kv_telemetry.NIXL_COUNTERS) | {kv_telemetry.PROMPT_TOKENS} <= kept


def test_the_canary_runs_on_a_schedule_on_the_control_host_after_its_document(synth):
    template = synth("prod").template_dict
    (assoc_id, assoc), = resources(template, "AWS::SSM::Association").items()
    props = assoc["Properties"]
    assert props["Name"] == "di-prod-Canary" and props["ScheduleExpression"] == "rate(30 minutes)"
    assert props["Parameters"] == {"period": ["1800"]}
    assert {t["Key"]: t["Values"] for t in props["Targets"]} == {"tag:di:deployment": ["prod"],
                                                                  "tag:di:role": ["control"]}
    (doc_id,) = [k for k, v in resources(template, "AWS::SSM::Document").items() if v["Properties"]["Name"] ==
                 "di-prod-Canary"]
    assert doc_id in assoc["DependsOn"]


def test_gpu_nodes_start_the_dcgm_exporter_the_agent_scrapes(tmp_path):
    script = (ROOT / "userdata" / "accelerators" / "gpu.sh").read_text()
    assert f"DI_DCGM_EXPORTER_IMAGE:-{kv_telemetry.DCGM_IMAGE}}}" in script
    assert f"DI_DCGM_EXPORTER_PORT:-{kv_telemetry.DCGM_PORT}}}" in script
    calls = tmp_path / "docker.calls"
    probe = f'''
        log() {{ :; }}; metrics_fail() {{ echo "FAIL $*"; exit 1; }}; retry() {{ "$@"; }}
        docker() {{ printf '%s\\n' "$*" >>"{calls}"; }}
        . "{ROOT}/userdata/accelerators/gpu.sh"; accelerator_exporter
    '''
    subprocess.run(["bash", "-c", probe], check=True)
    run = [line for line in calls.read_text().splitlines() if line.startswith("run ")]
    assert len(run) == 1
    assert re.search(r"--gpus all --cap-add SYS_ADMIN -p 127\.0\.0\.1:9400:9400 " + re.escape(kv_telemetry.DCGM_IMAGE),
                     run[0])
