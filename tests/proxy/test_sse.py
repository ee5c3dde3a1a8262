"""SSE framing: the incremental decoder reads any split of a stream like one whole read, and the spliced id
rewrite gives the same JSON as decoding, rewriting and encoding again."""

from __future__ import annotations

import json

from diproxy.sse import EventDecoder, StreamEvent, parse_event, rewrite_id

STREAM = (b'data: {"id": "cmpl-up", "choices": [{"index": 0, "text": " caf\xc3\xa9"}]}\r\n\r\n'
          b": a comment\n"
          b"data: first line\ndata:second line\n\n"
          b'data: {"id":"cmpl-up","choices":[{"index":1,"text":"x"}]}\n\n'
          b"data: [DONE]\n\n"
          b"data: no blank line at the end")


def _decode(pieces: list[bytes]) -> list[tuple[str, object]]:
    decoder = EventDecoder()
    events = [event for piece in pieces for event in decoder.feed(piece)] + decoder.finish()
    return [(event.data, event.payload) for event in events]


def test_any_split_of_a_stream_gives_the_same_events() -> None:
    whole = _decode([STREAM])
    assert [data for data, _ in whole][1:] == ["first line\nsecond line", '{"id":"cmpl-up","choices":[{"index":1,'
                                               '"text":"x"}]}', "[DONE]", "no blank line at the end"]
    assert whole[0][1] == {"id": "cmpl-up", "choices": [{"index": 0, "text": " café"}]}
    for size in (1, 2, 3, 7, 50):
        assert _decode([STREAM[i:i + size] for i in range(0, len(STREAM), size)]) == whole, size


def _rewritten_the_slow_way(data: str, client_id: str) -> object:
    event = parse_event(data)
    rewrite_id(event.payload, client_id)
    return json.loads(event.encode()[len(b"data: "):])


def test_spliced_id_equals_a_full_rewrite() -> None:
    cases = [
        '{"id": "cmpl-up", "object": "text_completion", "choices": [{"index": 0, "text": " caf\u00e9 \\"q\\""}]}',
        '{"id":"cmpl-\\"odd\\"","choices":[]}',
        '{"object": "x", "id": "cmpl-up", "choices": []}',  # id not first: encoded again
        '{"id": "cmpl-up", "choices": [{"delta": {"tool_calls": [{"id": "call-1"}]}}]}',  # nested id kept
        '{"id": "cmpl-a", "id": "cmpl-b"}',  # duplicate: readers keep the last
        '{"id": "cmpl-up",\n"choices": []}',  # a multi-line data field
        '{"choices": []}',
    ]
    for data in cases:
        encoded = parse_event(data).encode_with_id("cmpl-client")
        assert encoded.startswith(b"data: ") and encoded.endswith(b"\n\n") and encoded.count(b"\n") == 2, data
        assert json.loads(encoded[len(b"data: "):]) == _rewritten_the_slow_way(data, "cmpl-client"), data


def test_non_json_and_done_events_pass_unchanged() -> None:
    assert parse_event("[DONE]").encode_with_id("cmpl-client") == b"data: [DONE]\n\n"
    assert StreamEvent("plain text").encode_with_id("cmpl-client") == b"data: plain text\n\n"
