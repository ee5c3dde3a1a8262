"""Target resolution: tags and stack outputs to SSM Targets and instance lists."""

from __future__ import annotations

import pytest

from ops.errors import UsageError
from ops.targets import Deployment, Selection
from model.loader import load_environment


def deployment(world) -> Deployment:
    return Deployment(load_environment("prod"), world.clients())


def test_targets_are_tags_scoped_to_the_deployment(world) -> None:
    targets = deployment(world).ssm_targets(Selection(role="prefill"))
    assert targets == [[{"Key": "tag:di:deployment", "Values": ["prod"]},
                        {"Key": "tag:di:role", "Values": ["prefill"]}]]
    fleet = deployment(world).ssm_targets(Selection(fleet="decode"))[0]
    assert {"Key": "tag:di:fleet", "Values": ["decode"]} in fleet


def test_named_instances_are_sent_in_chunks_of_fifty(world) -> None:
    ids = tuple(f"i-{n:017x}" for n in range(120))
    chunks = deployment(world).ssm_targets(Selection(instance_ids=ids))
    assert [len(c[0]["Values"]) for c in chunks] == [50, 50, 20]
    assert all(c[0]["Key"] == "InstanceIds" for c in chunks)
    assert sum((c[0]["Values"] for c in chunks), []) == list(ids)


def test_instances_follow_tags_and_skip_other_deployments(world) -> None:
    prefill = world.launch(3, "prefill", "prefill")
    world.launch(2, "decode", "decode")
    world.launch(4, "prefill", "prefill", env="staging")
    found = deployment(world).instances(Selection(role="prefill"))
    assert sorted(i.instance_id for i in found) == sorted(prefill)
    assert {i.fleet for i in found} == {"prefill"}
    assert len(deployment(world).instances(Selection())) == 5


def test_stack_outputs_give_bucket_and_groups(world) -> None:
    d = deployment(world)
    assert d.bucket == "di-prod-artifacts"
    assert d.fleet_group("decode") == "di-prod-decode"
    assert d.document("collect-logs") == "di-prod-Collect-logs"


@pytest.mark.parametrize("selection, message", [
    (Selection(fleet="nosuch"), "no such fleet"),
    (Selection(instance_ids=("web-1",)), "not an EC2 instance id"),
    (Selection(role="prefill", instance_ids=("i-0123456789abcdef0",)), "cannot be combined"),
])
def test_bad_selections_are_rejected_before_any_call(world, selection, message) -> None:
    with pytest.raises(UsageError, match=message):
        deployment(world).validate(selection)


def test_an_instance_of_another_deployment_is_refused(world) -> None:
    other = world.launch(1, "prefill", "prefill", env="staging")
    with pytest.raises(UsageError, match="not a live instance of deployment prod"):
        deployment(world).instances(Selection(instance_ids=tuple(other)))


def test_missing_stack_is_a_usage_error(world) -> None:
    from ops.aws import Clients

    d = Deployment(load_environment("dev"), Clients(world.session))
    with pytest.raises(UsageError, match="stack di-dev not found"):
        _ = d.bucket
