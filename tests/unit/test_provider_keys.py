"""Provider keys injected by Envoy: the SDS secrets and credential injector the control plane builds
(control_plane.resources.provider_keys), their place in the snapshot and the rollout, the control
plane's refresher (control_plane.provider_keys) on a fake clock, and what ext_proc makes of
``key_injected_by_envoy`` (docs/security-vault.md)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.extensions.filters.http.credential_injector.v3.credential_injector_pb2 import CredentialInjector
from envoy.extensions.http.injected_credentials.generic.v3.generic_pb2 import Generic
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions
from google.protobuf import json_format

from ccr.v1 import policy_pb2
from ccr.v1.contract import ENVOY_GROUP, EXTPROC_GROUP
from ccr.v1.secret_ref import parse_reference
from ccr.v1.vault_client import VaultSettings
from ccr.v1.vault_keys import SecretStore
from control_plane.policy import GatewayPolicy, ProviderSpec
from control_plane.policy.routes import FallbackSpec, RoutingSpec, TargetSpec
from control_plane.policy.vault import VaultSpec
from control_plane.provider_keys import ProviderKeys
from control_plane.resources import gateway as resources
from control_plane.resources import provider_keys
from control_plane.xds.envoy_snapshot import envoy_snapshot
from control_plane.xds.snapshot import CLUSTER, ENDPOINT, POLICY, SECRET, consistency_errors
from extproc.routing_table import compile_policy
from extproc.translate.base import Api
from tests.unit.cp_helpers import provider
from tests.unit.test_rollout import FakeClock, Harness, fake_clock  # noqa: F401 (fixture)
from tests.vault_double import FakeVaultClient, ManualClock

REF = "vault:secret/data/providers/openai#key"
VAULT = VaultSpec(address="http://vault.test:8200", rotation_interval_s=60)


def keyed(name: str, api: str = "openai", ref: str = REF, **kwargs: object) -> ProviderSpec:
    return replace(provider(name, api=api, **kwargs), api_key_ref=ref)  # type: ignore[arg-type]


def gateway(*providers: ProviderSpec, chains: tuple[FallbackSpec, ...] = ()) -> GatewayPolicy:
    return GatewayPolicy(providers=providers, vault=VAULT, routing=RoutingSpec(fallbacks=chains))


def chain(*names: str) -> FallbackSpec:
    first, *rest = names
    return FallbackSpec(TargetSpec(first, f"model-{first}"), tuple(TargetSpec(n, f"model-{n}") for n in rest))


def injector_of(cluster: Cluster) -> tuple[CredentialInjector, Generic, list[str]]:
    options = HttpProtocolOptions()
    cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(options)
    injector, generic = CredentialInjector(), Generic()
    assert options.http_filters[0].typed_config.Unpack(injector)
    assert injector.credential.typed_config.Unpack(generic)
    return injector, generic, [f.name for f in options.http_filters]


# --- resources -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "header", "value"),
    [
        ("openai", "Authorization", "Bearer sk-1"),
        ("anthropic", "x-api-key", "sk-1"),
        ("gemini", "x-goog-api-key", "sk-1"),
    ],
)
def test_the_secret_holds_the_whole_header_value_of_the_providers_api(api: str, header: str, value: str):
    spec = keyed("p", api=api)
    secret = provider_keys.key_secret(spec, "sk-1")
    again = resources.parse_resource(Secret(), json_format.MessageToDict(secret))  # Envoy's proto checks fields
    assert again.name == "provider_p_key" and again.generic_secret.secret.inline_string == value
    _, generic, _ = injector_of(resources.provider_cluster(spec, inject_key=True))
    assert generic.header == header


def test_the_provider_cluster_injects_its_secret_over_ads_then_runs_the_codec():
    cluster = resources.provider_cluster(keyed("openai", scheme="https", host="api.openai.com", port=443), True)
    resources.parse_resource(Cluster(), json_format.MessageToDict(cluster))
    injector, generic, names = injector_of(cluster)
    assert names == ["envoy.filters.http.credential_injector", "envoy.filters.http.upstream_codec"]
    assert injector.overwrite and not injector.allow_request_without_credential
    assert injector.credential.name == "envoy.http.injected_credentials.generic"
    assert generic.credential.name == "provider_openai_key" and generic.credential.sds_config.HasField("ads")
    assert cluster.transport_socket.name == "envoy.transport_sockets.tls"  # the rest of the cluster unchanged


def test_a_cluster_without_envoy_injection_has_no_upstream_filters():
    options = HttpProtocolOptions()
    cluster = resources.provider_cluster(keyed("openai"))
    cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(options)
    assert list(options.http_filters) == []


def test_a_key_not_read_yet_is_an_empty_secret_so_envoy_refuses_rather_than_sends_without_it():
    ((name, secret),) = provider_keys.key_secrets([keyed("openai")], {})
    assert name == "provider_openai_key" and secret.generic_secret.secret.inline_string == ""


# --- which providers, in the snapshot and the policy sent to ext_proc ------------------------------


def test_a_vault_key_outside_chains_is_envoys_and_the_policy_tells_ext_proc_so():
    policy = gateway(keyed("openai"), keyed("chained", ref="vault:secret/data/c#key"), keyed("other"), provider("env"))
    policy = replace(policy, routing=RoutingSpec(fallbacks=(chain("chained", "env"),)))
    assert policy.envoy_injected_keys == {"openai", "other"}
    proto = {p.name: p for p in policy.to_proto("1", {"other": "cannot read it"}).providers}
    assert proto["openai"].key_injected_by_envoy and proto["openai"].api_key_ref == ""
    assert proto["openai"].key_unavailable == ""
    assert proto["other"].key_unavailable == "provider 'other' has no API key: cannot read it"
    # A chain's attempts are rewritten by ext_proc, key included: that key stays with ext_proc.
    assert not proto["chained"].key_injected_by_envoy and proto["chained"].api_key_ref == "vault:secret/data/c#key"
    assert not proto["env"].key_injected_by_envoy


def test_the_snapshot_serves_each_injected_key_with_the_cluster_naming_it():
    policy = gateway(keyed("openai"), provider("env"))
    specs = list(policy.providers)
    snapshot = envoy_snapshot("1", policy, specs, {}, resources.provider_endpoints, ("x",), None,
                              policy.envoy_injected_keys, {REF: "sk-live"})  # fmt: skip
    assert consistency_errors(snapshot, policy.to_proto("1")) == []
    secret = snapshot.get(SECRET).by_name["provider_openai_key"]
    assert secret.generic_secret.secret.inline_string == "Bearer sk-live"
    injector_of(snapshot.get(CLUSTER).by_name["provider_openai"])
    with pytest.raises(IndexError):  # no upstream filter at all
        injector_of(snapshot.get(CLUSTER).by_name["provider_env"])


def test_a_cluster_naming_a_missing_secret_or_a_policy_leaving_a_key_to_a_plain_cluster_is_inconsistent():
    policy = gateway(keyed("openai"))
    without = envoy_snapshot("1", policy, list(policy.providers), {}, resources.provider_endpoints, ("x",))
    assert consistency_errors(without, policy.to_proto("1")) == [
        "policy leaves provider 'openai''s key to cluster 'provider_openai', which does not inject one"
    ]
    snapshot = envoy_snapshot("1", policy, list(policy.providers), {}, resources.provider_endpoints, ("x",), None,
                              policy.envoy_injected_keys, {})  # fmt: skip
    stripped = replace(snapshot, resources={**snapshot.resources, SECRET: without.get(SECRET)})
    assert consistency_errors(stripped) == [
        "cluster 'provider_openai' injects secret 'provider_openai_key', which is missing"
    ]


# --- the rollout ---------------------------------------------------------------------------------


def _offered(h: Harness) -> policy_pb2.Policy:
    snapshot = h.cache.get(EXTPROC_GROUP)
    assert snapshot is not None
    return snapshot.get(POLICY).by_name["policy"]


def _secret_value(h: Harness) -> str:
    snapshot = h.cache.get(ENVOY_GROUP)
    assert snapshot is not None
    return snapshot.get(SECRET).by_name["provider_a_key"].generic_secret.secret.inline_string


def test_a_key_read_late_reaches_ext_proc_only_after_envoy_acked_its_secret(fake_clock):  # noqa: F811
    h = Harness(fake_clock)
    h.rollout.key_problems = {REF: "cannot reach Vault"}
    assert h.rollout.update(gateway(keyed("a"))) == "1"
    h.envoy_connects()
    h.extproc_connects()
    h.envoy_acks(types=(CLUSTER, ENDPOINT, SECRET))
    assert _offered(h).providers[0].key_unavailable == "provider 'a' has no API key: cannot reach Vault"
    assert _secret_value(h) == ""
    h.extproc_acks()

    h.rollout.set_provider_keys({REF: "sk-1"}, {})
    assert _secret_value(h) == "Bearer sk-1"
    assert _offered(h).version == "1"  # Envoy has not ACKed the secret yet: ext_proc still answers 503
    h.envoy_acks(types=(SECRET,))
    assert _offered(h).version == "2" and _offered(h).providers[0].key_unavailable == ""


def test_a_rotation_is_a_new_secret_version_for_envoy_alone(fake_clock):  # noqa: F811
    h = Harness(fake_clock)
    h.rollout.provider_keys = {REF: "sk-1"}
    h.rollout.update(gateway(keyed("a")))
    h.envoy_connects()
    h.extproc_connects()
    h.envoy_acks(types=(CLUSTER, ENDPOINT, SECRET))
    h.extproc_acks()
    before = h.cache.get(ENVOY_GROUP)
    assert before is not None and _offered(h).version == "1"
    h.rollout.set_provider_keys({REF: "sk-2"}, {})
    after = h.cache.get(ENVOY_GROUP)
    assert after is not None and _secret_value(h) == "Bearer sk-2"
    assert after.get(SECRET).version != before.get(SECRET).version
    assert after.get(CLUSTER).version == before.get(CLUSTER).version  # no cluster rebuilt, nothing drained
    h.envoy_acks(types=(SECRET,))
    assert _offered(h).version == "1"  # nothing for ext_proc to learn


def test_a_provider_moving_into_a_chain_keeps_envoys_injector_until_ext_proc_holds_the_key(fake_clock):  # noqa: F811
    h = Harness(fake_clock)
    h.rollout.provider_keys = {REF: "sk-1"}
    h.rollout.update(gateway(keyed("a"), provider("b")))
    h.envoy_connects()
    h.extproc_connects()
    h.envoy_acks(types=(CLUSTER, ENDPOINT, SECRET))
    h.extproc_acks()
    h.rollout.update(gateway(keyed("a"), provider("b"), chains=(chain("a", "b"),)))
    envoy = h.cache.get(ENVOY_GROUP)
    assert envoy is not None
    injector_of(envoy.get(CLUSTER).by_name["provider_a"])  # ext_proc still sends a's requests keyless
    h.envoy_acks(types=(CLUSTER, ENDPOINT, SECRET))
    assert _offered(h).version == "2" and not _offered(h).providers[0].key_injected_by_envoy
    h.extproc_acks()
    h.rollout.reconcile()
    envoy = h.cache.get(ENVOY_GROUP)
    assert envoy is not None and "provider_a_key" not in envoy.get(SECRET).by_name


# --- the control plane's refresher ---------------------------------------------------------------


def refresher(vault: FakeVaultClient, clock: ManualClock) -> tuple[ProviderKeys, list, list]:
    store = SecretStore(clock, lambda settings, environ: vault)  # type: ignore[arg-type,return-value]
    keys = ProviderKeys(store, environ={"VAULT_TOKEN": "t"})
    pushed: list[tuple[dict, dict]] = []
    rotations: list[tuple[int, int | None, tuple[str, ...]]] = []
    keys.on_change = lambda values, problems: pushed.append((values, problems))
    keys.on_rotation = lambda change, providers: rotations.append((change.version, change.previous_version, providers))
    return keys, pushed, rotations


def test_the_control_plane_reads_a_new_policys_keys_at_once_and_each_rotation_interval():
    clock, vault = ManualClock(100.0), FakeVaultClient(ttl=90.0, values={parse_reference(REF): "sk-1"})
    keys, pushed, rotations = refresher(vault, clock)
    keys.follow(gateway(keyed("openai"), keyed("azure")))
    assert keys.keys() == {REF: "sk-1"} and keys.problems() == {}
    assert keys.store.settings == VaultSettings("http://vault.test:8200", rotation_interval_s=60)
    vault.values[parse_reference(REF)], vault.version = "sk-2", 2
    clock.now += 59
    assert keys.store.step() == []
    clock.now += 1
    keys._changed(keys.store.step())  # what run() does on the event loop
    assert pushed == [({REF: "sk-2"}, {})]
    assert rotations == [(2, 1, ("openai", "azure"))]  # for the audit log: versions, never a value


def test_the_control_plane_renews_its_token_at_two_thirds_of_its_ttl():
    clock, vault = ManualClock(100.0), FakeVaultClient(ttl=90.0, values={parse_reference(REF): "sk-1"})
    keys, _, _ = refresher(vault, clock)
    keys.follow(gateway(keyed("openai")))
    assert keys.store.token_due == 160
    clock.now = 159
    keys.store.step()
    assert vault.calls == ["login", "read"]
    clock.now = 160
    keys.store.step()
    assert vault.calls.count("renew") == 1 and keys.store.token_due == 220


def test_vault_down_leaves_a_reason_then_a_retry_brings_the_key():
    clock, vault = ManualClock(100.0), FakeVaultClient(ttl=90.0, values={parse_reference(REF): "sk-1"}, down=True)
    keys, pushed, rotations = refresher(vault, clock)
    keys.follow(gateway(keyed("openai")))
    assert keys.keys() == {} and "cannot log in to Vault" in keys.problems()[REF]
    vault.down = False
    clock.now += 5
    keys._changed(keys.store.step())
    assert pushed == [({REF: "sk-1"}, {})] and rotations == []  # a first read is not a rotation


def test_a_vault_section_without_an_address_is_every_keys_problem(monkeypatch: pytest.MonkeyPatch):
    keys, _, _ = refresher(FakeVaultClient(ttl=90.0), ManualClock(100.0))
    policy = replace(gateway(keyed("openai")), vault=VaultSpec())
    keys.follow(policy)
    assert keys.problems() == {REF: "the control plane cannot reach Vault: no address (set vault.address in the "
                               "policy or VAULT_ADDR)"}  # fmt: skip


def test_keys_left_to_ext_proc_are_not_read_by_the_control_plane():
    clock, vault = ManualClock(100.0), FakeVaultClient(ttl=90.0, values={parse_reference(REF): "sk-1"})
    keys, _, _ = refresher(vault, clock)
    keys.follow(gateway(keyed("a"), provider("b"), chains=(chain("a", "b"),)))
    assert keys.keys() == {} and vault.calls == []


# --- ext_proc ------------------------------------------------------------------------------------


class NoStore:
    def __getattr__(self, name: str) -> object:
        raise AssertionError("ext_proc must not read a key Envoy injects")


def test_ext_proc_sends_no_key_for_a_provider_whose_key_envoy_injects():
    policy = gateway(keyed("openai"))
    proto = policy.to_proto("1")
    proto.providers[0].headers["openai-organization"] = "org-1"
    table = compile_policy(proto, environ={}, secrets=NoStore())  # type: ignore[arg-type]
    route = table.providers["openai"]
    assert route.api is Api.OPENAI and route.key is None
    assert route.headers == (("openai-organization", "org-1"),) and route.unavailable is None
    route.key_rejected()  # nothing to re-read here: the control plane re-reads each interval


def test_ext_proc_answers_503_while_the_control_plane_has_no_key():
    proto = gateway(keyed("openai")).to_proto("1", {"openai": "cannot read it from Vault: permission denied"})
    table = compile_policy(proto, environ={}, secrets=NoStore())  # type: ignore[arg-type]
    assert table.providers["openai"].unavailable == (
        "provider 'openai' has no API key: cannot read it from Vault: permission denied"
    )


def test_envoys_refusal_without_a_key_is_a_503_in_the_clients_format():
    from envoy.config.listener.v3.listener_pb2 import Listener  # noqa: F401 (the listener's type)
    from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
        HttpConnectionManager,
    )

    listener = resources.listener(gateway(keyed("openai")))
    hcm = HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    first = [m for m in hcm.local_reply_config.mappers if m.status_code.value == 503]
    assert len(first) == 7 and list(hcm.local_reply_config.mappers[:7]) == first
    bodies = [json_format.MessageToDict(m.body_format_override.json_format) for m in first]
    assert bodies[0]["error"]["code"] == "ccr_provider_unavailable"  # OpenAI's shape
    assert bodies[1] == {"type": "error", "error": {"type": "api_error", "message": bodies[1]["error"]["message"]}}
    assert "failed_to_inject_credential" in str(first[-1].filter)
