"""The LMCache protocol through the proxy (real etcd), against fake workers that speak LMCache's NIXL PD flow: the
decode picked first and named in prefill's kv_transfer_params.disagg_spec (LMCache/LMCache examples/disagg_prefill/
xpyd/disagg_proxy_server_first_token_from_decoder_xpyd.py@c5f9daee), prefill with one token and no stream, then the
client's request to decode; retries of the pair, errors passed through, xPyD selection, the per-role load."""

from __future__ import annotations

import asyncio

from diproxy.protocols.lmcache import receiver_ports
from diproxy.testing.fake_worker import Behaviour, FakeWorker
from diproxy.testing.harness import RunningProxy
from tests.proxy.conftest import di_stack, di_flags, post_stream, run, wait_until


def _stack(etcd: str, prefix: str, prefills: list[Behaviour], decodes: list[Behaviour], *flags: str):
    return di_stack("lmcache", etcd, prefix, prefills, decodes, *flags)


def _spec_for(decode: FakeWorker, req_id: str, tp: int = 1) -> dict:
    init, alloc = receiver_ports(decode.port, tp)
    return {"req_id": req_id, "receiver_host": decode.host, "receiver_init_port": init, "receiver_alloc_port": alloc}


def test_receiver_ports_follow_the_decode_endpoints_http_port_one_pair_per_rank() -> None:
    assert receiver_ports(8000, 1) == ([9000], [10000])
    assert receiver_ports(8001, 4) == ([9001, 9101, 9201, 9301], [10001, 10101, 10201, 10301])
    assert receiver_ports(7200, 2, 100, 200, 1) == ([7300, 7301], [7400, 7401])  # LMCache's example layout


def test_streaming_and_whole_answers_follow_the_lmcache_flow(etcd, prefix) -> None:
    async def scenario() -> None:
        async with _stack(etcd.address, prefix, [Behaviour(tokens=5)], [Behaviour(tokens=5)]) as (
                (prefill,), (decode,), proxy, session):
            body = {"model": "m", "prompt": "hello", "max_tokens": 5, "min_tokens": 2, "temperature": 0,
                    "stream_options": {"include_usage": True},
                    "kv_transfer_params": {"disagg_spec": {"receiver_host": "10.9.9.9"}}}
            result = await post_stream(session, proxy.url + "/v1/completions", body)
            assert result.status == 200, result.raw
            client_body = {**body, "stream": True}
            del client_body["kv_transfer_params"]
            p_req, d_req = prefill.requests[-1], decode.requests[-1]
            uid = p_req.request_id
            # Prefill: one token, not streamed, no stream_options or min_tokens, the decode's receiver named.
            assert p_req.body == {"model": "m", "prompt": "hello", "max_tokens": 1, "temperature": 0, "stream": False,
                                  "kv_transfer_params": {"disagg_spec": _spec_for(decode, uid)}}
            # Decode: the client's request as it came, minus the client's own kv_transfer_params; after prefill.
            assert d_req.body == client_body and d_req.request_id == uid and p_req.at <= d_req.at
            assert (decode.lmcache_hits, decode.lmcache_misses) == (1, 0)
            assert result.texts == [" D0", " D1", " D2", " D3", " D4"] and result.events.count("[DONE]") == 1
            assert {e["id"] for e in result.events if isinstance(e, dict)} == {f"cmpl-{uid}"}

            chat = {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 3,
                    "min_completion_tokens": 1}
            async with session.post(proxy.url + "/v1/chat/completions", json=chat) as r:
                assert r.status == 200
                answer = await r.json()
            sent = prefill.requests[-1].body
            assert (sent["max_tokens"], sent["max_completion_tokens"], sent["stream"]) == (1, 1, False)
            assert "min_completion_tokens" not in sent and decode.requests[-1].body == chat
            assert answer["id"] == f"chatcmpl-{prefill.requests[-1].request_id}"
            assert answer["choices"][0]["message"]["content"] == " D0 D1 D2"
            assert (decode.lmcache_hits, decode.lmcache_misses) == (2, 0)

    run(scenario)


