"""Policy from Consul KV, watched with blocking queries (the real-backend policy source).

Layout under the prefix (default ``ccr-gateway/``)::

    <prefix>policy             the whole policy YAML; when present it wins over the split keys
    <prefix>listener           split layout: one top-level section per key, holding the YAML of
    <prefix>limits               that section's value (``router`` holds ``default: ...`` etc.)
    <prefix>aliases
    <prefix>router
    <prefix>fallback
    <prefix>tenants
    <prefix>providers/<name>   one provider per key (a mapping; ``name:`` defaults to <name>)
    <prefix>status             written here: the outcome of the last evaluation (JSON)

The split keys are assembled into one YAML document with known line offsets per key, so a problem
in it is reported as ``consul:<prefix>router:3:12: router.default: ...``, like a file would be.

The watch loop is control_plane.consul.client's ``BlockingLoop``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import consul
import consul.aio
import yaml
from prometheus_client import Counter

from control_plane.consul.client import (
    DEFAULT_ADDRESS,
    DEFAULT_SETTINGS,
    REQUEST_TIMEOUT,
    TRANSIENT_ERRORS,
    BlockingLoop,
    LoopSettings,
    blocking_timeout,
    consul_index,
    make_client,
    parse_address,
    parse_duration,
)
from control_plane.policy import GatewayPolicy, PolicyError, load_policy
from control_plane.policy.yaml_check import Problem, closest

log = logging.getLogger("ccr.control_plane.consul")

CONSUL_POLICY_REJECTED = Counter(
    "ccr_consul_policy_rejected_total", "Policies read from Consul KV and rejected by validation"
)

DEFAULT_PREFIX = "ccr-gateway/"
POLICY_KEY = "policy"
STATUS_KEY = "status"
PROVIDERS_DIR = "providers/"
# The split layout's keys, in the order they are assembled (the order of a hand-written policy).
SECTIONS = ("listener", "limits", "providers", "aliases", "router", "fallback", "tenants")
MAX_VALUE_BYTES = 512 * 1024  # Consul's limit for one KV value


def normalize_prefix(prefix: str) -> str:
    """KV keys never start with '/'; a prefix is a folder, so it ends with one."""
    prefix = prefix.strip().lstrip("/")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


# --- the policy document: one key, or split keys assembled --------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """Where one Consul key's text sits in the assembled document."""

    key: str  # the full Consul key
    section: str  # the top-level field it feeds
    header: int  # first synthetic line written for it ("router:", "  -"), 1-based
    start: int  # first line of the key's own text
    lines: int  # number of lines of the key's own text
    indent: int  # columns added in front of each of them


