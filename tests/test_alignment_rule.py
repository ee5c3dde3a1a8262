"""trn2 core ranges start on a multiple of their TP degree (a misaligned range compiles, then fails at prefill
warm-up with REDUCE_SCATTER unsupported: vllm-neuron tutorial-epd-1e-1pd-xeypd.md@v2.32.0, Common issues)."""

from __future__ import annotations

import pytest
import yaml

from model.loader import ConfigError, load_config_file


def write(tmp_path, fleets: dict, **extra) -> object:
    path = tmp_path / "case.yaml"
    path.write_text(yaml.safe_dump({
        "name": "case", "region": "us-east-2", "availability_zone": "us-east-2a",
        "model": {"id": "meta-llama/Llama-3.1-8B-Instruct", "hf_token_secret": "distack/hf-token"},
        "fleets": fleets, **extra}))
    return path


def trn2(role: str, tp: int, *ranges: str, **extra) -> dict:
    return {"role": role, "instance_type": "trn2.48xlarge", "tensor_parallel": tp,
            "endpoints": [{"cores": r, **({"role": extra["roles"][i]} if "roles" in extra else {})}
                          for i, r in enumerate(ranges)], **{k: v for k, v in extra.items() if k != "roles"}}


def test_every_misaligned_range_is_reported_with_file_field_and_fix_together_with_other_problems(tmp_path):
    path = write(tmp_path, {"colocated": trn2("colocated", 8, "4-11", "20-27", roles=["prefill", "decode"])},
                 log_retention_days=13)
    with pytest.raises(ConfigError) as caught:
        load_config_file(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    assert "fleets.colocated.endpoints[0].cores: range 4-11 starts at core 4, not a multiple of tensor_parallel 8" \
        in message
    assert "start it on a multiple of 8, e.g. 8-15" in message
    assert "fleets.colocated.endpoints[1].cores: range 20-27 starts at core 20" in message
    assert "e.g. 24-31" in message
    assert "log_retention_days" in message  # the other problem comes in the same report
    assert message.count("REDUCE_SCATTER") == 2


def test_the_suggested_start_stays_on_the_instance(tmp_path):
    # At TP 3, 61-63 would round up to 63-65, past core 63 of 64: the fix points down to 60-62.
    path = write(tmp_path, {"prefill": trn2("prefill", 3, "61-63"), "decode": trn2("decode", 3, "0-2")})
    with pytest.raises(ConfigError) as caught:
        load_config_file(path)
    assert "e.g. 60-62" in str(caught.value)
    assert "endpoints[0].cores" in str(caught.value) and "fleets.decode" not in str(caught.value)


@pytest.mark.parametrize("fleets", [
    # Aligned trn2 ranges, the tutorial's 0-3 and 32-63 among them, at LNC 2 and LNC 1.
    {"colocated": trn2("colocated", 4, "0-3", "32-35", roles=["prefill", "decode"])},
    {"prefill": trn2("prefill", 16, "16-31", lnc=1), "decode": trn2("decode", 32, "96-127", lnc=1)},
])
def test_aligned_trn2_ranges_pass(tmp_path, fleets):
    config = load_config_file(write(tmp_path, fleets))
    assert all(ep.first_core % f.tensor_parallel == 0
               for f in config.fleets.values() for ep in f.resolved_endpoints)


def test_gpu_ranges_are_not_held_to_the_trn2_rule(tmp_path):
    gpus = {"role": "colocated", "instance_type": "g6.12xlarge", "tensor_parallel": 2,
            "endpoints": [{"role": "prefill", "gpus": "1-2"}, {"role": "decode", "gpus": "0"}]}
    with pytest.raises(ConfigError) as caught:
        load_config_file(write(tmp_path, {"colocated": gpus}, engine="nixl"))
    # Only the size of the second range is wrong; the first one's offset is no mistake on a GPU type.
    assert "endpoints[1].gpus" in str(caught.value) and "endpoints[0]" not in str(caught.value)
