"""`dictl compile` promotes what the compiling node staged under staging/compiled/KEY/INSTANCE/ (nodes cannot write
compiled/): a copy matching its SHA256SUMS goes to compiled/KEY/, replacing the old one; any mismatch leaves
compiled/KEY/ untouched and fails the verb, naming every problem."""

from __future__ import annotations

import hashlib
from typing import Any

from tests.ops.conftest import BUCKET

KEY = "Llama-3.3-70B-Instruct-tp16-b8-s8192-0123456789ab"
FILES = {"model.pt": b"neff bytes", "neuron/compile_cache/graph.neff": b"graph"}


def sums(files: dict[str, bytes]) -> bytes:
    return "".join(f"{hashlib.sha256(body).hexdigest()}  ./{path}\n" for path, body in files.items()).encode()


def stage_on_run(world: Any, files: dict[str, bytes], listed: dict[str, bytes]) -> None:
    """Each instance that runs the compile document stages FILES with the SHA256SUMS of LISTED, as compile.sh."""
    s3 = world.client("s3")

    def outcome(instance_id: str, command: dict[str, Any]) -> tuple[str, str]:
        prefix = f"staging/compiled/{KEY}/{instance_id}/"
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
    assert f"promoted 3 file(s) to s3://{BUCKET}/compiled/{KEY}/, 1 stale removed" in err


def test_compile_refuses_a_staged_copy_that_does_not_match_its_checksums(world) -> None:
    world.launch(1, "prefill", "prefill")
    world.launch(1, "decode", "decode")
    world.client("s3").put_object(Bucket=BUCKET, Key=f"compiled/{KEY}/model.pt", Body=b"good")
    tampered = {**FILES, "model.pt": b"poison", "extra.py": b"import os"}
    stage_on_run(world, tampered, {**FILES, "missing.neff": b"x"})
    code, _, err = world.dictl("compile", "--env", "prod", "--force", "--quiet")
    assert code == 1
    staged = f"s3://{BUCKET}/staging/compiled/{KEY}/"
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
