"""Intent of the dashboard and alarms: the metrics they read are the ones the proxy's shipper, Auto Scaling and
the nodes' bootstrap really emit, with this deployment's dimensions; every alarm notifies the deployment's topic."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from aws_cdk.assertions import Capture, Match

from diproxy import canary
from diproxy.shipper import metric_data
from diproxy.shipper.metric_data import PROXY_UP, RULES
from model import engines, naming
from model.observability import agent_config, kv_telemetry, upstream
from stacks.components import monitoring

ROOT = Path(__file__).resolve().parent.parent
# The dashboard-drawing tool lives in bench/ (a script, not a package).
_LAYOUT_SPEC = importlib.util.spec_from_file_location("dashboard_layout", ROOT / "bench" / "dashboard_layout.py")
layout = importlib.util.module_from_spec(_LAYOUT_SPEC)
_LAYOUT_SPEC.loader.exec_module(layout)

DISTACK_ENVS = ("dev", "prod", "xpyd", "baseline")
PROXY_METRICS = {rule.metric for rule in RULES} | {PROXY_UP} | set(canary.PUBLISHED)
AGENT_SCHEMA = ROOT / "model" / "observability" / "cloudwatch-agent-schema.json"


def test_the_stack_spells_the_shippers_names():
    assert (monitoring.DEPLOYMENT_DIMENSION, monitoring.PROXY_UP) == (metric_data.DEPLOYMENT_DIMENSION, PROXY_UP)
    assert naming.PROXY_METRICS_NAMESPACE == "DiStack/Proxy"


def resources(template: dict, kind: str) -> dict[str, dict]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def dashboard(template: dict) -> dict:
    """The dashboard body as JSON, each CloudFormation token spelt <Ref:ID> or <AWS::Region>."""
    (board,) = resources(template, "AWS::CloudWatch::Dashboard").values()
    body = board["Properties"]["DashboardBody"]
    parts = body["Fn::Join"][1] if isinstance(body, dict) else [body]
    text = "".join(p if isinstance(p, str) else f"<Ref:{p['Ref']}>" if "Ref" in p else "<token>" for p in parts)
    return json.loads(text) | {"name": board["Properties"]["DashboardName"]}


def metric_lines(body: dict) -> list[tuple[str, str, dict[str, str], dict]]:
    """(namespace, name, dimensions, options) of every metric the dashboard's graphs draw."""
    found = []
    for widget in body["widgets"]:
        for line in widget.get("properties", {}).get("metrics", []):
            if isinstance(line[0], str):
                options = line[-1] if isinstance(line[-1], dict) else {}
                fields = line[2:-1] if options else line[2:]
                found.append((line[0], line[1], dict(zip(fields[::2], fields[1::2])), options))
    return found


def alarm(template: dict, name: str) -> dict:
    (found,) = [v["Properties"] for v in template["Resources"].values()
                if v["Type"].startswith("AWS::CloudWatch::") and v["Properties"].get("AlarmName") == name]
    return found


def topic_ref(template: dict) -> dict:
    (logical,) = resources(template, "AWS::SNS::Topic")
    return {"Ref": logical}


@pytest.mark.parametrize("env", DISTACK_ENVS)
def test_dashboard_draws_the_shippers_metrics_with_this_deployments_dimension(synth, env):
    result = synth(env)
    body = dashboard(result.template_dict)
    assert body["name"] == f"distack-{env}"
    proxy = [(name, dims, opts) for ns, name, dims, opts in metric_lines(body) if ns == naming.PROXY_METRICS_NAMESPACE]
    assert {name for name, _, _ in proxy} <= PROXY_METRICS
    assert all(dims.get("Deployment") == env for _, dims, _ in proxy)
    drawn = {(name, dims.get("Role"), opts.get("stat")) for name, dims, opts in proxy}
    roles = ("standalone",) if result.config.mode == "standard" else ("prefill", "decode")
    assert {("Requests", None, "Sum"), ("ClientErrorResponses", None, "Sum"), ("ServerErrorResponses", None, "Sum"),
            ("TimeToFirstToken", None, "p50"), ("TimeToFirstToken", None, "p99"),
            ("InFlightRequests", None, "Maximum"), (PROXY_UP, None, "Minimum"),
            *[("HealthyWorkers", r, "Minimum") for r in roles],
            *[("UnhealthyWorkers", r, "Maximum") for r in roles]} <= drawn


