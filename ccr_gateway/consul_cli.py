"""`ccr-gateway policy push|get|diff|validate`: the policy in Consul KV, edited safely.

push validates locally first and writes ``<prefix>policy`` with check-and-set, so two people
editing at once cannot overwrite each other without noticing: the second push fails (exit 3) and
shows what changed. The index the write is checked against is, in order: ``--cas N``; the index a
file fetched with ``policy get -o FILE`` was based on (its first line,
``# consul-modify-index: N``, which push strips and then moves to the new index); the ModifyIndex
read just before writing.

push is appended to the audit log (docs/audit.md) with the ModifyIndex it wrote and ``--actor``
(default $CCR_AUDIT_ACTOR, else the OS user); it fails closed: an unusable audit log stops the push
before Consul is written (exit 1).

Exit codes: 0 ok (diff: no difference), 1 diff found / Consul unreachable / nothing stored,
2 invalid policy, 3 CAS conflict.

Plain urllib, no event loop: these are one-shot commands.
"""

from __future__ import annotations

import argparse
import base64
import difflib
import hashlib
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from audit.hooks import AuditKeyError, AuditUnavailable, OneShot
from control_plane.consul.client import DEFAULT_ADDRESS, REQUEST_TIMEOUT, parse_address
from control_plane.consul.kv import (
    DEFAULT_PREFIX,
    MAX_VALUE_BYTES,
    POLICY_KEY,
    PolicyDocument,
    assemble,
    normalize_prefix,
)
from control_plane.policy import GatewayPolicy, PolicyError, load_policy_file

EXIT_OK, EXIT_DIFFERENT, EXIT_INVALID, EXIT_CONFLICT = 0, 1, 2, 3
EXIT_UNAVAILABLE = 1
MARKER = re.compile(rb"\A# consul-modify-index: (\d+)[^\n]*\n?")


class ConsulError(Exception):
    """Consul could not be reached or refused the request."""


@dataclass(frozen=True, slots=True)
class Stored:
    value: bytes | None
    modify_index: int  # 0: the key does not exist


