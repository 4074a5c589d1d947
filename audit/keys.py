"""The audit chain's HMAC key: from the environment, a file, or (embedded mode) a new file.

In order: ``$CCR_AUDIT_KEY`` (hex or base64, or a ``vault:<mount>/data/<path>#<field>`` reference
read from Vault with the process's Vault settings, ccr.v1.vault_refs: the key never sits on disk),
``--key-file`` / ``$CCR_AUDIT_KEY_FILE``,
then the default file ``$XDG_DATA_HOME/ccr-gateway/audit.key``. Only the embedded (SQLite) store
creates a missing default file (32 random bytes, hex, mode 0600): with PostgreSQL several hosts
write one chain, so they must be given the same key rather than each invent one.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from audit.chain import ChainKey
from ccr.v1.env_refs import VAULT_PREFIX

KEY_ENV = "CCR_AUDIT_KEY"
KEY_FILE_ENV = "CCR_AUDIT_KEY_FILE"


class AuditKeyError(Exception):
    """No usable key (the message never holds the key)."""


def default_key_path() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "ccr-gateway" / "audit.key"


def load_key(
    key_file: str | None = None, *, create: bool = False, environ: Mapping[str, str] | None = None
) -> ChainKey:
    env = os.environ if environ is None else environ
    if env.get(KEY_ENV, "").startswith(VAULT_PREFIX):  # the key kept in Vault, read when opened
        return _parse(_from_vault(env[KEY_ENV], env), env[KEY_ENV])
    if env.get(KEY_ENV):
        return _parse(env[KEY_ENV], f"${KEY_ENV}")
    explicit = key_file or env.get(KEY_FILE_ENV)
    path = Path(explicit).expanduser() if explicit else default_key_path()
    if not path.exists():
        if not create or explicit:
            hint = (
                ""
                if explicit
                else f" (set {KEY_FILE_ENV} or {KEY_ENV}: every writer of a shared log needs the same key)"
            )
            raise AuditKeyError(f"no audit key at {path}{hint}")
        _create(path)
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditKeyError(f"cannot read the audit key {path}: {exc}") from None
    return _parse(text, str(path))


def _from_vault(reference: str, env: Mapping[str, str]) -> str:
    from ccr.v1 import vault_refs

    try:
        return vault_refs.resolve(reference, env)
    except vault_refs.VaultReferenceError as exc:
        raise AuditKeyError(str(exc)) from None


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(secrets.token_hex(32) + "\n")


def _parse(text: str, where: str) -> ChainKey:
    text = text.strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        try:
            secret = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise AuditKeyError(f"the audit key in {where} is neither hex nor base64") from None
    try:
        return ChainKey(secret)
    except ValueError as exc:
        raise AuditKeyError(f"the audit key in {where}: {exc}") from None
