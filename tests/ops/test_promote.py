"""`dictl compile` promotes what the compiling node staged in its own folder, staging/compiled/ROLE-ID:INSTANCE-ID/KEY/
(nodes cannot write compiled/, nor another node's folder): a copy matching its SHA256SUMS goes to compiled/KEY/,
replacing the old one; any mismatch leaves compiled/KEY/ untouched and fails the verb, naming every problem. A set in
another instance's folder, or in a folder whose role is not a node role, is never taken for the compiling node's."""

from __future__ import annotations

import hashlib
from typing import Any

from ops import promote
from tests.ops.conftest import BUCKET, NODE_ROLE_IDS

KEY = "Llama-3.3-70B-Instruct-tp16-b8-s8192-0123456789ab"
FILES = {"model.pt": b"neff bytes", "neuron/compile_cache/graph.neff": b"graph"}


def sums(files: dict[str, bytes]) -> bytes:
    return "".join(f"{hashlib.sha256(body).hexdigest()}  ./{path}\n" for path, body in files.items()).encode()


def stage_on_run(world: Any, files: dict[str, bytes], listed: dict[str, bytes]) -> None:
    """Each instance that runs the compile document stages FILES with the SHA256SUMS of LISTED, as compile.sh."""
    s3 = world.client("s3")

    def outcome(instance_id: str, command: dict[str, Any]) -> tuple[str, str]:
        prefix = f"staging/compiled/{NODE_ROLE_IDS[0]}:{instance_id}/{KEY}/"
        for path, body in files.items():
            s3.put_object(Bucket=BUCKET, Key=prefix + path, Body=body)
        s3.put_object(Bucket=BUCKET, Key=prefix + "SHA256SUMS", Body=sums(listed))
        return "Success", f"staged: s3://{BUCKET}/{prefix}"
    world.ssm.outcome = outcome


def keys(world: Any, prefix: str) -> dict[str, bytes]:
    s3 = world.client("s3")
    found = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix):]: s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in found}


def test_compile_promotes_a_matching_staged_copy_and_drops_the_old_one(world) -> None:
    world.launch(2, "prefill", "prefill")
    world.launch(1, "decode", "decode")
    world.client("s3").put_object(Bucket=BUCKET, Key=f"compiled/{KEY}/old.neff", Body=b"stale")
    stage_on_run(world, FILES, FILES)
    code, _, err = world.dictl("compile", "--env", "prod", "--force", "--quiet")
    assert code == 0, err
    assert keys(world, f"compiled/{KEY}/") == {**FILES, "SHA256SUMS": sums(FILES)}
    assert keys(world, "staging/") == {}
    assert f"file(s) staged by " in err and f"to s3://{BUCKET}/compiled/{KEY}/, 1 stale removed" in err


def test_compile_refuses_a_staged_copy_that_does_not_match_its_checksums(world) -> None:
    world.launch(1, "prefill", "prefill")
    world.launch(1, "decode", "decode")
    world.client("s3").put_object(Bucket=BUCKET, Key=f"compiled/{KEY}/model.pt", Body=b"good")
    tampered = {**FILES, "model.pt": b"poison", "extra.py": b"import os"}
    stage_on_run(world, tampered, {**FILES, "missing.neff": b"x"})
    code, _, err = world.dictl("compile", "--env", "prod", "--force", "--quiet")
    assert code == 1
    staged = f"s3://{BUCKET}/staging/compiled/{NODE_ROLE_IDS[0]}:"
    assert "model.pt does not match its SHA-256 in SHA256SUMS" in err
    assert "extra.py is not listed in SHA256SUMS" in err
    assert "missing.neff is listed in SHA256SUMS but missing" in err
    assert staged in err and "graph.neff" not in err
    assert keys(world, f"compiled/{KEY}/") == {"model.pt": b"good"}