@pytest.mark.parametrize("env", ("prod", "tutorial"))
def test_dashboard_draws_fleet_sizes_and_bootstrap_failures_that_are_collected(synth, env):
    result = synth(env)
    template = result.template_dict
    lines = metric_lines(dashboard(template))
    groups = resources(template, "AWS::AutoScaling::AutoScalingGroup")
    assert len(groups) == len(result.config.fleets) + 1
    for logical, group in groups.items():
        collected = group["Properties"]["MetricsCollection"]
        assert collected[0]["Granularity"] == "1Minute"
        for metric in ("GroupDesiredCapacity", "GroupInServiceInstances"):
            assert metric in collected[0]["Metrics"]
            assert any(ns == "AWS/AutoScaling" and name == metric and dims == {"AutoScalingGroupName": f"<Ref:{logical}>"}
                       for ns, name, dims, _ in lines)
    filters = {f["Properties"]["FilterPattern"]: f for f in resources(template, "AWS::Logs::MetricFilter").values()}
    assert set(filters) == {'"bootstrap failed"', '"metrics agent failed"'}
    for pattern, name in (('"bootstrap failed"', "BootstrapFailures"), ('"metrics agent failed"', "MetricsAgentFailures")):
        transform = filters[pattern]["Properties"]["MetricTransformations"][0]
        assert (f"DiStack/Nodes/{env}", name, {}) in [(ns, name, dims) for ns, name, dims, _ in lines]
        assert transform == {"MetricNamespace": f"DiStack/Nodes/{env}", "MetricName": name, "MetricValue": "1"}
        nodes = template["Resources"][filters[pattern]["Properties"]["LogGroupName"]["Ref"]]
        assert nodes["Properties"]["LogGroupName"] == naming.log_group(env, "nodes")


def test_bootstrap_filter_matches_the_event_the_bootstrap_writes(synth):
    # di-bootstrap's EXIT handler: report_to_cloudwatch "bootstrap failed: $reason" into the nodes log group;
    # metrics-agent.sh's failures are sent the same way (tests/test_metrics_agent.py runs that path).
    assert 'report_to_cloudwatch "bootstrap failed: $reason"' in (ROOT / "userdata" / "di-bootstrap").read_text()
    synth("prod").template.has_resource_properties("AWS::Logs::MetricFilter", {"FilterPattern": '"bootstrap failed"'})


def test_proxy_neuron_dashboard_says_what_is_absent_and_has_no_proxy_metrics(synth):
    template = synth("tutorial").template_dict
    body = dashboard(template)
    assert "proxy: neuron" in body["widgets"][0]["properties"]["markdown"]
    assert not [line for line in metric_lines(body) if line[0] == naming.PROXY_METRICS_NAMESPACE]
    alarms = resources(template, "AWS::CloudWatch::Alarm") | resources(template, "AWS::CloudWatch::CompositeAlarm")
    assert sorted(a["Properties"]["AlarmName"] for a in alarms.values()) == [
        "distack-tutorial-bootstrap-failed", "distack-tutorial-control-host-unhealthy",
        "distack-tutorial-control-not-in-service", "distack-tutorial-etcd-near-quota",
        "distack-tutorial-neuron-errors-decode", "distack-tutorial-neuron-errors-prefill"]
    # The workers' panels stay: their metrics come from the nodes' agents, whatever the proxy.
    assert {name for ns, name, _, _ in metric_lines(body) if ns == naming.WORKER_METRICS_NAMESPACE} >= {
        "vllm:num_requests_waiting", "vllm:num_requests_running", "neuroncore_utilization_ratio",
        "neuron_runtime_memory_used_bytes", "execution_errors_total"}
    assert "DiStack/Proxy" not in json.dumps(alarms)


