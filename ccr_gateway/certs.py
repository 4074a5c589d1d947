"""`ccr-gateway certs dev`: a local CA, a server certificate and a client certificate for trying
the listener's TLS and mTLS (docs/security-tls.md). Not for production: the CA's key sits beside
the certificates it signs.

Keys are EC P-256, written 0600; certificates last 90 days (the server and client ones) and 10
years (the CA). Running it again over an existing directory reuses the CA (clients that trust it
keep working) and issues new leaf certificates: a rotation to try.

``--internal`` also issues what `up --internal-tls DIR` needs for the links between Envoy, the
ext_proc workers and the control plane (docs/security-tls.md, "Internal mTLS"): one certificate per
role (INTERNAL_ROLES), each good for both ends of a TLS connection (serverAuth and clientAuth) and
named localhost and 127.0.0.1, as those links run on loopback.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DIR = "ccr-certs"
DEFAULT_HOSTS = "localhost,127.0.0.1"
DEFAULT_CLIENT = "dev-client"
LEAF_DAYS = 90
CA_DAYS = 3650
# `up --internal-tls`: who holds which certificate (DIR/ROLE.pem and DIR/ROLE.key, beside DIR/ca.pem).
INTERNAL_ROLES = ("envoy", "extproc", "control-plane")
INTERNAL_SANS = ("localhost", "127.0.0.1")


@dataclass(frozen=True, slots=True)
class DevCerts:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_uri: str


@dataclass(frozen=True, slots=True)
class InternalTls:
    """The files of `up --internal-tls DIR` (made by `certs dev --internal`): the CA every internal
    link verifies its peer against, and one certificate per role, used as server and as client."""

    directory: Path

    @property
    def ca(self) -> str:
        return str(self.directory / "ca.pem")

    def cert(self, role: str) -> str:
        return str(self.directory / f"{role}.pem")

    def key(self, role: str) -> str:
        return str(self.directory / f"{role}.key")

    @classmethod
    def load(cls, directory: str) -> InternalTls:
        """Raises ValueError naming the first missing file (and how to make them)."""
        found = cls(Path(directory).resolve())
        for path in [found.ca, *(f(role) for role in INTERNAL_ROLES for f in (found.cert, found.key))]:
            if not os.path.isfile(path):
                raise ValueError(
                    f"--internal-tls {directory}: no {path} (make them with: ccr-gateway certs dev --internal --dir {directory})"
                )
        return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="certs_command", required=True)
    dev = sub.add_parser("dev", help="a local CA, a server and a client certificate (for trying TLS and mTLS)")
    dev.add_argument("--dir", default=DEFAULT_DIR, help=f"where to write them (default: ./{DEFAULT_DIR})")
    dev.add_argument(
        "--hosts",
        default=DEFAULT_HOSTS,
        help=f"the server certificate's names and IPs, comma-separated ({DEFAULT_HOSTS})",
    )
    dev.add_argument(
        "--client",
        default=DEFAULT_CLIENT,
        help=f"the client's name: SAN spiffe://ccr-gateway/NAME and DNS NAME ({DEFAULT_CLIENT})",
    )
    dev.add_argument(
        "--internal",
        action="store_true",
        help="also a certificate per internal role (" + ", ".join(INTERNAL_ROLES) + ") for `up --internal-tls DIR`",
    )


def run(args: argparse.Namespace) -> int:
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    if not hosts:
        print("ccr-gateway certs dev: --hosts names no host", flush=True)
        return 2
    try:
        made = make_dev_certs(Path(args.dir), hosts, args.client, internal=args.internal)
    except ImportError:
        print("ccr-gateway certs dev needs the cryptography package: pip install cryptography", flush=True)
        return 1
    except ValueError as exc:
        print(f"ccr-gateway certs dev: {exc}", flush=True)
        return 2
    print(
        f"CA:      {made.ca_cert}  (key {made.ca_key})\n"
        f"server:  {made.server_cert}  {made.server_key}  for {', '.join(hosts)}\n"
        f"client:  {made.client_cert}  {made.client_key}  as {made.client_uri}\n"
        "\nPaste into the policy:\n\n"
        "listener:\n"
        "  tls:\n"
        f"    cert: {made.server_cert}\n"
        f"    key: {made.server_key}\n"
        f"    client_ca: {made.ca_cert}\n"
        "    require_client_cert: true\n"
        f'    client_sans: ["{made.client_uri}"]\n'
        "\nThen: curl --cacert "
        f"{made.ca_cert} --cert {made.client_cert} --key {made.client_key} https://{hosts[0]}:8080/v1/models",
        flush=True,
    )
    if args.internal:
        print(
            f"\ninternal: {', '.join(f'{role}.pem' for role in INTERNAL_ROLES)} (and keys) in {made.ca_cert.parent}"
            f"\nThen: ccr-gateway up -c POLICY --internal-tls {made.ca_cert.parent}",
            flush=True,
        )
    return 0


def make_dev_certs(directory: Path, hosts: list[str], client: str, internal: bool = False) -> DevCerts:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not client or "/" in client or not client.replace("-", "").replace(".", "").isalnum():
        raise ValueError(f"--client {client!r}: letters, digits, '-' and '.' only")
    directory.mkdir(parents=True, exist_ok=True)
    directory = directory.resolve()
    paths = DevCerts(
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / f"{client}.pem",
        client_key=directory / f"{client}.key",
        client_uri=f"spiffe://ccr-gateway/{client}",
    )
    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ccr-gateway dev"),
                x509.NameAttribute(NameOID.COMMON_NAME, common),
            ]
        )

    if paths.ca_cert.exists() and paths.ca_key.exists():
        ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name("ccr-gateway dev CA"))
            .issuer_name(name("ccr-gateway dev CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(paths.ca_key, _key_pem(ca_key), private=True)
        _write(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)

    def leaf(common: str, sans: list[x509.GeneralName], *usages: x509.ObjectIdentifier) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def sans_of(names: list[str] | tuple[str, ...]) -> list[x509.GeneralName]:
        sans: list[x509.GeneralName] = []
        for host in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        return sans

    cert, key = leaf(hosts[0], sans_of(hosts), ExtendedKeyUsageOID.SERVER_AUTH)
    # Key first, then the certificate, each replaced atomically: the control plane takes a change
    # once the files have settled (control_plane.server.TlsFileWatch).
    _write(paths.server_key, key, private=True)
    _write(paths.server_cert, cert)
    client_sans = [x509.UniformResourceIdentifier(paths.client_uri), x509.DNSName(client)]
    cert, key = leaf(client, client_sans, ExtendedKeyUsageOID.CLIENT_AUTH)
    _write(paths.client_key, key, private=True)
    _write(paths.client_cert, cert)
    if internal:
        for role in INTERNAL_ROLES:
            usages = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
            cert, key = leaf(f"ccr-gateway {role}", sans_of(INTERNAL_SANS), *usages)
            _write(directory / f"{role}.key", key, private=True)
            _write(directory / f"{role}.pem", cert)
    return paths


def _key_pem(key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Written beside and renamed over: a watcher never reads half a file; a key is 0600 from
    its first byte."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)
