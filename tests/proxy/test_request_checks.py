"""The proxy's own reading of a request: malformed bodies and out-of-bounds fields are a 400 naming each problem,
in-flight caps a 429 with Retry-After, and nothing a client sends becomes a traceback."""

from __future__ import annotations

import json

import pytest

from diproxy.admission import Admission
from diproxy.errors import ClientFacingError
from diproxy.request_checks import RequestLimits, check, parse_body

LIMITS = RequestLimits(max_model_len=4096, max_n=1, max_prompts=4, n_reason=" (one prefill per request)")
COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"


def refused(path: str, body: dict) -> str:
    with pytest.raises(ClientFacingError) as caught:
        check(path, body, LIMITS)
    assert caught.value.status == 400
    return caught.value.message


@pytest.mark.parametrize("raw, charset, code", [
    (b'{"prompt": "x", "temperature": NaN}', None, "invalid_json"),
    (b'{"prompt": "x", "top_p": Infinity}', None, "invalid_json"),
    (b"[" * 200_000 + b"]" * 200_000, None, "invalid_json"),
    (b'{"prompt": "x"}', "x-no-such-charset", "invalid_charset"),
    (b'{"prompt": "\xff"}', "utf-8", "invalid_encoding"),
    (b'["a list"]', None, "invalid_json"),
    (b"", None, "invalid_json"),
])
def test_bodies_no_json_object_can_be_read_from_are_a_400(raw, charset, code):
    with pytest.raises(ClientFacingError) as caught:
        parse_body(raw, charset)
    assert (caught.value.status, caught.value.code) == (400, code)


def test_a_good_body_is_read_in_its_charset():
    body = {"prompt": "é", "max_tokens": 3}
    assert parse_body(json.dumps(body, ensure_ascii=False).encode("latin-1"), "latin-1") == body


@pytest.mark.parametrize("body, words", [
    ({"prompt": "x", "stream": "false"}, "stream must be true or false"),
    ({"prompt": "x", "n": 2}, "n 2 is above 1 (one prefill per request)"),
    ({"prompt": "x", "best_of": 3}, "best_of 3 is above 1"),
    ({"prompt": "x", "n": 0}, "n must be a positive integer"),
    ({"prompt": "x", "n": True}, "n must be a positive integer"),
    ({"prompt": "x", "max_tokens": 4097}, "max_tokens 4097 is above the model's max_model_len 4096"),
    ({"prompt": "x", "max_tokens": "10"}, "max_tokens must be a positive integer"),
    ({"prompt": ["a"] * 5}, "prompt holds 5 prompts; at most 4"),
    ({"prompt": list(range(4097))}, "prompt has 4097 token ids"),
    ({"prompt": [[1, 2], "mixed"]}, "prompt must be a string"),
    ({"prompt": [-1, 2]}, "prompt must be a string"),
    ({"prompt": []}, "prompt must be a string"),
    ({}, "prompt must be a string"),
    ({"prompt": "x", "model": "../.."}, "model must be a model id"),
    ({"prompt": "x", "temperature": float("nan")}, "temperature must be a finite number"),
])
def test_each_out_of_bounds_completions_field_is_named(body, words):
    assert words in refused(COMPLETIONS, body)


def test_every_problem_is_named_at_once():
    message = refused(COMPLETIONS, {"prompt": 5, "stream": 1, "max_tokens": 0})
    assert "stream must be" in message and "max_tokens must be" in message and "prompt must be" in message


@pytest.mark.parametrize("body, words", [
    ({"messages": []}, "messages must be a non-empty list"),
    ({"messages": [{"content": "hi"}]}, "messages[0] must be an object with a string role"),
    ({"messages": "hi"}, "messages must be a non-empty list"),
])
def test_chat_messages_must_be_message_objects(body, words):
    assert words in refused(CHAT, body)


@pytest.mark.parametrize("path, body", [
    (COMPLETIONS, {"model": "meta-llama/Llama-3.3-70B-Instruct", "prompt": "a tornado is a", "max_tokens": 10,
                   "stream": False, "n": 1, "temperature": 0.0}),
    (COMPLETIONS, {"prompt": ["a", "b"], "stream": True, "stream_options": {"include_usage": True}}),
    (COMPLETIONS, {"prompt": [1, 2, 3]}),
    (COMPLETIONS, {"prompt": [[1, 2], [3]]}),
    (CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5}),
])
def test_well_formed_requests_pass(path, body):
    check(path, body, LIMITS)


def test_in_flight_caps_answer_429_with_retry_after_and_free_their_place():
    admission = Admission(max_in_flight=3, max_per_client=2, retry_after=7)
    with admission.admit("10.0.1.5"), admission.admit("10.0.1.5"):
        with pytest.raises(ClientFacingError) as per_client:
            with admission.admit("10.0.1.5"):
                pass
        assert (per_client.value.status, per_client.value.code) == (429, "client_at_capacity")
        assert per_client.value.headers == {"Retry-After": "7"}
        with admission.admit("10.0.1.6"):
            with pytest.raises(ClientFacingError) as whole:
                with admission.admit("10.0.1.7"):
                    pass
            assert whole.value.code == "proxy_at_capacity"
    assert admission.in_flight == 0 and admission.clients() == 0
    with admission.admit("10.0.1.5"):  # a place held by a request that failed is given back
        with pytest.raises(RuntimeError):
            with admission.admit("10.0.1.5"):
                raise RuntimeError("worker failed")
        assert admission.in_flight == 1