class AssembledPolicyError(PolicyError):
    """A PolicyError whose problems stay in document order (split keys: key by key)."""

    def __init__(self, problems: list[Problem]) -> None:
        ValueError.__init__(self, "\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class PolicyDocument:
    """The policy text read from Consul, and how to point at the key a line came from."""

    text: str
    source: str  # "consul:<prefix>policy", or "consul:<prefix>" for split keys
    segments: tuple[Segment, ...] = ()  # empty: `text` is one key's value, verbatim
    problems: tuple[Problem, ...] = ()  # found while assembling (reported with load()'s)
    shadowed: tuple[str, ...] = ()  # split keys ignored because <prefix>policy exists

    @property
    def digest(self) -> str:
        hashed = hashlib.sha256(self.text.encode())
        for problem in self.problems:  # two undecodable values are not the same policy
            hashed.update(str(problem).encode())
        return hashed.hexdigest()

    def load(self) -> GatewayPolicy:
        """Validate; raises PolicyError whose problems name the Consul key and its own lines."""
        if self.problems and not self.segments:
            raise PolicyError(list(self.problems))
        try:
            policy = load_policy(self.text, source=self.source)
        except PolicyError as exc:
            raise self._placed(exc.problems) from None
        if self.problems:
            raise self._placed([])
        return policy

    def _placed(self, problems: list[Problem]) -> PolicyError:
        if not self.segments:
            return PolicyError([*self.problems, *problems])
        return AssembledPolicyError([*self.problems, *(self.place(p) for p in problems)])

    def place(self, problem: Problem) -> Problem:
        """Move a problem from the assembled document to the key (and its line) it came from."""
        line, column = problem.line, problem.column
        if line == 0:
            return problem
        for segment in self.segments:
            if segment.start <= line < segment.start + segment.lines:
                return dataclasses.replace(
                    problem,
                    source=f"consul:{segment.key}",
                    line=line - segment.start + 1,
                    column=max(1, column - segment.indent) if column else 0,
                )
            if segment.header <= line < segment.start:
                # A synthetic line: the key's value as a whole ("router: must be a mapping"), or
                # the document root when the root mapping starts there ("providers: is required").
                if _top_field(problem.path) == segment.section:
                    return dataclasses.replace(problem, source=f"consul:{segment.key}", line=0, column=0)
                break
        else:
            last = self.segments[-1] if self.segments else None
            if last is not None and last.lines and line >= last.start + last.lines:  # "unexpected end"
                return dataclasses.replace(problem, source=f"consul:{last.key}", line=last.lines, column=0)
        return dataclasses.replace(problem, line=0, column=0)


def _top_field(path: str) -> str:
    return re.split(r"[.\[]", path, maxsplit=1)[0]


def assemble(entries: Mapping[str, bytes | None], prefix: str) -> PolicyDocument | None:
    """KV entries under ``prefix`` (full key -> raw value) -> the policy document, or None when
    there is no policy at all. ``<prefix>policy`` wins; otherwise the split keys are assembled."""
    policy_key = prefix + POLICY_KEY
    split: dict[str, tuple[str, bytes | None]] = {}  # relative key -> (full key, value)
    for key, value in entries.items():
        relative = key[len(prefix) :] if key.startswith(prefix) else None
        if relative is None or relative in ("", POLICY_KEY, STATUS_KEY) or relative.endswith("/"):
            continue  # folder markers ("providers/") carry no policy
        if "/" in relative and not relative.startswith(PROVIDERS_DIR):
            continue  # some other tool's subtree (locks, ...)
        split[relative] = (key, value)
    if policy_key in entries:
        text, problems = _text(entries[policy_key], f"consul:{policy_key}")
        shadowed = tuple(full for full, _ in sorted(split.values()))
        return PolicyDocument(text, f"consul:{policy_key}", problems=tuple(problems), shadowed=shadowed)
    if not split:
        return None
    return _assemble_split(split, prefix)


def _text(value: bytes | None, source: str) -> tuple[str, list[Problem]]:
    if value is None:
        return "", []
    try:
        return value.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        return "", [Problem(source, 0, 0, "", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]


def _assemble_split(split: dict[str, tuple[str, bytes | None]], prefix: str) -> PolicyDocument:
    lines: list[str] = [f"# assembled from consul:{prefix}*"]
    segments: list[Segment] = []
    problems: list[Problem] = []

    def add(key: str, section: str, headers: list[str], text: str, indent: int) -> None:
        header = len(lines) + 1
        lines.extend(headers)
        body = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if body and body[-1] == "":
            body.pop()  # the final newline ends the last line, it does not start another
        start = len(lines) + 1
        lines.extend(" " * indent + line for line in body)
        segments.append(Segment(key, section, header, start, len(body), indent))

    for relative in sorted(split):
        section = relative.split("/", 1)[0]
        if relative.startswith(PROVIDERS_DIR):
            name = relative[len(PROVIDERS_DIR) :]
            if "/" in name:
                problems.append(Problem(f"consul:{split[relative][0]}", 0, 0, "", "provider keys are providers/<name>"))
        elif section not in SECTIONS:
            hint = closest(section, (*SECTIONS, POLICY_KEY))
            where = f"consul:{split[relative][0]}"
            problems.append(
                Problem(where, 0, 0, "", "unknown policy key" + (f" (did you mean '{prefix}{hint}'?)" if hint else ""))
            )
    for section in SECTIONS:
        if section == "providers":
            keys = sorted(r for r in split if r.startswith(PROVIDERS_DIR) and "/" not in r[len(PROVIDERS_DIR) :])
            if not keys:
                continue
            header = len(lines) + 1
            lines.append("providers:")
            segments.append(Segment(prefix + PROVIDERS_DIR, "providers", header, header + 1, 0, 0))
            for relative in keys:
                full, value = split[relative]
                text, found = _text(value, f"consul:{full}")
                problems.extend(found)
                name = relative[len(PROVIDERS_DIR) :]
                headers = ["  -"]
                named = _provider_name(text)
                if named is None:
                    headers.append(f"    name: {json.dumps(name)}")
                elif isinstance(named, tuple) and named[0] != name:
                    problems.append(
                        Problem(
                            f"consul:{full}",
                            named[1],
                            named[2],
                            "name",
                            f"names provider {named[0]!r} but the key is {PROVIDERS_DIR}{name}; they must agree",
                        )
                    )
                add(full, "providers", headers, text, 4)
        elif section in split:
            full, value = split[section]
            text, found = _text(value, f"consul:{full}")
            problems.extend(found)
            add(full, section, [f"{section}:"], text, 2)
    return PolicyDocument("\n".join(lines) + "\n", f"consul:{prefix}", tuple(segments), tuple(problems))


def _provider_name(text: str) -> tuple[str, int, int] | bool | None:
    """A provider key's own `name:` (value, line, column); None when a block mapping has none (the
    key's name is written for it); True when it cannot tell (load_policy will report why)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return True
    if not isinstance(node, yaml.MappingNode) or node.flow_style:
        return True
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == "name":
            mark = value_node.start_mark
            return str(value_node.value), mark.line + 1, mark.column + 1
    return None


# --- the source ----------------------------------------------------------------------------------


def _decode_entries(data: list[dict[str, Any]] | None) -> dict[str, bytes | None]:
    return {entry["Key"]: entry.get("Value") for entry in data or []}


class ConsulPolicySource:
    """The policy in Consul KV, same shape as FilePolicySource: ``load_once()`` for the first policy,
    ``watch(on_policy, on_error)`` afterwards. Each evaluation's outcome is written to
    ``<prefix>status`` so that whoever pushed a policy can see whether it was taken."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        prefix: str = DEFAULT_PREFIX,
        token: str | None = None,
        *,
        datacenter: str | None = None,
        settings: LoopSettings = DEFAULT_SETTINGS,
        write_status: bool = True,
    ) -> None:
        parse_address(address)  # fail at construction, not in the loop
        parse_duration(settings.wait)
        self.address = address
        self.prefix = normalize_prefix(prefix)
        self.token = token
        self.datacenter = datacenter
        self.settings = settings
        self.write_status = write_status
        self.index = 0  # X-Consul-Index of the last evaluated read
        self._client: consul.aio.Consul | None = None
        self._digest: str | None = None  # of the last evaluated text (accepted or not)
        self._good: tuple[str, int] | None = None  # (digest, index) of the last accepted policy
        self._warned_shadowed: tuple[str, ...] = ()

    @property
    def policy_key(self) -> str:
        return self.prefix + POLICY_KEY

    @property
    def status_key(self) -> str:
        return self.prefix + STATUS_KEY

    @property
    def watch_name(self) -> str:
        return f"kv:{self.prefix}"

    def client(self) -> consul.aio.Consul:
        if self._client is None:
            timeout = blocking_timeout(self.settings.wait)
            self._client = make_client(self.address, self.token, self.datacenter, timeout)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def _fetch(self, index: int, wait: str) -> tuple[int, dict[str, bytes | None]]:
        returned, data = await self.client().kv.get(
            self.prefix,
            index=index or None,
            wait=wait,
            recurse=True,
            connections_timeout=blocking_timeout(wait) if index else REQUEST_TIMEOUT,
        )
        return consul_index(returned), _decode_entries(data)

    async def load_once(self) -> GatewayPolicy | None:
        """One non-blocking read. The policy when it changed since the last evaluation, None when
        it did not; raises PolicyError when it is invalid or missing (the last good one stays),
        and the errors of an unreachable Consul (TRANSIENT_ERRORS)."""
        index, entries = await self._fetch(0, self.settings.wait)
        return await self._evaluate(index, entries)

    async def watch(self, on_policy: Callable[[GatewayPolicy], None], on_error: Callable[[PolicyError], None]) -> None:
        async def handle(index: int, entries: dict[str, bytes | None]) -> None:
            try:
                policy = await self._evaluate(index, entries)
            except PolicyError as exc:
                on_error(exc)
                return
            if policy is not None:
                on_policy(policy)

        loop: BlockingLoop[dict[str, bytes | None]] = BlockingLoop(self.watch_name, self._fetch, self.settings)
        loop.index = self.index  # continue from load_once() without reading the same data again
        try:
            await loop.run(handle)
        finally:
            await self.close()

    async def _evaluate(self, index: int, entries: dict[str, bytes | None]) -> GatewayPolicy | None:
        self.index = index
        document = assemble(entries, self.prefix)
        if document is None:
            document = PolicyDocument("", f"consul:{self.policy_key}")
            missing = PolicyError.single(
                document.source,
                f"no policy in Consul KV under {self.prefix!r} (write one with `ccr-gateway policy push FILE`)",
            )
        else:
            missing = None
        if document.digest == self._digest:
            return None  # a blocking query returned without a change that matters here
        self._digest = document.digest
        if document.shadowed and document.shadowed != self._warned_shadowed:
            log.warning("%s wins over the split keys %s (ignored)", self.policy_key, ", ".join(document.shadowed))
            self._warned_shadowed = document.shadowed
        try:
            if missing is not None:
                raise missing
            policy = document.load()
        except PolicyError as exc:
            CONSUL_POLICY_REJECTED.inc()
            await self._write_status(document, index, exc)
            raise
        self._good = (document.digest, index)
        await self._write_status(document, index, None)
        return policy

    def status(self, document: PolicyDocument, index: int, error: PolicyError | None) -> dict[str, Any]:
        good_digest, good_index = self._good if self._good else (None, None)
        return {
            "version": good_digest,  # of the policy in force (the last accepted)
            "index": good_index,  # X-Consul-Index it was read at
            "accepted": error is None,
            "error": str(error) if error is not None else None,
            "evaluated": document.digest,
            "evaluated_index": index,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "source": document.source,
        }

    async def _write_status(self, document: PolicyDocument, index: int, error: PolicyError | None) -> None:
        if not self.write_status:
            return
        body = json.dumps(self.status(document, index, error), indent=2)
        try:
            await self.client().kv.put(self.status_key, body, connections_timeout=REQUEST_TIMEOUT)
        except TRANSIENT_ERRORS as exc:  # e.g. a read-only token: the status is a courtesy
            log.warning("cannot write %s: %s: %s", self.status_key, type(exc).__name__, exc)