def test_no_usable_pair_alarm_watches_each_role_and_the_proxy_for_the_configured_minutes(synth):
    result = synth("prod")
    template, minutes = result.template_dict, result.config.monitoring.no_pair_minutes
    children = []
    for name, metric, role in (("no-healthy-prefill", "HealthyWorkers", "prefill"),
                               ("no-healthy-decode", "HealthyWorkers", "decode"), ("proxy-down", PROXY_UP, None)):
        dims = [{"Name": "Deployment", "Value": "prod"}] + ([{"Name": "Role", "Value": role}] if role else [])
        result.template.has_resource_properties("AWS::CloudWatch::Alarm", {
            "AlarmName": f"distack-prod-{name}", "Namespace": "DiStack/Proxy", "MetricName": metric,
            "Dimensions": dims, "Statistic": "Minimum", "Threshold": 1, "ComparisonOperator": "LessThanThreshold",
            "EvaluationPeriods": minutes, "DatapointsToAlarm": minutes, "TreatMissingData": "breaching",
            "AlarmActions": Match.absent()})
        children.append(name)
    composite = alarm(template, "distack-prod-no-usable-pair")
    assert composite["AlarmActions"] == [topic_ref(template)] == composite["OKActions"]
    rule = json.dumps(composite["AlarmRule"])
    assert rule.count("ALARM(") == 4 and " OR " in rule
    # A role scaled to zero on purpose (a schedule, dictl scale) silences the alarm: the fewest instances desired of
    # any role, from each role's groups' GroupDesiredCapacity.
    zero_logical, zero = next((k, v["Properties"]) for k, v in resources(template, "AWS::CloudWatch::Alarm").items()
                              if v["Properties"]["AlarmName"] == "distack-prod-scaled-to-zero")
    assert zero_logical in rule.split("NOT (ALARM(")[1]
    assert "AlarmActions" not in zero and zero["Threshold"] == 1
    expressions = {q["Id"]: q for q in zero["Metrics"]}
    assert expressions[next(i for i, q in expressions.items() if q.get("ReturnData", True))]["Expression"] == \
        "MIN([r0, r1])"
    desired = [q for q in zero["Metrics"] if "MetricStat" in q]
    assert {q["MetricStat"]["Metric"]["MetricName"] for q in desired} == {"GroupDesiredCapacity"}
    assert {json.dumps(q["MetricStat"]["Metric"]["Dimensions"][0]["Value"]) for q in desired} == {
        json.dumps(template["Outputs"][naming.fleet_output(f)]["Value"]) for f in ("prefill", "decode")}
    fleets = set(resources(template, "AWS::AutoScaling::AutoScalingGroup")) - {
        template["Outputs"][naming.OUTPUT_CONTROL_INSTANCE_GROUP]["Value"]["Ref"]}
    for logical, props in resources(template, "AWS::CloudWatch::Alarm").items():
        if props["Properties"]["AlarmName"] in {f"distack-prod-{c}" for c in children}:
            assert logical in rule
            # Created once the worker groups' creation policies completed: a new deployment's boot does not page.
            assert fleets <= set(props["DependsOn"])
    assert "dictl status --env prod" in composite["AlarmDescription"]


def test_standard_mode_pool_alarm_watches_standalone_endpoints(synth):
    synth("baseline").template.has_resource_properties("AWS::CloudWatch::Alarm", {
        "AlarmName": "distack-baseline-no-healthy-standalone", "MetricName": "HealthyWorkers",
        "Dimensions": [{"Name": "Deployment", "Value": "baseline"}, {"Name": "Role", "Value": "standalone"}]})


