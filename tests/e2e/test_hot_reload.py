"""Policy edits while traffic flows: providers come and go with zero failed requests."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections import Counter

from tests.e2e.gateway import FakeProvider, Gateway, http, wait_until


def _ask(gateway: Gateway, model: str) -> int:
    body = json.dumps({"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}).encode()
    return http("POST", f"{gateway.url}/v1/messages", body, {"content-type": "application/json"})[0]


class Traffic:
    """A few client threads sending requests until stopped; counts statuses per model."""

    def __init__(self, gateway: Gateway, models: list[str], threads: int = 3) -> None:
        self.gateway = gateway
        self.models = models
        self.statuses: dict[str, Counter[int]] = {m: Counter() for m in models}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, index: int) -> None:
        while not self._stop.is_set():
            for model in self.models:
                self.statuses[model][_ask(self.gateway, model)] += 1

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def _with_extra_provider(policy: dict, fake: FakeProvider) -> dict:
    edited = copy.deepcopy(policy)
    edited["providers"].append(
        {
            "name": "fake-extra",
            "api": "anthropic",
            "base_url": fake.url,
            "models": [{"name": "extra-model", "id": "x1"}],
        }
    )
    return edited


def test_adding_and_removing_a_provider_under_load_fails_no_request(gateway: Gateway, fake: FakeProvider):
    original = copy.deepcopy(gateway.policy)
    assert _ask(gateway, "extra-model") == 404
    try:
        with Traffic(gateway, ["claude-sonnet-4-5", "gpt-4o"]) as traffic:
            time.sleep(0.5)
            gateway.write_policy(_with_extra_provider(original, fake))
            wait_until(lambda: _ask(gateway, "extra-model") == 200, 10, "the new provider to serve")
            assert "provider_fake-extra" in gateway.dynamic_clusters()
            # From the first success on, the new model keeps working: no request lands on a
            # cluster Envoy does not have yet.
            assert all(_ask(gateway, "extra-model") == 200 for _ in range(20))
            gateway.write_policy(original)
            statuses = []
            wait_until(
                lambda: statuses.append(_ask(gateway, "extra-model")) or statuses[-1] == 404,
                10,
                "the removed provider to be gone",
            )
            assert set(statuses) <= {200, 404}, f"a request failed during removal: {statuses}"
            wait_until(
                lambda: "provider_fake-extra" not in gateway.dynamic_clusters(), 10, "Envoy to drop the removed cluster"
            )
            time.sleep(0.3)
        for model, counts in traffic.statuses.items():
            assert set(counts) == {200}, f"{model}: {dict(counts)}"
            assert counts[200] > 10
    finally:
        gateway.write_policy(original)


def test_an_invalid_edit_is_rejected_and_traffic_continues(gateway: Gateway):
    original = copy.deepcopy(gateway.policy)
    broken = _with_extra_provider(original, FakeProvider(1, None))  # type: ignore[arg-type]
    broken["providers"][-1]["api"] = "openia"
    try:
        with Traffic(gateway, ["claude-sonnet-4-5"], threads=2) as traffic:
            gateway.write_policy(broken)
            wait_until(
                lambda: "must be one of anthropic, openai, gemini, responses, vertex, bedrock (got 'openia')" in gateway.log(),
                10,
                "the rejection to be logged",
            )
            assert f"{gateway.policy_path.name}:" in gateway.log()  # file:line:col precise
            gateway.write_policy("providers: [unclosed\n")
            wait_until(lambda: "invalid YAML" in gateway.log(), 10, "the YAML error to be logged")
            time.sleep(0.5)
        assert set(traffic.statuses["claude-sonnet-4-5"]) == {200}
        assert _ask(gateway, "extra-model") == 404  # nothing of the bad edit was applied
    finally:
        gateway.write_policy(original)
    wait_until(lambda: _ask(gateway, "claude-sonnet-4-5") == 200, 10, "the restored policy")
