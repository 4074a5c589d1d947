"""Who a verified client certificate says the caller is (``listener.tls.identities``): the SANs
Envoy wrote into ``x-forwarded-client-cert`` (XFCC), looked up in the policy's SAN -> tenant map.
Pure: a header in, an identity or None out.

The header is trustworthy only because the listener has mTLS: its connection manager then runs
with ``forward_client_cert_details: SANITIZE_SET`` (control_plane.resources.tls), dropping whatever
a client sent under that name and writing the verified certificate's identity. The policy carries
the map only with mTLS (control_plane.policy.tls refuses ``identities`` without ``client_ca``), so
an empty map means: ignore the header.

XFCC (Envoy's format): elements separated by ``,``, each ``key=value`` pairs separated by ``;``;
a value may be double-quoted (``Subject="CN=ci,O=acme"``, ``\\"`` for a quote inside); ``URI`` and
``DNS`` appear once per SAN. A proxy in front appends its own element, so the last one is the
nearest client's: the one Envoy added. Envoy writes URI and DNS SANs unquoted, so a SAN holding
``,``, ``;`` or ``"`` cannot be read back and never matches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from extproc.auth.keys import KeyFormatError, VirtualKey

XFCC_HEADER = "x-forwarded-client-cert"
CERT_KEY_ID_PREFIX = "cert:"
_SAN_KEYS = ("uri", "dns")  # the XFCC keys that carry a SAN, in the order they are tried


@dataclass(frozen=True, slots=True)
class CertCaller(VirtualKey):
    """A caller a verified client certificate names. A VirtualKey so the auth step's model and
    limit checks and the request labels take it as they take a key: no models list, no limits of
    its own (its tenant's apply), ``name`` the SAN and ``key_id`` ``cert:<sha256 of the SAN, 16 hex>``
    (it names the caller in usage records and is never looked up)."""

    san: str = ""

    def __post_init__(self) -> None:
        if not self.key_id.startswith(CERT_KEY_ID_PREFIX):
            raise KeyFormatError(f"a certificate caller's id starts with {CERT_KEY_ID_PREFIX!r}, not {self.key_id!r}")
        if not self.tenant or not self.tenant.strip():
            raise KeyFormatError("a certificate caller needs a tenant")

    @classmethod
    def of(cls, san: str, tenant: str) -> CertCaller:
        digest = hashlib.sha256(san.encode("utf-8", "replace")).hexdigest()[:16]
        return cls(CERT_KEY_ID_PREFIX + digest, tenant, san, san=san)


def parse_xfcc(value: str) -> tuple[tuple[tuple[str, str], ...], ...]:
    """The elements of an XFCC header, each its ``(key, value)`` pairs in order (keys lowercased,
    quotes and escapes removed). A pair without ``=`` is skipped; an unterminated quote makes the
    whole header unreadable: ``()``. Never raises (the header is Envoy's, but read it as if not)."""
    elements: list[tuple[tuple[str, str], ...]] = []
    pairs: list[tuple[str, str]] = []
    key: str | None = None
    text: list[str] = []
    quoted = False
    index, end = 0, len(value)
    while index < end:
        char = value[index]
        index += 1
        if quoted:
            if char == "\\" and index < end:
                text.append(value[index])
                index += 1
            elif char == '"':
                quoted = False
            else:
                text.append(char)
        elif char == '"':
            quoted = True
        elif char == "=" and key is None:
            key, text = "".join(text).strip().lower(), []
        elif char in ";,":
            if key is not None:
                pairs.append((key, "".join(text).strip()))
            key, text = None, []
            if char == ",":
                elements.append(tuple(pairs))
                pairs = []
        else:
            text.append(char)
    if quoted:
        return ()
    if key is not None:
        pairs.append((key, "".join(text).strip()))
    elements.append(tuple(pairs))
    return tuple(elements)


def nearest_sans(value: str) -> tuple[str, ...]:
    """The URI SANs, then the DNS SANs, of the last XFCC element (the nearest client's)."""
    elements = parse_xfcc(value)
    if not elements:
        return ()
    last = elements[-1]
    return tuple(san for wanted in _SAN_KEYS for key, san in last if key == wanted and san)


def cert_caller(headers: Mapping[str, str], identities: Mapping[str, str]) -> CertCaller | None:
    """The caller the request's verified certificate names: its first URI SAN the map knows, else
    its first DNS SAN (case-insensitively); None without a map, a header or a known SAN."""
    if not identities:
        return None
    value = headers.get(XFCC_HEADER)
    if not value:
        return None
    for san in nearest_sans(value):
        tenant = identities.get(san if "://" in san else san.lower())
        if tenant is not None:
            return CertCaller.of(san, tenant)
    return None