def test_error_rate_ttft_and_bootstrap_alarms_use_the_configured_thresholds(synth):
    result = synth("prod")
    template, settings = result.template_dict, result.config.monitoring
    topic = topic_ref(template)
    errors = alarm(template, "distack-prod-server-errors")
    assert (errors["Threshold"], errors["ComparisonOperator"]) == (settings.server_error_percent, "GreaterThanThreshold")
    expression, *inputs = errors["Metrics"]
    assert expression["Expression"] == "IF(requests > 0, 100 * errors / requests, 0)"
    assert {(m["Id"], m["MetricStat"]["Metric"]["MetricName"], m["MetricStat"]["Stat"]) for m in inputs} == {
        ("requests", "Requests", "Sum"), ("errors", "ServerErrorResponses", "Sum")}
    assert all(m["MetricStat"]["Metric"]["Dimensions"] == [{"Name": "Deployment", "Value": "prod"}] for m in inputs)
    result.template.has_resource_properties("AWS::CloudWatch::Alarm", {
        "AlarmName": "distack-prod-ttft-p99", "Namespace": "DiStack/Proxy", "MetricName": "TimeToFirstToken",
        "Dimensions": [{"Name": "Deployment", "Value": "prod"}], "ExtendedStatistic": "p99",
        "Threshold": settings.ttft_p99_slo_ms, "ComparisonOperator": "GreaterThanThreshold",
        "TreatMissingData": "notBreaching", "AlarmActions": [topic]})
    result.template.has_resource_properties("AWS::CloudWatch::Alarm", {
        "AlarmName": "distack-prod-bootstrap-failed", "Threshold": 1,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold", "AlarmActions": [topic],
        "MetricName": "BootstrapFailures", "Namespace": "DiStack/Nodes/prod", "Statistic": "Sum"})
    assert errors["AlarmActions"] == [topic]


@pytest.mark.parametrize("env", ("prod", "tutorial"))
def test_control_host_alarm_fires_on_no_instance_in_service_or_missing_proxy_metrics(synth, env):
    result = synth(env)
    template = result.template_dict
    control = Capture()
    result.template.has_resource_properties("AWS::CloudWatch::Alarm", {
        "AlarmName": f"distack-{env}-control-not-in-service", "Namespace": "AWS/AutoScaling",
        "MetricName": "GroupInServiceInstances", "Dimensions": [{"Name": "AutoScalingGroupName", "Value": control}],
        "Threshold": 1, "ComparisonOperator": "LessThanThreshold", "TreatMissingData": "breaching"})
    assert control.as_object() == {"Ref": template["Outputs"][naming.OUTPUT_CONTROL_INSTANCE_GROUP]["Value"]["Ref"]}
    composite = alarm(template, f"distack-{env}-control-host-unhealthy")
    assert composite["AlarmActions"] == [topic_ref(template)]
    assert f"dictl logs --env {env} --role control" in composite["AlarmDescription"]
    if result.config.proxy == "distack":
        result.template.has_resource_properties("AWS::CloudWatch::Alarm", {
            "AlarmName": f"distack-{env}-proxy-metrics-missing", "MetricName": PROXY_UP, "Statistic": "SampleCount",
            "Threshold": 1, "ComparisonOperator": "LessThanThreshold", "TreatMissingData": "breaching"})
        assert json.dumps(composite["AlarmRule"]).count("ALARM(") == 2


@pytest.mark.parametrize("env", ("xpyd", "tutorial"))
def test_every_alarm_tells_what_to_run_and_reaches_the_topic(synth, env):
    template = synth(env).template_dict
    topic = topic_ref(template)
    composites = resources(template, "AWS::CloudWatch::CompositeAlarm")
    in_composites = json.dumps([c["Properties"]["AlarmRule"] for c in composites.values()])
    for logical, res in (resources(template, "AWS::CloudWatch::Alarm") | composites).items():
        props = res["Properties"]
        assert f"dictl status --env {env}" in props["AlarmDescription"] or "dictl logs" in props["AlarmDescription"]
        assert props.get("AlarmActions") == [topic] or logical in in_composites, props["AlarmName"]


