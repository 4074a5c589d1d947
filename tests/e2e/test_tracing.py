"""Tracing through the real gateway into an OTLP receiver started here: one trace holds Envoy's spans
(the request, each upstream attempt, the calls to the decision service) and the decision service's
(the decision with its routing, each attempt's rewrite), for a translated request whose first
provider fails and whose fallback answers; a client's traceparent is continued; a failed request
is exported even when Envoy did not sample it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.e2e.gateway import FakeProvider, Gateway, free_port, wait_until
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def fakes(workdir: Path) -> Iterator[dict[str, FakeProvider]]:
    started = {name: FakeProvider.start(workdir) for name in ("primary", "backup")}
    yield started
    for fake in started.values():
        fake.stop()


def policy(port: int, fakes: dict[str, FakeProvider], receiver: OtlpReceiver, sample: float) -> dict:
    return {
        "listener": {"address": "127.0.0.1", "port": port},
        "providers": [
            {"name": "primary", "api": "anthropic", "base_url": fakes["primary"].url, "models": ["claude-primary"]},
            {"name": "backup", "api": "openai", "base_url": f"{fakes['backup'].url}/v1", "models": ["gpt-backup"]},
        ],
        "fallback": {"primary,claude-primary": ["backup,gpt-backup"]},
        "tracing": {"otlp": receiver.endpoint, "sample": sample, "service_name": "ccr-test"},
    }


@pytest.fixture(scope="module")
def traced(workdir: Path, fakes: dict[str, FakeProvider], receiver: OtlpReceiver) -> Iterator[Gateway]:
    gateway = Gateway.start(workdir, policy(free_port(), fakes, receiver, 1.0), name="traced", workers=1)
    yield gateway
    gateway.stop()


def trace_of(receiver: OtlpReceiver, trace_id: str, services: set[str], names: set[str]) -> list[ReceivedSpan]:
    """The trace's spans once every service and span name has arrived (Envoy exports every 5 s)."""

    def arrived() -> list[ReceivedSpan] | None:
        spans = receiver.traces().get(trace_id, [])
        have = {span.service for span in spans}, {span.name for span in spans}
        return spans if services <= have[0] and names <= have[1] else None

    return wait_until(arrived, 15, f"the spans of trace {trace_id}", interval=0.25)


def test_a_fallen_back_translated_request_is_one_trace_across_envoy_and_python(traced, fakes, receiver) -> None:
    fakes["primary"].configure(status=500)
    try:
        client = anthropic.Anthropic(base_url=traced.url, api_key="sk-ant-x", max_retries=0)
        raw = client.messages.with_raw_response.create(
            model="claude-primary", max_tokens=16, messages=[{"role": "user", "content": "trace me"}]
        )
    finally:
        fakes["primary"].configure(status=0)
    assert raw.status_code == 200 and "attempts=2" in raw.headers["x-ccr-route"]
    trace_id = raw.headers["x-ccr-trace-id"]
    spans = trace_of(
        receiver, trace_id, {"ccr-test", "ccr-test-extproc"}, {"ingress", "ccr.decide", "ccr.route", "ccr.attempt"}
    )
    by_id = {span.span_id: span for span in spans}
    envoy = [span for span in spans if span.service == "ccr-test"]
    python = [span for span in spans if span.service == "ccr-test-extproc"]
    (ingress,) = [span for span in envoy if span.name == "ingress"]
    # Both provider attempts are spans of Envoy's, and each one's rewrite a span of ours under it.
    attempts = [span for span in envoy if span.name.startswith("router ")]
    assert len(attempts) == 2, [span.name for span in envoy]
    rewrites = [span for span in python if span.name == "ccr.attempt"]
    assert len(rewrites) == 2 and {by_id[span.parent_id].span_id for span in rewrites} <= {a.span_id for a in envoy}
    # The decision: a child of Envoy's call to the hop, itself a child of the request.
    (decide,) = [span for span in python if span.name == "ccr.decide"]
    hop_call = by_id[decide.parent_id]
    assert hop_call.service == "ccr-test" and hop_call.parent_id == ingress.span_id
    assert decide.attribute("gen_ai.provider.name") == "primary"
    assert decide.attribute("ccr.fallback_chain") == "primary,backup"
    (route,) = [span for span in python if span.name == "ccr.route"]
    assert route.parent_id == decide.span_id and route.attribute("gen_ai.request.model") == "claude-primary"
    # Every span's parent is in the trace, but the request's own (a new trace: no client parent).
    assert all(span.parent_id in by_id for span in spans if span is not ingress)


def test_a_clients_traceparent_is_continued(traced, receiver) -> None:
    client = anthropic.Anthropic(base_url=traced.url, api_key="sk-ant-x", max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="claude-primary",
        max_tokens=16,
        messages=[{"role": "user", "content": "continue my trace"}],
        extra_headers={"traceparent": f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"},
    )
    assert raw.headers["x-ccr-trace-id"] == CLIENT_TRACE
    spans = trace_of(receiver, CLIENT_TRACE, {"ccr-test", "ccr-test-extproc"}, {"ingress", "ccr.decide"})
    (ingress,) = [span for span in spans if span.name == "ingress"]
    assert ingress.parent_id == "00f067aa0ba902b7"


def test_a_failed_request_is_exported_though_envoy_did_not_sample_it(workdir, fakes, receiver: OtlpReceiver) -> None:
    """Sampling 0: nothing of a good request is exported; a failed one's decision-service spans are."""
    gateway = Gateway.start(workdir, policy(free_port(), fakes, receiver, 0.0), name="unsampled", workers=1)
    try:
        client = anthropic.Anthropic(base_url=gateway.url, api_key="sk-ant-x", max_retries=0)
        good = client.messages.with_raw_response.create(
            model="gpt-backup", max_tokens=16, messages=[{"role": "user", "content": "fine"}]
        )
        fakes["backup"].configure(status=500)
        try:
            with pytest.raises(anthropic.InternalServerError) as failed:
                client.messages.create(model="gpt-backup", max_tokens=16, messages=[{"role": "user", "content": "x"}])
        finally:
            fakes["backup"].configure(status=0)
        failed_trace = failed.value.response.headers["x-ccr-trace-id"]
        # The failure is in the answer, read by /respond: its spans are kept, in the decision's trace
        # (whose own span had ended before anything failed, unsampled, and is not there).
        spans = trace_of(receiver, failed_trace, {"ccr-test-extproc"}, {"ccr.respond"})
        (respond,) = [span for span in spans if span.name == "ccr.respond"]
        assert respond.span.status.message == "provider backup answered 500"
        time.sleep(1.5)  # the exporter's flush: the good request's spans would have come by now
        assert good.headers["x-ccr-trace-id"] not in receiver.traces()
    finally:
        gateway.stop()
