"""Intent of the dashboard and alarms: the metrics they read are the ones the proxy's shipper, Auto Scaling and
the nodes' bootstrap really emit, with this deployment's dimensions; every alarm notifies the deployment's topic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aws_cdk.assertions import Capture, Match

from diproxy.shipper import metric_data
from diproxy.shipper.metric_data import PROXY_UP, RULES
from stacks import naming
from stacks.components import monitoring

ROOT = Path(__file__).resolve().parent.parent
DISTACK_ENVS = ("dev", "prod", "xpyd", "baseline")
PROXY_METRICS = {rule.metric for rule in RULES} | {PROXY_UP}


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
    (metric_filter,) = resources(template, "AWS::Logs::MetricFilter").values()
    transform = metric_filter["Properties"]["MetricTransformations"][0]
    assert (f"DiStack/Nodes/{env}", "BootstrapFailures", {}) in [(ns, name, dims) for ns, name, dims, _ in lines]
    assert transform == {"MetricNamespace": f"DiStack/Nodes/{env}", "MetricName": "BootstrapFailures", "MetricValue": "1"}
    nodes = template["Resources"][metric_filter["Properties"]["LogGroupName"]["Ref"]]
    assert nodes["Properties"]["LogGroupName"] == naming.log_group(env, "nodes")


def test_bootstrap_filter_matches_the_event_the_bootstrap_writes(synth):
    # di-bootstrap's EXIT handler: report_to_cloudwatch "bootstrap failed: $reason" into the nodes log group.
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
        "distack-tutorial-control-not-in-service"]
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
    assert rule.count("ALARM(") == 3 and " OR " in rule
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