class ConsulKV:
    """The few KV calls the commands need."""

    def __init__(self, address: str, token: str | None = None, datacenter: str | None = None) -> None:
        scheme, host, port = parse_address(address)
        self.base = f"{scheme}://{host}:{port}"
        self.token = token
        self.datacenter = datacenter

    def _request(self, method: str, key: str, params: dict[str, str], body: bytes | None = None) -> tuple[int, bytes]:
        if self.datacenter:
            params = {**params, "dc": self.datacenter}
        url = f"{self.base}/v1/kv/{urllib.parse.quote(key, safe='/')}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        request = urllib.request.Request(url, data=body, method=method)
        if self.token:
            request.add_header("X-Consul-Token", self.token)
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return 404, b""
            detail = exc.read().decode(errors="replace").strip()
            hint = " (check --token / CONSUL_HTTP_TOKEN)" if exc.code in (401, 403) else ""
            raise ConsulError(f"Consul answered {exc.code} {detail}{hint}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConsulError(f"cannot reach Consul at {self.base}: {reason}") from None

    def get(self, key: str) -> Stored:
        status, body = self._request("GET", key, {})
        if status == 404:
            return Stored(None, 0)
        entry = json.loads(body)[0]
        value = base64.b64decode(entry["Value"]) if entry.get("Value") is not None else None
        return Stored(value, int(entry["ModifyIndex"]))

    def tree(self, prefix: str) -> dict[str, bytes | None]:
        status, body = self._request("GET", prefix, {"recurse": ""})
        if status == 404:
            return {}
        return {
            e["Key"]: base64.b64decode(e["Value"]) if e.get("Value") is not None else None for e in json.loads(body)
        }

    def put(self, key: str, value: bytes, cas: int | None = None) -> bool:
        params = {"cas": str(cas)} if cas is not None else {}
        _, body = self._request("PUT", key, params, value)
        return json.loads(body) is True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds push/get/diff/validate under ``parser`` (the `policy` subcommand) and sets func=run."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--consul",
        help=f"Consul HTTP address (default: $CONSUL_HTTP_ADDR or {DEFAULT_ADDRESS})",
    )
    common.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"KV prefix of the policy (default {DEFAULT_PREFIX})")
    common.add_argument("--token", help="ACL token (default: $CONSUL_HTTP_TOKEN)")
    common.add_argument("--datacenter", help="Consul datacenter (default: the agent's)")
    sub = parser.add_subparsers(dest="policy_command", required=True, metavar="ACTION")

    push = sub.add_parser("push", parents=[common], help="validate a local policy file and write it to Consul")
    push.add_argument("file", help="policy YAML file")
    push.add_argument(
        "--cas",
        type=int,
        help="write only if the key's ModifyIndex is N (0: only if absent); "
        "default: the file's consul-modify-index line (from `policy get -o`), else as read now",
    )
    push.add_argument("--actor", help="who, for the audit log (default $CCR_AUDIT_ACTOR, else the OS user)")
    get = sub.add_parser("get", parents=[common], help="print the policy stored in Consul")
    get.add_argument(
        "-o", "--output", help="write it to this file, with a first line recording its ModifyIndex for push"
    )
    diff = sub.add_parser("diff", parents=[common], help="unified diff: the policy in Consul -> a local file")
    diff.add_argument("file", help="policy YAML file")
    validate = sub.add_parser("validate", parents=[common], help="validate the policy in Consul (or a local file)")
    validate.add_argument("file", nargs="?", help="validate this local file instead")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    address = args.consul or os.environ.get("CONSUL_HTTP_ADDR") or DEFAULT_ADDRESS
    token = args.token if args.token is not None else os.environ.get("CONSUL_HTTP_TOKEN")
    prefix = normalize_prefix(args.prefix)
    try:
        kv = ConsulKV(address, token, args.datacenter)
        command = {"push": _push, "get": _get, "diff": _diff, "validate": _validate}[args.policy_command]
        return command(kv, prefix, args)
    except (AuditKeyError, AuditUnavailable) as exc:
        _err(f"audit log: {exc}")
        return EXIT_UNAVAILABLE
    except (ConsulError, ValueError) as exc:  # ValueError: a malformed --consul address
        _err(str(exc))
        return EXIT_UNAVAILABLE
    except OSError as exc:
        _err(f"{exc.filename or 'file'}: {exc.strerror}")
        return EXIT_UNAVAILABLE


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _summary(policy: GatewayPolicy) -> str:
    models = sum(len(p.models) for p in policy.providers)
    return f"{len(policy.providers)} providers, {models} models"


def _stored_document(kv: ConsulKV, prefix: str) -> PolicyDocument | None:
    return assemble(kv.tree(prefix), prefix)


def _unified(old: str, new: str, old_name: str, new_name: str) -> str:
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), fromfile=old_name, tofile=new_name
    )
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


def split_marker(raw: bytes) -> tuple[int | None, bytes]:
    """A file from `policy get -o` starts with the ModifyIndex it was fetched at."""
    match = MARKER.match(raw)
    if match is None:
        return None, raw
    return int(match.group(1)), raw[match.end() :]


def marker(index: int) -> bytes:
    return f"# consul-modify-index: {index} (from `ccr-gateway policy get`; push checks it)\n".encode()


