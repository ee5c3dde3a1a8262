"""`dictl preflight` against moto: offerings, EFA facts vs the catalog, reservations, AMIs, quotas, secret."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import boto3
import pytest
from botocore.stub import Stubber

from ops.aws import Clients
from ops.preflight import ERROR, INFO, WARNING, Preflight
from model import catalog
from model.config import NEURON_BASE_DLAMI_PARAMETER, DeploymentConfig
from model.loader import load_environment

RID = "cr-0123456789abcdef0"


class PublicParameters:
    """moto refuses to store /aws/ parameters, so the public DLAMI parameter is answered here."""

    def __init__(self, real, values: dict[str, str]) -> None:
        self.real, self.values = real, values

    def get_parameter(self, Name: str, **kwargs):
        if Name in self.values:
            return {"Parameter": {"Name": Name, "Value": self.values[Name], "Type": "String"}}
        return self.real.get_parameter(Name=Name, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.real, name)


@pytest.fixture
def ready_account(world):
    """An account where prod should pass: the DLAMI parameter and the token secret exist."""
    world.ssm.real = PublicParameters(world.ssm.real, {NEURON_BASE_DLAMI_PARAMETER: "ami-0123456789abcdef0"})
    world.client("secretsmanager").create_secret(Name="distack/hf-token", SecretString="hf_x")
    return world


def levels(findings, level):
    return [f for f in findings if f.level == level]


def test_prod_passes_with_quotas_as_a_warning_when_the_service_is_unavailable(ready_account) -> None:
    code, out, err = ready_account.dictl("preflight", "--env", "prod")
    findings = Preflight(load_environment("prod"), ready_account.clients()).run()
    assert not levels(findings, ERROR), out
    assert any("resolves to ami-0123456789abcdef0" in f.message for f in levels(findings, INFO))
    assert any("offered in us-east-2a" in f.message for f in levels(findings, INFO))
    assert any("16 network cards, 16 EFA interfaces" in f.message for f in levels(findings, INFO))
    quota = [f for f in levels(findings, WARNING) if f.subject.startswith("quota L-2C3B7624")]
    assert quota and "Service Quotas console" in quota[0].fix
    assert "WARNING" in out and "fix:" in out
    assert code == 0, err


def test_a_zone_without_the_type_is_an_error_with_the_fix(world) -> None:
    code, out, err = world.dictl("preflight", "--env", "legacy-trn1")  # moto offers no trn1 in us-east-2a
    assert code == 1
    assert "ERROR    trn1.32xlarge: not offered in us-east-2a" in out
    assert "describe-instance-type-offerings" in out and "error(s)" in err


def test_missing_secret_and_ami_parameter_are_errors(world) -> None:
    findings = Preflight(load_environment("prod"), world.clients()).run()
    assert {f.subject for f in levels(findings, ERROR)} == {"secret distack/hf-token", "worker AMI"}


def test_catalog_mismatch_is_reported(world, monkeypatch) -> None:
    wrong = dataclasses.replace(catalog.WORKER_TYPES["trn2.48xlarge"], network_cards=8)
    monkeypatch.setitem(catalog.WORKER_TYPES, "trn2.48xlarge", wrong)  # type: ignore[index]
    findings = Preflight(load_environment("prod"), world.clients()).efa_findings("trn2.48xlarge")
    assert [f.message for f in findings if f.level == ERROR] == [
        "EC2 reports 16 network cards, model/catalog.py says 8",
        "EC2 reports 16 EFA interfaces, model/catalog.py implies 8"]


def _with_reservation(reservation_id: str) -> DeploymentConfig:
    data = load_environment("prod").model_dump(exclude_unset=True)
    data["fleets"]["prefill"]["capacity"] = {"type": "reservation", "reservation_id": reservation_id}
    return DeploymentConfig.model_validate(data)


def _stubbed_ec2(reservations: list[dict] | None, error: str | None = None):
    # moto has no capacity reservations: answer DescribeCapacityReservations with botocore's Stubber.
    ec2 = boto3.client("ec2", region_name="us-east-2")
    stub = Stubber(ec2)
    if error:
        stub.add_client_error("describe_capacity_reservations", service_error_code=error,
                              expected_params={"CapacityReservationIds": [RID]})
    else:
        stub.add_response("describe_capacity_reservations", {"CapacityReservations": reservations},
                          {"CapacityReservationIds": [RID]})
    stub.activate()
    return ec2


def test_reservation_in_the_wrong_zone_is_an_error(world) -> None:
    ec2 = _stubbed_ec2([{"CapacityReservationId": RID, "InstanceType": "trn2.48xlarge",
                         "AvailabilityZone": "us-east-2b", "State": "active", "AvailableInstanceCount": 1}])
    preflight = Preflight(_with_reservation(RID), Clients(world.session, overrides={"ec2": ec2}))
    preflight.reservation("prefill")
    assert [f.message for f in levels(preflight.findings, ERROR)] == [
        "is in us-east-2b, the config uses us-east-2a"]


def test_matching_reservation_without_free_capacity_is_a_warning(world) -> None:
    ec2 = _stubbed_ec2([{"CapacityReservationId": RID, "InstanceType": "trn2.48xlarge",
                         "AvailabilityZone": "us-east-2a", "State": "active", "AvailableInstanceCount": 0}])
    preflight = Preflight(_with_reservation(RID), Clients(world.session, overrides={"ec2": ec2}))
    preflight.reservation("prefill")
    assert not levels(preflight.findings, ERROR)
    assert "0 instance(s) free" in levels(preflight.findings, WARNING)[0].message


def test_unknown_reservation_is_an_error(world) -> None:
    ec2 = _stubbed_ec2(None, error="InvalidCapacityReservationId.NotFound")
    preflight = Preflight(_with_reservation(RID), Clients(world.session, overrides={"ec2": ec2}))
    preflight.reservation("prefill")
    assert levels(preflight.findings, ERROR)[0].message == "not found in this account and region"


def test_a_quota_below_the_fleets_ceiling_is_an_error_with_the_request_command(world) -> None:
    class Quotas:
        def get_service_quota(self, ServiceCode: str, QuotaCode: str) -> dict:
            return {"Quota": {"Value": 192.0}}

    clients = Clients(world.session, overrides={"ssm": world.ssm, "service-quotas": Quotas()})
    preflight = Preflight(load_environment("prod"), clients)
    preflight.quotas()
    errors = levels(preflight.findings, ERROR)
    # prod: prefill and decode, max_count 4 each plus a warm pool of 1 (it runs while it boots), 192 vCPUs per
    # trn2.48xlarge
    assert len(errors) == 1 and "may need 1920" in errors[0].message
    assert "request-service-quota-increase" in errors[0].fix and "--desired-value 1920" in errors[0].fix


def test_gpu_fleets_are_counted_against_the_p_and_g_quotas_not_trainiums() -> None:
    asked = []

    class Quotas:
        def get_service_quota(self, ServiceCode: str, QuotaCode: str) -> dict:
            asked.append(QuotaCode)
            return {"Quota": {"Value": 100000.0}}

    preflight = Preflight(load_environment("gpu-xpyd"), Clients(None, overrides={"service-quotas": Quotas()}))
    preflight.quotas()
    # p5.48xlarge draws on "Running On-Demand P instances"; the control host on Standard; nothing on Trn.
    assert sorted(asked) == sorted(["L-417A185B", "L-1216C47A"])


END = datetime(2026, 8, 6, 11, 30, tzinfo=timezone.utc)


def _with_block(schedule: list[dict]) -> DeploymentConfig:
    data = load_environment("prod").model_dump(exclude_unset=True)
    decode = data["fleets"]["decode"]
    decode.pop("warm_pool")
    decode.update(capacity={"type": "capacity-block", "reservation_id": RID}, schedule=schedule, min_count=0)
    return DeploymentConfig.model_validate(data)


@pytest.mark.parametrize("schedule,level,message", [
    # 30 minutes of reclaim, then the 600 s drain and the hook's 180 s: empty by 10:47 for an 11:30 end.
    ([{"name": "block-end", "start_time": "2026-08-06T10:47:00Z", "min_size": 0, "max_size": 0,
       "desired_capacity": 0}], INFO, "emptied by block-end at 2026-08-06T10:47:00Z, in time"),
    ([{"name": "block-end", "start_time": "2026-08-06T10:50:00Z", "min_size": 0, "max_size": 0,
       "desired_capacity": 0}], ERROR, "empties the fleet at 2026-08-06T10:50:00Z, after 2026-08-06T10:47:00Z"),
    # Nightly zero at 22:00 Berlin, but the morning action (06:00 Berlin = 04:00Z) brings it back before the end.
    ([{"name": "night", "recurrence": "0 22 * * *", "time_zone": "Europe/Berlin", "min_size": 0, "max_size": 0,
       "desired_capacity": 0},
      {"name": "morning", "recurrence": "0 6 * * *", "time_zone": "Europe/Berlin", "min_size": 1, "max_size": 4}],
     ERROR, "the block ends 2026-08-06T11:30:00Z and no scheduled action empties the fleet before then"),
])
def test_a_capacity_block_fleet_must_be_empty_in_time_for_the_block_end(aws_env, schedule, level, message) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-2")
    stub = Stubber(ec2)
    stub.add_response("describe_capacity_reservations", {"CapacityReservations": [{
        "CapacityReservationId": RID, "InstanceType": "trn2.48xlarge", "AvailabilityZone": "us-east-2a",
        "State": "active", "AvailableInstanceCount": 4, "TotalInstanceCount": 4, "EndDate": END,
        "ReservationType": "capacity-block"}]}, {"CapacityReservationIds": [RID]})
    stub.activate()
    preflight = Preflight(_with_block(schedule), Clients(boto3.Session(), overrides={"ec2": ec2}),
                          clock=lambda: END - timedelta(days=2))
    preflight.reservation("decode")
    preflight.schedule_times()  # two days before the end: every one-time action is still ahead
    found = [f for f in preflight.findings if message in f.message]
    assert not [f for f in preflight.findings if "has passed" in f.message]
    assert found and found[0].level == level, preflight.findings
    if level == ERROR:
        assert 'start_time: "2026-08-06T10:47:00Z", min_size: 0, max_size: 0, desired_capacity: 0' in found[0].fix


@pytest.mark.parametrize("arn,named,error", [
    ("arn:aws:ec2:us-east-2:111122223333:placement-group/odcr-group", "odcr-group", None),
    ("arn:aws:ec2:us-east-2:111122223333:placement-group/other", "odcr-group",
     "was created in placement group other, the config names odcr-group"),
    ("arn:aws:ec2:us-east-2:111122223333:placement-group/odcr-group", None,
     "was created in placement group odcr-group; instances use it only when launched there"),
])
def test_a_reservation_must_live_in_the_placement_group_the_config_names(aws_env, arn, named, error) -> None:
    data = _with_reservation(RID).model_dump(exclude_unset=True)
    if named:
        data["placement_group_name"] = named
    ec2 = _stubbed_ec2([{"CapacityReservationId": RID, "InstanceType": "trn2.48xlarge", "PlacementGroupArn": arn,
                         "AvailabilityZone": "us-east-2a", "State": "active", "AvailableInstanceCount": 4}])
    preflight = Preflight(DeploymentConfig.model_validate(data), Clients(boto3.Session(), overrides={"ec2": ec2}))
    preflight.reservation("prefill")
    assert [f.message for f in levels(preflight.findings, ERROR)] == ([error] if error else [])


def test_a_one_time_action_in_the_past_would_fail_the_deploy(aws_env) -> None:
    config = _with_block([{"name": "block-end", "start_time": "2026-08-06T10:47:00Z", "min_size": 0, "max_size": 0,
                           "desired_capacity": 0}])
    preflight = Preflight(config, Clients(boto3.Session()), clock=lambda: END)
    preflight.schedule_times()
    (error,) = levels(preflight.findings, ERROR)
    assert error.subject == "fleet decode schedule block-end" and "2026-08-06T10:47:00Z has passed" in error.message
