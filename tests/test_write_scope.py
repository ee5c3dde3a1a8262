"""A node writes only its own folder: the synthesized node roles grant S3 writes on PREFIX/${aws:userid}/* alone,
with the variable reaching the policy literally, and an IAM-style evaluation of the policy (variable substitution,
then `*`/`?` matching, as IAM documents it) allows an instance its own keys and refuses every other instance's, the
old layout and compiled/. model/write_scope.py, the layout's reader side, parses what the keys say."""

from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase

import pytest

from model import naming
from model.write_scope import Writer, parse_userid, scoped, split_key, trusted

BUCKET_ARN = "arn:aws:s3:::di-prod-artifacts"
KEY = "Llama-3.3-70B-Instruct-tp16-b8-s8192-0123456789ab"
ROLE_KINDS = ("WorkerRole", "ControlRole")
# Object-level S3 actions that change what a reader gets; a node role may hold only the first two, only scoped.
WRITE_ACTIONS = ("s3:PutObject", "s3:AbortMultipartUpload", "s3:DeleteObject", "s3:DeleteObjectVersion",
                 "s3:PutObjectAcl", "s3:PutObjectTagging", "s3:RestoreObject", "s3:ReplicateObject",
                 "s3:PutObjectRetention", "s3:PutObjectLegalHold")


def node_role_statements(template: dict, kind: str) -> list[dict]:
    """Every statement of every policy attached to the node role of KIND (inline, separate or managed)."""
    roles = {name: r for name, r in template["Resources"].items()
             if r["Type"] == "AWS::IAM::Role" and name.startswith(kind)}
    (role_name, role), = roles.items()
    assert not role["Properties"].get("ManagedPolicyArns"), "a managed policy would escape this check"
    statements = [s for p in role["Properties"].get("Policies", []) for s in p["PolicyDocument"]["Statement"]]
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::IAM::Policy" and {"Ref": role_name} in resource["Properties"].get("Roles", []):
            statements += resource["Properties"]["PolicyDocument"]["Statement"]
    assert statements
    return statements


def as_list(value: object) -> list:
    return value if isinstance(value, list) else [value]


def resource_pattern(resource: object) -> str:
    """A Resource as IAM sees it once CloudFormation resolved the bucket ARN; any other intrinsic fails the test."""
    if isinstance(resource, str):
        return resource
    (function, value), = resource.items()
    assert function == "Fn::Join" and value[0] == "", f"unexpected intrinsic {resource}"
    parts = []
    for part in value[1]:
        if isinstance(part, dict):
            assert "Fn::GetAtt" in part and part["Fn::GetAtt"][1] == "Arn", part
            parts.append(BUCKET_ARN if part["Fn::GetAtt"][0].startswith("ArtifactsBucket") else "arn:other")
        else:
            parts.append(part)
    return "".join(parts)


def iam_match(pattern: str, value: str, userid: str) -> bool:
    """IAM's resource match: ${aws:userid} replaced by the request's value, then `*` any run of characters and `?`
    one character (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_resource.html)."""
    pattern = pattern.replace("${aws:userid}", userid)
    assert "${" not in pattern, f"an unresolved variable in {pattern}"
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value) is not None


def may_write(statements: list[dict], key: str, userid: str) -> bool:
    """Whether an Allow statement grants any write action on object KEY to a request whose aws:userid is USERID."""
    arn = f"{BUCKET_ARN}/{key}"
    for statement in statements:
        assert "NotAction" not in statement and "NotResource" not in statement, statement
        actions = as_list(statement["Action"])
        if statement["Effect"] != "Allow" or not any(fnmatchcase(w, a) for w in WRITE_ACTIONS for a in actions):
            continue
        if any(iam_match(resource_pattern(r), arn, userid) for r in as_list(statement["Resource"])):
            return True
    return False


@pytest.fixture(scope="module")
def template(synth) -> dict:
    return synth("prod").template_dict


