"""Tracing: the span core (ccr.v1.tracing), its OTLP exporter (extproc.tracing_export) against an
in-test collector, the policy's ``tracing:`` section and what it gives Envoy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccr.v1 import log_context, tracing
from control_plane.policy import PolicyError, load_policy
from control_plane.resources.gateway import listener
from control_plane.resources.tracing import OTLP_CLUSTER, otlp_cluster
from extproc.routing_table import TracingSettings, compile_policy
from extproc.tracing_export import OtlpExporter, TracingFollower, to_proto
from tests.e2e.gateway import wait_until
from tests.otlp_receiver import OtlpReceiver

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
UNSAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"


@pytest.fixture
def exported() -> Iterator[list[list[tracing.Span]]]:
    batches: list[list[tracing.Span]] = []
    tracing.configure(batches.append, "test-extproc", sample=0.0)
    yield batches
    tracing.configure(None)


# --- trace context --------------------------------------------------------------------------------


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=8, max_size=8), st.booleans())
def test_a_traceparent_reads_back_as_written(trace_id: bytes, span_id: bytes, sampled: bool) -> None:
    parsed = tracing.parse_traceparent(tracing.format_traceparent(trace_id, span_id, sampled))
    if any(trace_id) and any(span_id):
        assert parsed == tracing.TraceContext(trace_id, span_id, sampled)
    else:
        assert parsed is None  # all-zero ids are invalid: a new trace starts instead


@pytest.mark.parametrize(
    "value",
    [None, "", "garbage", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", PARENT.replace("4bf9", "zzzz")],
)
def test_a_traceparent_that_is_not_one_is_ignored(value: str | None) -> None:
    assert tracing.parse_traceparent(value) is None


# --- spans -------------------------------------------------------------------------------------


def test_with_tracing_off_every_call_is_a_no_op() -> None:
    tracing.configure(None)
    assert tracing.begin("ccr.decide", PARENT) is None
    assert tracing.span("ccr.route") is tracing.NO_SPAN
    tracing.end(None)
    assert tracing.current() is None and tracing.trace_id() == ""


def test_a_sampled_requests_spans_are_exported_as_one_trace(exported) -> None:
    opened = tracing.begin("ccr.decide", PARENT)
    assert tracing.trace_id() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert log_context.current()["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"  # log lines name it
    with tracing.span("ccr.route", attributes={"gen_ai.request.model": "m"}) as route:
        route.set("ccr.scenario", "default")
        with tracing.span("ccr.inner"):
            pass
    tracing.end(opened)
    (batch,) = exported
    by_name = {span.name: span for span in batch}
    root = by_name["ccr.decide"]
    assert root.parent_id.hex() == "00f067aa0ba902b7" and root.kind == tracing.SERVER
    assert by_name["ccr.route"].parent_id == root.span_id
    assert by_name["ccr.inner"].parent_id == by_name["ccr.route"].span_id
    assert by_name["ccr.route"].attributes == {"gen_ai.request.model": "m", "ccr.scenario": "default"}
    assert all(span.end_ns >= span.start_ns > 0 for span in batch)
    assert tracing.current() is None and "trace_id" not in log_context.current()


def test_an_unsampled_request_is_exported_only_when_it_failed(exported) -> None:
    tracing.end(tracing.begin("ccr.decide", UNSAMPLED))
    assert exported == []
    opened = tracing.begin("ccr.respond", UNSAMPLED)
    tracing.end(opened, error="provider p answered 500")
    (batch,) = exported
    assert batch[0].error == "provider p answered 500"


def test_an_exception_marks_its_span_not_the_whole_request(exported) -> None:
    opened = tracing.begin("ccr.decide", UNSAMPLED)
    with pytest.raises(LookupError), tracing.span("ccr.route"):
        raise LookupError("no such model")
    tracing.end(opened)
    assert exported == []  # a client's 4xx: not a failure to keep


async def test_a_root_handed_to_a_task_ends_there_and_leaves_the_connection_clean(exported) -> None:
    opened = tracing.begin("ccr.decide", PARENT)

    async def later() -> None:
        with tracing.span("ccr.cache.lookup"):
            await asyncio.sleep(0)
        tracing.end(opened)

    task = asyncio.get_running_loop().create_task(later())
    tracing.detach(opened)
    assert tracing.current() is None  # the next request on this connection starts clean
    await task
    assert {span.name for span in exported[0]} == {"ccr.decide", "ccr.cache.lookup"}


def test_background_work_is_a_trace_of_its_own_sampled_at_the_ratio(exported) -> None:
    with tracing.background("ccr.ledger.publish", tracing.PRODUCER, {"messaging.system": "rabbitmq"}):
        pass
    assert exported == []  # ratio 0
    tracing.configure(exported.append, "test", sample=1.0)
    with tracing.background("ccr.ledger.publish", tracing.PRODUCER, {"messaging.system": "rabbitmq"}) as span:
        assert span.parent_id == b""
    assert exported[0][0].attributes == {"messaging.system": "rabbitmq"}


# --- export -------------------------------------------------------------------------------------


def test_spans_become_otlp_with_status_and_typed_attributes(exported) -> None:
    opened = tracing.begin("ccr.decide", PARENT)
    assert opened is not None
    opened[0].set("ccr.cache.hit", True)
    opened[0].set("http.response.status_code", 503)
    opened[0].set("ccr.ratio", 0.5)
    tracing.end(opened, error="no provider")
    (message,) = to_proto(exported[0])
    values = {item.key: item.value.WhichOneof("value") for item in message.attributes}
    assert values == {
        "ccr.cache.hit": "bool_value",
        "http.response.status_code": "int_value",
        "ccr.ratio": "double_value",
    }
    assert message.status.code == message.status.STATUS_CODE_ERROR and message.status.message == "no provider"
    assert message.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_the_exporter_delivers_to_a_collector_and_survives_one_that_is_away() -> None:
    with OtlpReceiver() as receiver:
        exporter = OtlpExporter(receiver.endpoint, "ccr-test-extproc")
        tracing.configure(exporter, "ccr-test-extproc")
        try:
            tracing.end(tracing.begin("ccr.decide", PARENT))
            spans = wait_until(lambda: receiver.spans() or None, 10, "the span at the collector", interval=0.1)
            assert (spans[0].service, spans[0].name) == ("ccr-test-extproc", "ccr.decide")
        finally:
            tracing.configure(None)
            exporter.close()
    away = OtlpExporter("http://127.0.0.1:1", "nobody")  # nothing listens: spans dropped, never raised
    away(exported_spans := [tracing.Span("x", tracing._Trace(b"\1" * 16, True), b"\1" * 8, b"", 1, 1, 2)])
    started = time.monotonic()
    away.close(timeout=5)
    assert exported_spans and time.monotonic() - started < 5


def test_the_follower_switches_with_the_policy() -> None:
    follower = TracingFollower()
    follower.install(TracingSettings("http://127.0.0.1:4317", 0.1, "ccr"))
    assert tracing.enabled() and tracing.service_name() == "ccr-extproc"
    follower.install(TracingSettings("http://127.0.0.1:4317", 0.1, "ccr"))  # unchanged: same exporter
    follower.install(None)
    assert not tracing.enabled()
    follower.close()


# --- policy and Envoy ---------------------------------------------------------------------------

PROVIDERS = "providers: [{name: a, api: openai, base_url: 'http://127.0.0.1:1/v1', models: [m]}]\n"


def test_the_policys_tracing_reaches_envoy_and_the_workers() -> None:
    policy = load_policy(PROVIDERS + "tracing: {otlp: 'collector.internal:4317', sample: 25%, service_name: gw}\n")
    assert (policy.tracing.host, policy.tracing.port, policy.tracing.sample) == ("collector.internal", 4317, 0.25)
    hcm = listener(policy).filter_chains[0].filters[0].typed_config
    assert b"envoy.tracers.opentelemetry" in hcm.value and OTLP_CLUSTER.encode() in hcm.value
    cluster = otlp_cluster(policy.tracing)
    assert cluster.name == OTLP_CLUSTER and cluster.type == cluster.STRICT_DNS
    table = compile_policy(policy.to_proto("1"), environ={})
    assert table.tracing == TracingSettings("http://collector.internal:4317", 0.25, "gw")
    assert compile_policy(load_policy(PROVIDERS).to_proto("1"), environ={}).tracing is None


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("{sample: 1}", "gw.yaml:2:10: tracing.otlp: is required"),
        ("{otlp: 'collector'}", "gw.yaml:2:17: tracing.otlp: must be host:port or http(s)://host:port"),
        ("{otlp: 'http://c:4317/v1/traces'}", "gw.yaml:2:17: tracing.otlp: must name only the collector's host"),
        ("{otlp: 'c:4317', sample: 150%}", "gw.yaml:2:35: tracing.sample: must be a share from 0 to 1"),
    ],
)
def test_tracing_mistakes_are_reported_with_their_line(written: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(PROVIDERS + f"tracing: {written}\n", "gw.yaml")
    assert str(caught.value.problems[0]).startswith(message), caught.value.problems