def _rewrite_marker(path: str, index: int, body: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(marker(index) + body)


def _push(kv: ConsulKV, prefix: str, args: argparse.Namespace) -> int:
    key = prefix + POLICY_KEY
    try:
        policy = load_policy_file(args.file)
    except PolicyError as exc:
        _err(f"invalid policy, not pushed:\n{exc}")
        return EXIT_INVALID
    with open(args.file, "rb") as handle:
        based_on, local = split_marker(handle.read())
    if len(local) > MAX_VALUE_BYTES:
        _err(f"{args.file} is {len(local)} bytes; one Consul KV value holds at most {MAX_VALUE_BYTES}")
        return EXIT_INVALID
    current = kv.get(key)
    cas = args.cas if args.cas is not None else based_on if based_on is not None else current.modify_index
    if current.value == local:
        if based_on is not None and based_on != current.modify_index:
            _rewrite_marker(args.file, current.modify_index, local)
        print(f"consul:{key} already holds {args.file} (ModifyIndex {current.modify_index}); nothing pushed")
        return EXIT_OK
    audit = OneShot(args.actor)
    audit.ready()  # fail closed: nothing is pushed that the audit log could not record
    if not kv.put(key, local, cas=cas):
        now = kv.get(key)
        _err(
            f"consul:{key} was changed by someone else (expected ModifyIndex {cas}, now {now.modify_index}); "
            f"not pushed.\nWhat is stored now -> your file "
            f"(`ccr-gateway policy diff {args.file}`):\n"
            + _unified((now.value or b"").decode(errors="replace"), local.decode(), f"consul:{key}", args.file)
            + f"Merge if needed, then push again (or force with --cas {now.modify_index})."
        )
        return EXIT_CONFLICT
    written = kv.get(key)
    if based_on is not None and written.value == local:  # the file is now based on what it wrote
        _rewrite_marker(args.file, written.modify_index, local)
    print(f"pushed {args.file} to consul:{key} (ModifyIndex {written.modify_index}; {_summary(policy)})")
    details = {"modify_index": written.modify_index, "cas": cas, "sha256": hashlib.sha256(local).hexdigest()}
    try:
        audit.record("policy.pushed", f"consul:{key}", os.path.abspath(args.file), details)
    except (AuditKeyError, AuditUnavailable) as exc:  # usable a moment ago (ready())
        _err(f"pushed, but NOT audited: {exc}")
        return EXIT_UNAVAILABLE
    shadowed = _stored_document(kv, prefix)
    if shadowed is not None and shadowed.shadowed:
        _err(f"note: consul:{key} takes precedence over the split keys {', '.join(shadowed.shadowed)}")
    return EXIT_OK


def _get(kv: ConsulKV, prefix: str, args: argparse.Namespace) -> int:
    key = prefix + POLICY_KEY
    stored = kv.get(key)
    header = b""
    if stored.modify_index:
        text = (stored.value or b"").decode(errors="replace")
        where = f"consul:{key} ModifyIndex {stored.modify_index}"
        header = marker(stored.modify_index)
    else:
        document = _stored_document(kv, prefix)
        if document is None:
            _err(f"no policy under consul:{prefix}")
            return EXIT_UNAVAILABLE
        text, where = document.text, f"{document.source} (assembled from split keys)"
    if args.output:
        with open(args.output, "wb") as handle:
            handle.write(header + text.encode())
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    _err(where)
    return EXIT_OK


def _diff(kv: ConsulKV, prefix: str, args: argparse.Namespace) -> int:
    with open(args.file, "rb") as handle:
        local = split_marker(handle.read())[1].decode(errors="replace")
    document = _stored_document(kv, prefix)
    stored, name = (document.text, document.source) if document else ("", f"consul:{prefix}{POLICY_KEY} (absent)")
    patch = _unified(stored, local, name, args.file)
    if not patch:
        _err(f"{args.file} and {name} are the same")
        return EXIT_OK
    sys.stdout.write(patch)
    return EXIT_DIFFERENT


def _validate(kv: ConsulKV, prefix: str, args: argparse.Namespace) -> int:
    try:
        if args.file:
            policy, name = load_policy_file(args.file), args.file
        else:
            document = _stored_document(kv, prefix)
            if document is None:
                _err(f"no policy under consul:{prefix}")
                return EXIT_UNAVAILABLE
            policy, name = document.load(), document.source
    except PolicyError as exc:
        print(f"invalid policy:\n{exc}")
        return EXIT_INVALID
    print(f"{name}: valid ({_summary(policy)})")
    return EXIT_OK