def test_every_write_grant_names_the_policy_variable_literally(template) -> None:
    for kind in ROLE_KINDS:
        writes = [s for s in node_role_statements(template, kind)
                  if any(fnmatchcase(w, a) for w in WRITE_ACTIONS for a in as_list(s["Action"]))]
        assert writes, kind
        for statement in writes:
            assert sorted(as_list(statement["Action"])) == ["s3:AbortMultipartUpload", "s3:PutObject"]
            for resource in as_list(statement["Resource"]):
                # Fn::Join keeps ${aws:userid} as text; an Fn::Sub would take it for a CloudFormation variable.
                assert "Fn::Sub" not in json.dumps(resource)
                pattern = resource_pattern(resource)
                prefix = pattern[len(BUCKET_ARN) + 1:]
                assert prefix.endswith("/${aws:userid}/*"), pattern
                assert prefix[:-len("${aws:userid}/*")] in naming.NODE_WRITE_PREFIXES, pattern


@pytest.mark.parametrize("kind, own", [
    ("WorkerRole", [f"staging/compiled/{{u}}/{KEY}/SHA256SUMS", "logs/{u}/20260101T000000Z/units.log"]),
    ("ControlRole", ["bench/{u}/prod-1/m_summary.json", "logs/{u}/20260101T000000Z/units.log"]),
])
def test_an_instance_may_write_its_own_folder_and_nothing_else(template, kind: str, own: list[str]) -> None:
    statements = node_role_statements(template, kind)
    me, other = "AROAEXAMPLEWORKER0001:i-0aaaaaaaaaaaaaaaa", "AROAEXAMPLEWORKER0001:i-0bbbbbbbbbbbbbbbb"
    for key in own:
        assert may_write(statements, key.format(u=me), me), key
        assert not may_write(statements, key.format(u=other), me), f"{key}: another instance's folder"
    refused = [
        f"compiled/{KEY}/model.pt", f"compiled/{KEY}/SHA256SUMS",        # what every worker loads
        f"staging/compiled/{KEY}/i-0aaaaaaaaaaaaaaaa/SHA256SUMS",        # the old layout, KEY/INSTANCE-ID/
        "staging/compiled/i-0aaaaaaaaaaaaaaaa/x",                        # the instance ID alone
        f"staging/compiled/{me}x/{KEY}/SHA256SUMS",                      # a longer folder name
        "commands/c-1/i-0aaaaaaaaaaaaaaaa/awsrunShellScript/step/stdout",  # Run Command output
        f"models/{me}/model.safetensors", "logs/x", "bench/x", f"{me}/x",
    ]
    for key in refused:
        assert not may_write(statements, key, me), key


def test_the_matcher_is_not_vacuous() -> None:
    statements = [{"Effect": "Allow", "Action": "s3:Put*", "Resource": f"{BUCKET_ARN}/logs/${{aws:userid}}/*"}]
    assert may_write(statements, "logs/AROAX:i-1/a", "AROAX:i-1")
    assert not may_write(statements, "logs/AROAX:i-2/a", "AROAX:i-1")
    assert may_write([{**statements[0], "Resource": f"{BUCKET_ARN}/*"}], "compiled/k/m", "AROAX:i-1")


def test_user_ids_name_a_role_and_an_instance_and_nothing_else() -> None:
    writer = parse_userid("AROAEXAMPLEWORKER0001:i-0123456789abcdef0")
    assert writer == Writer("AROAEXAMPLEWORKER0001", "i-0123456789abcdef0")
    assert scoped("logs/", writer) == "logs/AROAEXAMPLEWORKER0001:i-0123456789abcdef0/"
    for bad in ("i-0123456789abcdef0", "AIDAEXAMPLEUSER000001", "AROAEXAMPLEWORKER0001:session",
                "AROAEXAMPLEWORKER0001:i-0123456789abcdef0/x", KEY, ""):
        assert parse_userid(bad) is None, bad
    assert split_key("bench/", "bench/AROAEXAMPLEWORKER0001:i-0abcdef12/run/m.json") == (
        Writer("AROAEXAMPLEWORKER0001", "i-0abcdef12"), "run/m.json")
    assert split_key("bench/", "bench/run/m.json") == (None, "m.json")
    assert trusted(writer, ["AROAEXAMPLEWORKER0001"]) and not trusted(writer, ["AROAEXAMPLECONTROL001"])
    assert not trusted(None, [])