def test_compile_refuses_a_checksum_list_naming_paths_outside_the_staged_copy(world) -> None:
    world.launch(1, "prefill", "prefill")
    world.launch(1, "decode", "decode")
    stage_on_run(world, {}, {"../../other/model.pt": b"x"})
    code, _, err = world.dictl("compile", "--env", "prod", "--force", "--quiet")
    assert code == 1 and "names '../../other/model.pt', outside the staged files" in err
    assert keys(world, "compiled/") == {}


def test_compile_with_nothing_staged_promotes_nothing(world) -> None:
    world.launch(1, "prefill", "prefill")
    world.launch(1, "decode", "decode")
    code, _, err = world.dictl("compile", "--env", "prod", "--quiet")
    assert code == 0, err
    assert "promoted" not in err and keys(world, "compiled/") == {}


def put_set(world: Any, folder: str, files: dict[str, bytes]) -> None:
    s3 = world.client("s3")
    for path, body in {**files, "SHA256SUMS": sums(files)}.items():
        s3.put_object(Bucket=BUCKET, Key=f"staging/compiled/{folder}/{KEY}/{path}", Body=body)


def test_compile_never_takes_another_instances_folder_or_a_foreign_role_for_the_compiling_node(world) -> None:
    (prefill,) = world.launch(1, "prefill", "prefill")
    world.launch(1, "decode", "decode")
    # What other writers left: a complete, matching set in another instance's folder, one claiming the compiling
    # instance under a role that is not a node role, and one in the old layout (KEY/INSTANCE/).
    put_set(world, f"{NODE_ROLE_IDS[0]}:i-0eeeeeeeeeeeeeeee", {"model.pt": b"other node"})
    put_set(world, f"AROAEXAMPLEFOREIGN001:{prefill}", {"model.pt": b"forged"})
    world.client("s3").put_object(Bucket=BUCKET, Key=f"staging/compiled/{KEY}/{prefill}/SHA256SUMS", Body=b"")
    world.ssm.outcome = lambda i, c: ("Success", "staged nothing")
    code, _, err = world.dictl("compile", "--env", "prod", "--force", "--quiet")
    assert code == 0, err
    assert "promoted" not in err and keys(world, "compiled/") == {}
    # The folders that are not a node's are named, so an operator sees what was left out.
    assert f"ignored s3://{BUCKET}/staging/compiled/AROAEXAMPLEFOREIGN001:{prefill}/" in err
    assert f"ignored s3://{BUCKET}/staging/compiled/{KEY}/" in err
    sets, refused = promote.staged_sets(world.client("s3"), BUCKET, NODE_ROLE_IDS)
    assert [s.writer.instance_id for s in sets] == ["i-0eeeeeeeeeeeeeeee"]
    assert refused == sorted([KEY, f"AROAEXAMPLEFOREIGN001:{prefill}"])


def test_the_newest_complete_set_of_any_node_is_found_when_no_instance_is_named(world) -> None:
    s3 = world.client("s3")
    put_set(world, f"{NODE_ROLE_IDS[0]}:i-0aaaaaaaaaaaaaaaa", {"model.pt": b"older"})
    put_set(world, f"{NODE_ROLE_IDS[0]}:i-0bbbbbbbbbbbbbbbb", {"model.pt": b"newer"})
    # An incomplete set (no SHA256SUMS yet) is not a candidate, however new.
    s3.put_object(Bucket=BUCKET, Key=f"staging/compiled/{NODE_ROLE_IDS[0]}:i-0cccccccccccccccc/{KEY}/model.pt",
                  Body=b"partial")
    newest = promote.staged_by(s3, BUCKET, None, NODE_ROLE_IDS)
    assert newest is not None and newest.writer.instance_id in {"i-0aaaaaaaaaaaaaaaa", "i-0bbbbbbbbbbbbbbbb"}
    assert promote.staged_by(s3, BUCKET, "i-0cccccccccccccccc", NODE_ROLE_IDS) is None
    done = promote.promote(s3, BUCKET, promote.staged_by(s3, BUCKET, "i-0aaaaaaaaaaaaaaaa", NODE_ROLE_IDS))
    assert done.files == 2 and keys(world, f"compiled/{KEY}/")["model.pt"] == b"older"