def test_topic_is_encrypted_tls_only_and_open_to_this_accounts_alarms(synth):
    result = synth("prod")
    (key,) = resources(result.template_dict, "AWS::KMS::Key")
    result.template.has_resource_properties("AWS::SNS::Topic", {
        "TopicName": "distack-prod-alarms", "KmsMasterKeyId": {"Fn::GetAtt": [key, "Arn"]}})
    result.template.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True, "KeyPolicy": {
        "Statement": Match.array_with([Match.object_like({"Principal": {"Service": "cloudwatch.amazonaws.com"}})])}})
    result.template.has_resource_properties("AWS::SNS::TopicPolicy", {"PolicyDocument": {"Statement": Match.array_with([
        Match.object_like({"Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}}),
        Match.object_like({"Effect": "Allow", "Principal": {"Service": "cloudwatch.amazonaws.com"},
                           "Action": "sns:Publish"})])}})


@pytest.mark.parametrize("env", ("prod", "tutorial"))
def test_outputs_name_the_dashboard_and_topic_and_no_email_unless_configured(synth, env):
    result = synth(env)
    outputs = result.template_dict["Outputs"]
    region = result.config.region
    assert outputs[naming.OUTPUT_DASHBOARD_URL]["Value"] == (
        f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}#dashboards:name=distack-{env}")
    assert outputs[naming.OUTPUT_ALARM_TOPIC]["Value"] == topic_ref(result.template_dict)
    assert result.config.monitoring.alarm_email is None
    result.template.resource_count_is("AWS::SNS::Subscription", 0)


def test_configured_email_subscribes_to_the_topic():
    # The topic's construct tree alone: no shipped config sets alarm_email, and even a bare stack's synth costs
    # seconds.
    import aws_cdk as cdk
    from aws_cdk import aws_sns as sns

    from stacks.components.monitoring import AlarmTopic

    stack = cdk.Stack(cdk.App(), "Topic")
    alarms = AlarmTopic(stack, "AlarmTopic", env_name="case", email="ops@example.com")
    (subscription,) = [c for c in alarms.topic.node.children if isinstance(c, sns.Subscription)]
    resource = subscription.node.default_child
    assert (resource.protocol, resource.endpoint) == ("email", "ops@example.com")
    assert resource.topic_arn == alarms.topic.topic_arn
    quiet = AlarmTopic(stack, "Quiet", env_name="quiet", email=None)
    assert not [c for c in quiet.topic.node.children if isinstance(c, sns.Subscription)]


# The collectors and what each emits: (namespace, metric, dimension names). A panel or alarm reading anything else
# would stay empty in CloudWatch.
SEARCH = re.compile(r"SEARCH\('\{([^}]*)\} MetricName=\\?\"([^\"\\]+)\\?\"")


def collected(config, template: dict) -> set[tuple[str, str, frozenset[str]]]:
    proxy = {(naming.PROXY_METRICS_NAMESPACE, rule.metric,
              frozenset({"Deployment", *(d[:1].upper() + d[1:] for d in rule.dimensions)})) for rule in RULES}
    proxy.add((naming.PROXY_METRICS_NAMESPACE, PROXY_UP, frozenset({"Deployment"})))
    groups = {(("AWS/AutoScaling", m, frozenset({"AutoScalingGroupName"})))
              for g in resources(template, "AWS::AutoScaling::AutoScalingGroup").values()
              for m in g["Properties"]["MetricsCollection"][0]["Metrics"]}
    filters = {(t["MetricNamespace"], t["MetricName"], frozenset())
               for f in resources(template, "AWS::Logs::MetricFilter").values()
               for t in f["Properties"]["MetricTransformations"]}
    # The correctness canary publishes into the proxy's namespace (diproxy/canary.py PUBLISHED).
    canary_metrics = {(naming.PROXY_METRICS_NAMESPACE, name, frozenset(dims)) for name, dims in canary.PUBLISHED.items()}
    return agent_config.published(config) | proxy | groups | filters | canary_metrics


def drawn(template: dict) -> list[tuple[str, str, frozenset[str]]]:
    """Every metric the dashboard and the alarms read: plain metric lines, SEARCH expressions, alarm metrics."""
    body = dashboard(template)
    found = [(ns, name, frozenset(dims)) for ns, name, dims, _ in metric_lines(body)]
    text = json.dumps(body)
    for space_dims, name in SEARCH.findall(text):
        namespace, *dims = space_dims.split(",")
        found.append((namespace, name, frozenset(dims)))
    for res in resources(template, "AWS::CloudWatch::Alarm").values():
        props = res["Properties"]
        stats = [m["MetricStat"]["Metric"] for m in props.get("Metrics", []) if "MetricStat" in m]
        if "MetricName" in props:
            stats.append(props)
        found += [(m["Namespace"], m["MetricName"], frozenset(d["Name"] for d in m.get("Dimensions", [])))
                  for m in stats]
    return found


@pytest.mark.parametrize("env", ("prod", "tutorial", "baseline", "dev"))
def test_every_panel_and_alarm_reads_a_metric_some_collector_emits(synth, env):
    result = synth(env)
    emitted = collected(result.config, result.template_dict)
    read = drawn(result.template_dict)
    assert not [m for m in read if m not in emitted]
    namespaces = {ns for ns, _, _ in read}
    assert naming.WORKER_METRICS_NAMESPACE in namespaces and naming.CONTROL_METRICS_NAMESPACE in namespaces
    # The KV panel reads the gauge this engine's vLLM exports (model/observability/upstream.py).
    kv = agent_config.kv_cache_metric(result.config)
    assert kv in {name for _, name, _ in read} and kv in (upstream.VLLM_V1 if result.config.engine == "nixl"
                                                          else upstream.VLLM_V0)


@pytest.mark.parametrize("env", sorted(p.stem for p in (ROOT / "config").glob("*.yaml")))
def test_agent_configuration_is_valid_for_the_agent_consistent_and_fits_a_parameter(env):
    from model.loader import load_environment

    config = load_environment(env)
    validator = jsonschema.Draft4Validator(json.loads(AGENT_SCHEMA.read_text()))
    for kind, files in agent_config.node_kinds(config).items():
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(files.agent)]
        assert not errors, (kind, errors)
        assert len(files.agent_text.encode()) <= 4096 and len(files.scrape.encode()) <= 4096
        prometheus = files.agent["logs"]["metrics_collected"]["prometheus"]
        assert prometheus["log_group_name"] == f"/distack/{env}/metrics"
        scrape = yaml.safe_load(files.scrape)
        for job in scrape["scrape_configs"]:
            (keep,) = job["metric_relabel_configs"]
            kept = set(keep["regex"].split("|"))
            # Each series the scrape keeps is declared for EMF under this job; a declaration the agent would skip
            # (no source_labels or no metric_selectors) keeps nothing.
            declared = {sel.strip("^$") for d in prometheus["emf_processor"]["metric_declaration"]
                        if d["source_labels"] and d["metric_selectors"] and d["label_matcher"].startswith(
                            f"^{job['job_name']}") for sel in d["metric_selectors"]}
            assert kept == declared, (kind, job["job_name"])
            for target in job["static_configs"]:
                assert target["labels"]["InstanceId"] == agent_config.INSTANCE_PLACEHOLDER
                assert target["labels"]["Deployment"] == env
        if kind == naming.ROLE_CONTROL:
            # The proxy's journal goes to the container log group, named by the unit the control host installs.
            journald = files.agent["logs"].get("logs_collected", {}).get("journald", {}).get("collect_list", [])
            expected = [{"log_group_name": f"/distack/{env}/containers", "units": ["distack-proxy.service"],
                         "log_stream_name": "control/{instance_id}/distack-proxy"}] if config.proxy == "distack" else []
            assert journald == expected
            assert (ROOT / "diproxy" / "deploy" / agent_config.PROXY_UNIT).is_file()
        else:
            ports = {t["labels"].get("Port") for j in scrape["scrape_configs"] for t in j["static_configs"]} - {None}
            assert ports == {str(ep.port) for ep in config.fleets[kind].resolved_endpoints}


def test_every_kept_name_is_one_its_source_defines():
    # Each engine's KV-cache gauge is kept, and is one its vLLM generation defines.
    assert set(agent_config.KV_CACHE_METRICS) == {e.kv_cache_metric for e in engines.ENGINES.values()}
    assert all(e.kv_cache_metric in upstream.VLLM_V0 | upstream.VLLM_V1 for e in engines.ENGINES.values())
    by_job = {agent_config.JOB_VLLM: upstream.VLLM_V0 | upstream.VLLM_V1 | upstream.VLLM_NIXL | upstream.VLLM_V1_EXPOSED,
              kv_telemetry.JOB_DCGM: upstream.DCGM_EXPORTER,
              agent_config.JOB_NEURON: upstream.NEURON_MONITOR, agent_config.JOB_ETCD: upstream.ETCD}
    for kept in agent_config.WORKER_KEPT + agent_config.CONTROL_KEPT:
        assert kept.name in by_job[kept.job], kept.name
    # Queue and in-flight exist under the same name in both vLLM generations.
    assert {agent_config.RUNNING, agent_config.WAITING} <= upstream.VLLM_V0 & upstream.VLLM_V1


def test_nodes_read_exactly_their_own_agent_parameters_which_hold_the_generated_configuration(synth):
    result = synth("prod")
    template = result.template_dict
    params = {r["Properties"]["Name"]: (logical, r["Properties"]["Value"])
              for logical, r in resources(template, "AWS::SSM::Parameter").items()}
    for kind, files in agent_config.node_kinds(result.config).items():
        assert params[naming.metrics_agent_parameter("prod", kind, "agent")][1] == files.agent_text
        assert params[naming.metrics_agent_parameter("prod", kind, "scrape")][1] == files.scrape
    policies = {p["Properties"]["Roles"][0]["Ref"]: json.dumps(p["Properties"]["PolicyDocument"])
                for p in resources(template, "AWS::IAM::Policy").values()}
    for role, kinds in (("WorkerRole", ("prefill", "decode")), ("ControlRole", ("control",))):
        (policy,) = [text for ref, text in policies.items() if ref.startswith(role)]
        mine = {params[naming.metrics_agent_parameter("prod", k, part)][0] for k in kinds for part in ("agent", "scrape")}
        readable = {logical for logical, _ in params.values() if f'"{logical}"' in policy}
        assert readable == mine, role
    (metrics_group,) = [k for k, r in resources(template, "AWS::Logs::LogGroup").items()
                        if r["Properties"].get("LogGroupName") == "/distack/prod/metrics"]
    assert all(metrics_group in text for text in policies.values() if '"ssm:GetParameter"' in text)


def test_layout_picture_has_every_widget_at_its_place(synth):
    widgets = layout.dashboard_widgets(synth("prod").template_dict)
    picture = layout.ascii_layout(widgets)
    lines = picture.splitlines()
    assert max(len(line) for line in lines) == 24 * layout.COLUMN_CHARS + 1
    for w in widgets:
        first_word = layout.title_of(w).split()[0]
        row = w["y"] * 2 // 3 + 1
        col = w["x"] * layout.COLUMN_CHARS + 2
        assert lines[row][col:col + len(first_word)] == first_word


def test_etcd_near_its_quota_alarms_before_it_refuses_writes(synth):
    from model import naming
    from stacks.components.monitoring import ETCD_DB_SIZE

    alarms = synth("prod").template.find_resources("AWS::CloudWatch::Alarm")
    (near,) = [a["Properties"] for a in alarms.values() if a["Properties"].get("AlarmName") == "distack-prod-etcd-near-quota"]
    assert near["MetricName"] == ETCD_DB_SIZE and near["Statistic"] == "Maximum"
    assert near["Threshold"] == 0.8 * naming.ETCD_QUOTA_BYTES
    # The bound is etcd's own quota as the control host starts it.
    flags = subprocess.run(["bash", "-c", f'. "{ROOT}/userdata/di-run"; etcd_upkeep_args'], capture_output=True,
                           text=True, env={"PATH": "/usr/bin:/bin", "DI_NODE_ENV": "/nonexistent"})
    assert f"--quota-backend-bytes={naming.ETCD_QUOTA_BYTES}" in flags.stdout.split(), flags.stderr
    assert f"--listen-metrics-urls=http://127.0.0.1:{naming.ETCD_METRICS_PORT}" in flags.stdout.split()