def test_prefill_failure_is_retried_on_another_prefill_for_the_same_receiver(etcd, prefix) -> None:
    async def scenario() -> None:
        async with _stack(etcd.address, prefix, [Behaviour(fail="status500"), Behaviour(tokens=3)],
                          [Behaviour(tokens=3)], "--selection", "round-robin") as (
                (broken, good), (decode,), proxy, session):
            results = [await post_stream(session, proxy.url + "/v1/completions", {"prompt": f"x{i}"})
                       for i in range(3)]
            assert all(r.status == 200 and r.done and r.texts == [" D0", " D1", " D2"] for r in results)
            assert broken.requests and len(good.requests) == 3 and len(decode.requests) == 3
            for lost in broken.requests:  # the retry names the same (only) decoder, under a new id
                retried = next(q for q in good.requests if q.body["prompt"] == lost.body["prompt"])
                assert retried.body["kv_transfer_params"]["disagg_spec"] == _spec_for(decode, retried.request_id)
                assert retried.request_id != lost.request_id
            assert (decode.lmcache_hits, decode.lmcache_misses) == (3, 0)
            assert proxy.state.metrics.retries.value() == len(broken.requests)
            assert proxy.state.metrics.errors.value("upstream_status") == len(broken.requests)

    run(scenario)


def test_decode_error_is_passed_through_not_retried(etcd, prefix) -> None:
    async def scenario() -> None:
        refusing = Behaviour(fail="error_event", error_status=400, error_message="prompt too long")
        async with _stack(etcd.address, prefix, [Behaviour()], [refusing]) as (
                (prefill,), (decode,), proxy, session):
            result = await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x", "max_tokens": 3})
            assert result.status == 400 and "prompt too long" in result.raw
            async with session.post(proxy.url + "/v1/completions", json={"prompt": "y", "max_tokens": 3}) as r:
                assert r.status == 400 and (await r.json())["error"]["message"] == "prompt too long"
            assert len(decode.requests) == 2 and len(prefill.requests) == 2, "a client error is not retried"
            assert proxy.state.metrics.retries.value() == 0

    run(scenario)


def test_xpyd_pairs_each_prefill_with_the_decode_it_names_and_uses_every_worker(etcd, prefix) -> None:
    async def scenario() -> None:
        pace = Behaviour(tokens=3, token_interval=0.005)
        async with _stack(etcd.address, prefix, [pace, pace], [pace, pace], "--selection", "round-robin",
                          "--lmcache-decode-tp", "2") as (prefills, decodes, proxy, session):
            results = await asyncio.gather(*(post_stream(session, proxy.url + "/v1/completions", {"prompt": f"q{i}"})
                                             for i in range(8)))
            assert all(r.status == 200 and r.done and len(r.texts) == 3 for r in results)
            assert [len(w.requests) for w in prefills + decodes] == [4, 4, 4, 4]
            by_id = {q.request_id: d for d in decodes for q in d.requests}
            for p in prefills:
                for q in p.requests:  # the receiver a prefill was told is the decode that got the request
                    assert q.body["kv_transfer_params"]["disagg_spec"] == _spec_for(by_id[q.request_id],
                                                                                    q.request_id, tp=2)
            assert [(d.lmcache_hits, d.lmcache_misses) for d in decodes] == [(4, 0), (4, 0)]
            load = proxy.state.metrics.load
            assert (load.requests["prefill"].value, load.requests["decode"].value) == (0, 0)

    run(scenario)


def test_decode_dying_before_first_byte_prefills_again_for_the_next_decoder(etcd, prefix) -> None:
    async def scenario() -> None:
        async with _stack(etcd.address, prefix, [Behaviour(tokens=3)],
                          [Behaviour(tokens=3, fail="die"), Behaviour(tokens=3)], "--selection", "round-robin") as (
                (prefill,), (dying, good), proxy, session):
            results = [await post_stream(session, proxy.url + "/v1/completions", {"prompt": f"x{i}"})
                       for i in range(2)]
            assert all(r.status == 200 and r.done and r.texts == [" D10", " D11", " D12"] for r in results)
            assert dying.requests and len(good.requests) == 2
            # The KV went to the dead decoder's receiver: the retry prefills again, naming the next one.
            assert len(prefill.requests) == 2 + len(dying.requests)
            for lost in dying.requests:
                asked = [q.body["kv_transfer_params"]["disagg_spec"] for q in prefill.requests
                         if q.body["prompt"] == lost.body["prompt"]]
                assert asked == [_spec_for(dying, lost.request_id), _spec_for(good, asked[1]["req_id"])]
            assert proxy.state.metrics.retries.value() == len(dying.requests)

    run(scenario)


