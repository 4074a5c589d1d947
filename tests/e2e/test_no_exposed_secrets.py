"""Zero exposed credentials, beyond the logs (tests/e2e/log_secrets.py scans those for the whole run):
a gateway with provider keys (from the environment, and one from Vault that Envoy injects from an
SDS secret), virtual keys and tracing on is sent good, bad and failing requests,
then everything it shows or writes is scanned for any credential the test gave it: the metrics page
(labels), Envoy's stats and config_dump, the policy as ext_proc receives it over xDS, the spans it
exported, the files of its run directory and state file, and its answers' headers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest
from google.protobuf import json_format

from ccr_gateway import state_file
from control_plane.policy import load_policy_file
from extproc.auth.key_store import SqliteKeyStore
from extproc.auth.keys import new_key
from tests.e2e.gateway import PROVIDER_KEYS, FakeProvider, Gateway, base_policy, free_port, http, wait_until
from tests.e2e.log_secrets import _SHAPES
from tests.otlp_receiver import OtlpReceiver
from tests.vault_double import VaultDouble, threaded_double

# A provider-shaped key a client sends as its own (passthrough callers do), and a forged virtual key.
CLIENT_PROVIDER_KEY = "sk-ant-api03-client-secret-0123456789abcdefghij"
FORGED_KEY = "sk-ccr-abcdefgh_" + "x" * 43
# Gemini's key comes from Vault: the control plane serves it to Envoy as an SDS generic secret.
VAULT_KEY = "gemini-vault-exposure-key-7f3a9c"
VAULT_TOKEN = "hvs.exposure-root-token"


@pytest.fixture(scope="module")
def vault() -> Iterator[VaultDouble]:
    with threaded_double(root_token=VAULT_TOKEN) as double, pytest.MonkeyPatch.context() as patch:
        double.put_secret("providers/gemini", {"key": VAULT_KEY})
        patch.setenv("VAULT_TOKEN", VAULT_TOKEN)  # Gateway.start passes its environment to `up`
        yield double


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def presented(workdir: Path) -> str:
    async def create() -> str:
        store = SqliteKeyStore(workdir / "exposure-keys.db")
        try:
            key, record = new_key("acme", "exposure", time.time())
            await store.create(record)
            return key
        finally:
            await store.close()

    return asyncio.run(create())


@pytest.fixture(scope="module")
def exposed(
    workdir: Path, fake: FakeProvider, receiver: OtlpReceiver, presented: str, vault: VaultDouble
) -> Iterator[Gateway]:
    policy = base_policy(free_port(), fake)
    gemini = next(p for p in policy["providers"] if p["name"] == "fake-gemini")
    del gemini["api_key_env"]
    gemini["api_key"] = "vault:secret/data/providers/gemini#key"
    policy["vault"] = {"address": vault.url, "auth": {"method": "token"}}
    policy["auth"] = {"keys": {"sqlite": str(workdir / "exposure-keys.db")}}
    policy["tracing"] = {"otlp": receiver.endpoint, "sample": 1.0}
    policy["cache"] = {"ttl": "10m"}
    gateway = Gateway.start(workdir, policy, name="exposure", workers=1)
    yield gateway
    gateway.stop()


def secrets(presented: str) -> dict[str, str]:
    known = {value: name for name, value in PROVIDER_KEYS.items()}
    known[presented.rsplit("_", 1)[1]] = "the virtual key's secret"
    known[CLIENT_PROVIDER_KEY] = "a client's own provider key"
    known[FORGED_KEY.rsplit("_", 1)[1]] = "a forged key's secret"
    known[VAULT_KEY] = "a provider key from Vault (an SDS secret in Envoy)"
    return known


def leaks(where: str, text: str, known: dict[str, str]) -> list[str]:
    found = [f"{where}: {name}" for value, name in known.items() if value in text]
    found += [f"{where}: a {shape}" for shape, pattern in _SHAPES.items() if pattern.search(text)]
    return found


def test_nothing_the_gateway_shows_or_writes_holds_a_credential(exposed, fake, receiver, presented) -> None:
    answers: list[str] = []
    claude = anthropic.Anthropic(base_url=exposed.url, api_key=presented, max_retries=0)
    raw = claude.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
    )
    answers.append(json.dumps(dict(raw.headers)))
    for key in (FORGED_KEY, CLIENT_PROVIDER_KEY):
        client = anthropic.Anthropic(base_url=exposed.url, api_key=key, max_retries=0)
        try:
            client.messages.create(
                model="claude-sonnet-4-5", max_tokens=16, messages=[{"role": "user", "content": "x"}]
            )
        except anthropic.APIStatusError as error:
            answers.append(json.dumps(dict(error.response.headers)) + error.response.text)
    gpt = openai.OpenAI(base_url=f"{exposed.url}/v1", api_key=presented, max_retries=0)
    try:
        gpt.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}], extra_headers={"x-fake-status": "500"}
        )
    except openai.APIStatusError as error:
        answers.append(json.dumps(dict(error.response.headers)) + error.response.text)
    wait_until(lambda: len(receiver.spans()) >= 3, 15, "spans at the collector")

    known = secrets(presented)
    assert leaks("a planted line", f"header x-api-key: {presented}", known)  # the scan does see one
    found = leaks("metrics page", exposed.metrics(), known)
    admin = f"http://127.0.0.1:{exposed.admin_port}"
    found += leaks("Envoy stats", http("GET", f"{admin}/stats/prometheus")[2].decode(), known)
    dump = http("GET", f"{admin}/config_dump?include_eds")[2].decode()
    found += leaks("Envoy config_dump", dump, known)
    # The SDS secret holding the Vault key is in the dump, redacted by Envoy (generic secrets too).
    secrets_dump = json.loads(http("GET", f"{admin}/config_dump?resource=dynamic_active_secrets")[2])
    (gemini_secret,) = [c["secret"] for c in secrets_dump["configs"] if c["name"] == "provider_fake-gemini_key"]
    assert gemini_secret["generic_secret"]["secret"] == {"inline_string": "[redacted]"}
    policy = load_policy_file(str(exposed.policy_path)).to_proto("1")  # what ext_proc gets over xDS
    found += leaks("policy sent to ext_proc", json_format.MessageToJson(policy), known)
    spans = [span.span for span in receiver.spans()]
    found += leaks("exported spans", "\n".join(str(span) for span in spans), known)
    found += leaks("answers", "\n".join(answers), known)
    for path in written_files(exposed):
        found += leaks(str(path), path.read_text(errors="replace"), known)
    assert found == []


def written_files(gateway: Gateway) -> list[Path]:
    """`up`'s state file and every file of its run directory (bootstrap, control plane status...)."""
    state = state_file.state_dir() / f"{gateway.process.pid}.json"
    files = [state]
    run_dir = json.loads(state.read_text()).get("run_dir")
    if run_dir:
        files += [path for path in Path(run_dir).rglob("*") if path.is_file() and path.suffix != ".sock"]
    return [path for path in files if path.exists() and path.stat().st_size < 10_000_000]


def test_envoys_admin_listens_on_loopback_only(exposed) -> None:
    dump = json.loads(http("GET", f"http://127.0.0.1:{exposed.admin_port}/config_dump")[2])
    bootstrap = next(c for c in dump["configs"] if c["@type"].endswith("BootstrapConfigDump"))["bootstrap"]
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
