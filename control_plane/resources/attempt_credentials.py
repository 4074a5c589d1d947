"""Credentials Envoy adds to one attempt of a fallback chain: SigV4 for a Bedrock member, the OAuth
token for a Vertex member.

A chain is one cluster whose priorities are its providers (control_plane.resources.chains), so its
upstream filter chain is the same for every attempt. A provider's own cluster signs or injects in
its upstream filters (aws_signing, provider_keys); in a chain those filters must act on the
attempts that go to their provider only: a SigV4 Authorization on an Anthropic attempt would
replace nothing useful and leak an AWS signature, an injected Bearer would overwrite an OpenAI key.

So the chain's upstream filters are: the attempt rewrite (extproc.attempt, which names the attempt's
provider in ATTEMPT_PROVIDER_HEADER when Envoy holds its credentials), then a composite filter
whose matcher maps that header to the provider's own signing or injecting filter (the same
configuration as on its cluster), then a header mutation that drops the header again before the
codec: it never reaches a provider (it is left out of the SigV4 signature like every ``x-ccr-``
header). An attempt without the header (a provider whose key ext_proc sets) passes untouched.

Pure builders, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import envoy.extensions.common.matching.v3.extension_matcher_pb2
import envoy.extensions.filters.http.composite.v3.composite_pb2
import envoy.extensions.filters.http.header_mutation.v3.header_mutation_pb2
import envoy.type.matcher.v3.http_inputs_pb2  # noqa: F401 (typed_config)

from ccr.v1.contract import ATTEMPT_PROVIDER_HEADER
from control_plane.policy import ProviderSpec
from control_plane.resources import aws_signing, provider_keys
from control_plane.resources.provider_keys import TYPE_PREFIX

COMPOSITE_FILTER = "ccr.attempt_credentials"
DROP_FILTER = "ccr.attempt_credentials_drop"


def held_by_envoy(provider: ProviderSpec) -> bool:
    """Whether an attempt to ``provider`` gets its credentials from Envoy, not from ext_proc."""
    return aws_signing.is_signed(provider) or provider.api == "vertex"


def filters(members: Sequence[ProviderSpec], environ: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The filters between the attempt rewrite and the codec; none when every member's key is
    ext_proc's."""
    actions = {p.name: _credential_filter(p, environ) for p in members if held_by_envoy(p)}
    if not actions:
        return []
    composite = {
        "name": COMPOSITE_FILTER,
        "typed_config": {
            "@type": TYPE_PREFIX + "envoy.extensions.common.matching.v3.ExtensionWithMatcher",
            "extension_config": {
                "name": "composite",
                "typed_config": {"@type": TYPE_PREFIX + "envoy.extensions.filters.http.composite.v3.Composite"},
            },
            "xds_matcher": {
                "matcher_tree": {
                    "input": {
                        "name": "attempt-provider",
                        "typed_config": {
                            "@type": TYPE_PREFIX + "envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
                            "header_name": ATTEMPT_PROVIDER_HEADER,
                        },
                    },
                    "exact_match_map": {
                        "map": {
                            name: {
                                "action": {
                                    "name": f"credentials-{name}",
                                    "typed_config": {
                                        "@type": TYPE_PREFIX
                                        + "envoy.extensions.filters.http.composite.v3.ExecuteFilterAction",
                                        "typed_config": action,
                                    },
                                }
                            }
                            for name, action in actions.items()
                        }
                    },
                }
            },
        },
    }
    drop = {
        "name": DROP_FILTER,
        "typed_config": {
            "@type": TYPE_PREFIX + "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [{"remove": ATTEMPT_PROVIDER_HEADER}]},
        },
    }
    return [composite, drop]


def _credential_filter(provider: ProviderSpec, environ: Mapping[str, str] | None) -> dict[str, Any]:
    if aws_signing.is_signed(provider):
        return aws_signing.signing_filter(provider, environ)
    injector, _codec = provider_keys.injector_filters(provider)
    return injector
