"""The PD decider's thresholds and the migration plan's continuation requests."""

from __future__ import annotations

import pytest

from diproxy.cache_routing.migration import plan, refusal
from diproxy.cache_routing.pd_decider import PdDecider
from diproxy.cache_routing.picker import PrefixPicker
from tests.proxy.test_prefix_routing import W, chat


# -- PD decider -------------------------------------------------------------------------------------
def test_dynamo_defaults_both_bounds_strict():
    d = PdDecider()
    assert d.decode_alone(1000, 896)  # ai-dynamo conditional_disagg.rs test: eff_isl 104, ratio 0.104
    assert not d.decode_alone(200, 0)  # nothing cached: ratio 1.0
    assert not d.decode_alone(100_000, 64_000)  # 36k uncached: above 2048 even at a low ratio
    assert not d.decode_alone(10_000, 10_000 - 2048)  # exactly at the token bound: strict <, so prefill
    assert d.decode_alone(10_000, 10_000 - 2047)
    assert not d.decode_alone(1000, 300)  # ratio exactly 0.7: prefill
    assert d.decode_alone(1000, 301)
    assert d.decode_alone(0, 0)  # an empty prompt has nothing to prefill


def test_llm_d_style_token_only_threshold_and_off_switch():
    d = PdDecider(max_uncached_tokens=16, max_uncached_ratio=1.0)  # llm-d's nonCachedTokens 16
    assert d.decode_alone(5000, 4990) and not d.decode_alone(5000, 4984)
    assert not PdDecider(enabled=False).decode_alone(1000, 1000)
    with pytest.raises(ValueError):
        PdDecider(max_uncached_ratio=1.5)


def test_picker_decides_on_the_chosen_decode_workers_cached_prefix():
    workers = [W("10.0.0.2", 9000 + i) for i in range(2)]
    picker = PrefixPicker()
    system = "Long shared instructions. " * 400  # ~10k characters, ~2.5k tokens
    first = chat(system, "q1")
    keys = picker.request_keys(first)
    decode = picker.pick("decode", workers, keys)
    assert not picker.decode_alone(keys, decode)  # cold: the whole prompt is uncached
    picker.record("decode", decode.worker, keys)
    follow = chat(system, "q1", "a1", "q2")
    keys2 = picker.request_keys(follow)
    decode2 = picker.pick("decode", workers, keys2)
    assert decode2.worker is decode.worker and picker.decode_alone(keys2, decode2)


# -- migration ---------------------------------------------------------------------------------------
def test_completions_continuation_appends_text_and_reduces_the_budget():
    body = {"model": "m", "prompt": "Once upon", "max_tokens": 10, "min_tokens": 4, "stream": True,
            "kv_transfer_params": {"do_remote_prefill": True}}
    c = plan(body, "/v1/completions", " a time", 2, 0, limit=3)
    assert c is not None and c.attempt == 1 and c.usage_offset == 2 and not c.drop_role
    assert c.body["prompt"] == "Once upon a time"
    assert c.body["max_tokens"] == 8 and c.body["min_tokens"] == 2 and c.body["stream"] is True
    assert "kv_transfer_params" not in c.body  # the new pair gets its own
    assert body["max_tokens"] == 10  # the client's request is left as it was


def test_token_ids_give_an_exact_continuation():
    c = plan({"prompt": "hi", "max_tokens": 5}, "/v1/completions", " x y", 2, 0, 1,
             prompt_token_ids=[1, 2], sent_token_ids=[7, 8])
    assert c.body["prompt"] == [1, 2, 7, 8] and c.body["max_tokens"] == 3


def test_chat_continuation_continues_the_final_assistant_message():
    body = {"messages": [{"role": "user", "content": "Count"}], "max_completion_tokens": 6}
    c = plan(body, "/v1/chat/completions", "1 2 3", 3, 1, limit=2)
    assert c.body["messages"][-1] == {"role": "assistant", "content": "1 2 3"}
    assert c.body["continue_final_message"] is True and c.body["add_generation_prompt"] is False
    assert c.body["max_completion_tokens"] == 3 and c.attempt == 2 and c.drop_role
    assert len(body["messages"]) == 1


def test_limits_and_refusals():
    assert plan({"prompt": "p", "max_tokens": 5}, "/v1/completions", "", 1, 2, limit=2) is None  # limit reached
    assert plan({"prompt": "p", "max_tokens": 5}, "/v1/completions", "", 1, 0, limit=0) is None  # Dynamo's default
    assert plan({"prompt": "p", "max_tokens": 3}, "/v1/completions", "abc", 3, 0, limit=1) is None  # complete
    assert plan({"prompt": ["a", "b"]}, "/v1/completions", "x", 1, 0, limit=1) is None
    assert refusal({"n": 2}) == "n > 1"
    assert refusal({"best_of": 3}) == "n > 1"
    assert refusal({"response_format": {"type": "json_schema"}}) == "guided decoding"
    assert refusal({"guided_json": {"type": "object"}}) == "guided decoding"
    assert refusal({"tool_choice": "required"}) == "guided decoding"
    assert refusal({"echo": True}) == "echo or prompt_logprobs"
    assert refusal({"logprobs": 2, "seed": 4, "temperature": 0.7, "tool_choice": "auto"}) is None