# -- LMCache's "transfer done" reports (diproxy/protocols/lmcache/notify.py) ------------------------------------------------


def test_lmcaches_proxy_notif_wire_format_is_decoded_and_anything_else_refused() -> None:
    import msgspec
    import pytest

    from diproxy.protocols.lmcache.notify import decode_notification, encode_notification

    # pd_backend.py@07e07869: ProxyNotif(PDMsgBase) with PDMsgBase(msgspec.Struct, tag=True), msgspec.msgpack.encode:
    # a map {"type": "ProxyNotif", "req_id": ...} (msgspec's tag field "type", tag the class name).
    assert msgspec.msgpack.decode(encode_notification("abc")) == {"type": "ProxyNotif", "req_id": "abc"}
    assert decode_notification(msgspec.msgpack.encode({"type": "ProxyNotif", "req_id": "r1"})) == "r1"
    assert decode_notification(msgspec.msgpack.encode({"type": "NixlProxyNotif", "req_id": "r2"})) == "r2"
    for bad in (b"", b"\xc1", msgspec.msgpack.encode({"req_id": "r"}), msgspec.msgpack.encode("r"),
                msgspec.msgpack.encode({"type": "AllocResponse", "already_sent_indexes": [], "remote_indexes": []}),
                msgspec.msgpack.encode({"type": "ProxyNotif", "req_id": 7}),
                msgspec.msgpack.encode({"type": "ProxyNotif", "req_id": ""})):
        with pytest.raises(msgspec.DecodeError):
            decode_notification(bad)


def test_unclaimed_reports_expire_and_stay_bounded() -> None:
    from diproxy.protocols.lmcache.notify import TransferNotices

    now = [0.0]
    notices = TransferNotices(ttl=10.0, max_pending=3, clock=lambda: now[0])
    for i in range(5):
        notices.arrived(f"r{i}")
    assert len(notices) == 3 and notices.unclaimed == 2  # the oldest pushed out
    notices.arrived("r4")  # a second rank's report counts on the same entry
    now[0] = 11.0
    notices.arrived("late")
    assert len(notices) == 1 and notices.unclaimed == 5

    async def claim() -> None:
        assert await notices.wait("late", 1, 0.01) == 1  # arrived before the wait: counted, entry taken
        assert await notices.wait("never", 2, 0.01) == 0
        notices.arrived("never")  # after its request gave up: kept as unclaimed, expires later
        assert len(notices) == 1

    run(claim)


def test_decode_is_called_only_after_the_transfer_done_report(etcd, prefix) -> None:
    async def scenario() -> None:
        slow = Behaviour(tokens=3, lmcache_notify_delay=0.3)
        async with _stack(etcd.address, prefix, [slow], [Behaviour(tokens=3)]) as (
                (prefill,), (decode,), proxy, session):
            result = await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x", "max_tokens": 3})
            assert result.status == 200 and result.done and result.texts == [" D0", " D1", " D2"]
            (req_id, reported_at), = prefill.lmcache_notified
            assert req_id == prefill.requests[-1].request_id == decode.requests[-1].request_id
            answered_by = prefill.requests[-1].at
            assert decode.requests[-1].at >= reported_at >= answered_by + 0.3
            assert (decode.lmcache_hits, decode.lmcache_misses) == (1, 0)  # the KV had landed
            # A report sent before prefill's answer (LMCache sends it while serving) is counted too: no wait.
            prefill.behaviour = Behaviour(tokens=3, lmcache_notify="before")
            result = await post_stream(session, proxy.url + "/v1/completions", {"prompt": "y", "max_tokens": 3})
            assert result.status == 200 and (decode.lmcache_hits, decode.lmcache_misses) == (2, 0)
            assert proxy.state.protocol.transfer_timeouts.value() == 0
            assert len(proxy.state.protocol.listener.notices) == 0  # every report claimed

    run(scenario)


