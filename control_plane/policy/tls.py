"""TLS on the listener in the policy (``listener.tls``): the certificate Envoy serves, and the
client certificates it asks for (mTLS).

```yaml
listener:
  tls:
    cert: /etc/ccr/server.pem          # PEM chain; required
    key: /etc/ccr/server.key           # PEM private key; required
    client_ca: /etc/ccr/ca.pem         # optional: mTLS on (client certificates verified against it)
    require_client_cert: true          # default: true when client_ca is set
    client_sans: [spiffe://acme/ci, "spiffe://acme/*", build.internal]   # optional SAN matchers
    identities: {"spiffe://acme/ci": acme}   # a request with this certificate and no key: tenant acme
    alpn: [h2, http/1.1]               # default: both
    min_version: TLSv1_2               # or TLSv1_3
```

The control plane reads the files and serves them to Envoy over SDS (control_plane.resources.tls);
it watches them and pushes a new secret version when one changes (rotation). A relative path is
read from the policy file's directory. Every file must be readable when the policy is checked: a
policy naming a missing key is refused with the line of the field, not accepted and then served
without a listener.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

from control_plane.policy.yaml_check import Checker, Located, join, kind_of

_FIELDS = ("cert", "key", "client_ca", "require_client_cert", "client_sans", "identities", "alpn", "min_version")
ALPN_PROTOCOLS = ("h2", "http/1.1")
MIN_VERSIONS = ("TLSv1_2", "TLSv1_3")
# A URI SAN (spiffe://trust-domain/path, or any scheme://...), or a DNS name (optionally *.wildcard).
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S+$")
_DNS = re.compile(
    r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class SanMatcher:
    """One ``client_sans`` entry: ``kind`` is URI, DNS or IP_ADDRESS; a trailing ``*`` on a URI
    makes it a prefix match (``spiffe://acme/*``: every workload of the trust domain)."""

    kind: str
    value: str
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class TlsSpec:
    cert_file: str
    key_file: str
    client_ca_file: str = ""  # "": no client certificates asked for
    require_client_cert: bool = False
    client_sans: tuple[SanMatcher, ...] = ()
    # Verified SAN (URI or DNS, exact) -> tenant it authenticates as.
    identities: tuple[tuple[str, str], ...] = ()
    alpn: tuple[str, ...] = ALPN_PROTOCOLS
    min_version: str = "TLSv1_2"

    @property
    def files(self) -> tuple[str, ...]:
        """Every file the control plane reads (and watches for rotation)."""
        return tuple(f for f in (self.cert_file, self.key_file, self.client_ca_file) if f)

    @property
    def mtls(self) -> bool:
        return bool(self.client_ca_file)


def parse_listener_tls(check: Checker, at: Located, path: str = "listener.tls") -> TlsSpec | None:
    """``listener.tls`` checked; None when it has problems (recorded in ``check``)."""
    before = len(check.problems)
    fields = check.mapping(at, path, _FIELDS, required=("cert", "key"))
    base = os.path.dirname(os.path.abspath(check.source)) if os.path.isfile(check.source) else os.getcwd()
    files: dict[str, str] = {}
    for name in ("cert", "key", "client_ca"):
        if name in fields:
            file = _readable_file(check, fields[name], join(path, name), base)
            if file is not None:
                files[name] = file
    client_ca = files.get("client_ca", "")
    require = bool(client_ca)
    if "require_client_cert" in fields:
        flag_at = fields["require_client_cert"]
        if not isinstance(flag_at.value, bool):
            check.problem(
                flag_at, join(path, "require_client_cert"), f"must be true or false, got {kind_of(flag_at.value)}"
            )
        elif flag_at.value and "client_ca" not in fields:
            check.problem(
                flag_at, join(path, "require_client_cert"), "needs client_ca (the CA that signs client certificates)"
            )
        else:
            require = flag_at.value
    sans: list[SanMatcher] = []
    if "client_sans" in fields:
        sans_path = join(path, "client_sans")
        if "client_ca" not in fields:
            check.problem(fields["client_sans"], sans_path, "needs client_ca (only verified certificates have SANs)")
        for index, item in enumerate(check.non_empty_sequence(fields["client_sans"], sans_path, "SAN")):
            matcher = _san_matcher(check, item, join(sans_path, index))
            if matcher is not None:
                sans.append(matcher)
    identities: list[tuple[str, str]] = []
    if "identities" in fields:
        identities = _identities(check, fields["identities"], join(path, "identities"), has_ca="client_ca" in fields)
    alpn = ALPN_PROTOCOLS
    if "alpn" in fields:
        alpn_path = join(path, "alpn")
        chosen = []
        for index, item in enumerate(check.non_empty_sequence(fields["alpn"], alpn_path, "protocol")):
            protocol = check.choice(item, join(alpn_path, index), ALPN_PROTOCOLS)
            if protocol is not None and protocol in chosen:
                check.problem(item, join(alpn_path, index), f"{protocol!r} is listed twice")
            elif protocol is not None:
                chosen.append(protocol)
        alpn = tuple(chosen)
    min_version = "TLSv1_2"
    if "min_version" in fields:
        min_version = check.choice(fields["min_version"], join(path, "min_version"), MIN_VERSIONS) or min_version
    if len(check.problems) > before:
        return None
    return TlsSpec(
        cert_file=files["cert"],
        key_file=files["key"],
        client_ca_file=client_ca,
        require_client_cert=require,
        client_sans=tuple(sans),
        identities=tuple(identities),
        alpn=alpn,
        min_version=min_version,
    )


def _readable_file(check: Checker, at: Located, path: str, base: str) -> str | None:
    name = check.string(at, path)
    if name is None:
        return None
    file = os.path.normpath(os.path.join(base, os.path.expanduser(name)))
    try:
        with open(file, "rb") as handle:
            head = handle.read(64 * 1024)
    except OSError as exc:
        check.problem(at, path, f"cannot read {file}: {exc.strerror}")
        return None
    if b"-----BEGIN " not in head:
        check.problem(at, path, f"{file} is not PEM (no -----BEGIN line)")
        return None
    return file


def _san_matcher(check: Checker, at: Located, path: str) -> SanMatcher | None:
    value = check.string(at, path)
    if value is None:
        return None
    if _URI.match(value):
        if "*" in value[:-1]:
            check.problem(at, path, f"{value!r}: '*' is allowed only at the end of a URI (a prefix match)")
            return None
        return SanMatcher("URI", value.removesuffix("*"), prefix=value.endswith("*"))
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return SanMatcher("IP_ADDRESS", value)
    if _DNS.match(value):
        return SanMatcher("DNS", value.lower())
    check.problem(
        at, path, f"{value!r} is neither a URI (spiffe://trust-domain/workload), a DNS name nor an IP address"
    )
    return None


def _identities(check: Checker, at: Located, path: str, has_ca: bool) -> list[tuple[str, str]]:
    if not has_ca:
        check.problem(at, path, "needs client_ca (an identity comes from a verified client certificate)")
    if not isinstance(at.value, dict):
        check.problem(at, path, f"must be a mapping of SAN to tenant, got {kind_of(at.value)}")
        return []
    out = []
    for san, (key_at, value_at) in at.value.items():
        entry_path = join(path, san)
        if not (_URI.match(san) or _DNS.match(san)) or "*" in san:
            check.problem(key_at, entry_path, f"{san!r} is not an exact URI or DNS SAN")
            continue
        tenant = check.string(value_at, entry_path, _TENANT, "tenant name")
        if tenant is not None:
            out.append((san, tenant))
    return sorted(out)