def test_missing_report_times_out_quickly_and_the_request_still_succeeds(etcd, prefix, caplog) -> None:
    async def scenario() -> None:
        silent = Behaviour(tokens=3, lmcache_notify="never")
        async with _stack(etcd.address, prefix, [silent], [Behaviour(tokens=3)],
                          "--lmcache-transfer-timeout", "0.2") as ((prefill,), (decode,), proxy, session):
            loop = asyncio.get_running_loop()
            for prompt in ("a", "b"):
                start = loop.time()
                result = await post_stream(session, proxy.url + "/v1/completions", {"prompt": prompt})
                assert result.status == 200 and result.done and len(result.texts) == 3
                assert 0.2 <= loop.time() - start < 1.5
            assert not prefill.lmcache_notified and decode.lmcache_misses == 2  # decode recomputed
            assert proxy.state.protocol.transfer_timeouts.value() == 2
            assert proxy.state.metrics.retries.value() == 0 and not proxy.state.metrics.errors.values
            async with session.get(proxy.url + "/metrics") as r:
                assert "diproxy_lmcache_transfer_timeouts_total 2" in await r.text()

    with caplog.at_level("WARNING", logger="diproxy.protocols.lmcache"):
        run(scenario)
    warnings = [r for r in caplog.records if "without every KV transfer reported done" in r.getMessage()]
    assert len(warnings) == 1, "logged once per interval, not per request"


def test_tp2_waits_for_both_ranks_reports(etcd, prefix) -> None:
    async def scenario() -> None:
        one_rank = Behaviour(tokens=2, lmcache_notify_ranks=1)
        async with _stack(etcd.address, prefix, [Behaviour(tokens=2, lmcache_notify_delay=0.2)],
                          [Behaviour(tokens=2)], "--lmcache-decode-tp", "2", "--lmcache-transfer-timeout", "0.3") as (
                (prefill,), (decode,), proxy, session):
            result = await post_stream(session, proxy.url + "/v1/completions", {"prompt": "two"})
            assert result.status == 200 and result.done
            reports = [at for _, at in prefill.lmcache_notified]
            assert len(reports) == 2 and decode.requests[-1].at >= max(reports)
            assert proxy.state.protocol.transfer_timeouts.value() == 0
            prefill.behaviour = one_rank  # one of two ranks reports: the wait runs out
            result = await post_stream(session, proxy.url + "/v1/completions", {"prompt": "one"})
            assert result.status == 200 and result.done
            assert len(prefill.lmcache_notified) == 3
            assert proxy.state.protocol.transfer_timeouts.value() == 1

    run(scenario)


def test_malformed_messages_are_ignored_and_counted(etcd, prefix) -> None:
    import msgspec
    import zmq
    import zmq.asyncio

    async def scenario() -> None:
        async with _stack(etcd.address, prefix, [Behaviour(tokens=2)], [Behaviour(tokens=2)]) as (
                _, (decode,), proxy, session):
            context = zmq.asyncio.Context()
            push = context.socket(zmq.PUSH)
            push.connect(f"tcp://{proxy.lmcache_notify}")
            try:
                await push.send(b"not msgpack \xc1")
                await push.send(msgspec.msgpack.encode({"type": "AllocRequest", "keys": []}))
                await push.send_multipart([b"two", b"frames"])
                await push.send(msgspec.msgpack.encode({"type": "ProxyNotif", "req_id": "nobody-waits"}))
                metrics = proxy.state.metrics
                listener = proxy.state.protocol.listener
                await wait_until(lambda: listener.received == 1, what="the valid report")
                assert metrics.errors.value("lmcache_notify_malformed") == 3 == listener.malformed
                assert len(listener.notices) == 1  # kept until it expires
            finally:
                push.close(linger=0)
                context.term()
            result = await post_stream(session, proxy.url + "/v1/completions", {"prompt": "still works"})
            assert result.status == 200 and result.done and decode.lmcache_hits == 1
            assert proxy.state.protocol.transfer_timeouts.value() == 0

    run(scenario)


def test_notification_socket_only_with_engine_lmcache_and_a_taken_port_fails_the_start(etcd, prefix) -> None:
    import pytest
    import zmq

    async def scenario() -> None:
        async with RunningProxy(di_flags("nixl", etcd.address, prefix)) as nixl:
            assert not nixl.state.side_services and nixl.lmcache_notify is None
        async with RunningProxy(di_flags("lmcache", etcd.address, prefix)) as first:
            port = first.state.protocol.listener.port
            taken = RunningProxy(di_flags("lmcache", etcd.address, prefix, "--lmcache-notify-port", str(port)))
            with pytest.raises(zmq.ZMQError):
                await taken.start()
            await taken.stop()

    run(scenario)
