"""A small Vault client: log in (token, AppRole, Kubernetes), keep the token alive, read KV v2.

Built on hvac's synchronous API (requests underneath): hvac is the client the issue names, and its
login/KV/renew calls are already tested against real Vault. Its calls block, so the store
(ccr.v1.vault_keys, ccr.v1.vault_refs) runs them in a thread (asyncio.to_thread) and never on the event loop,
except the first read of a new policy's keys, which is bounded by ``timeout``. hvac's exceptions
are mapped here, at the boundary, to one flat hierarchy (VaultError and its kinds).

Credentials never come from the policy: the token from the environment variable ``token_env``
(VAULT_TOKEN), the AppRole secret id from the variable ``secret_id_env`` names, the Kubernetes JWT
from the service account token file. Nothing here logs a token or a value.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ccr.v1.secret_ref import SecretRef

DEFAULT_JWT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
METHODS = ("token", "approle", "kubernetes")


@dataclass(frozen=True, slots=True)
class VaultSettings:
    """How to reach and log in to Vault (the policy's ``vault:`` section; no secret in it)."""

    address: str
    method: str = "token"
    mount: str = ""  # the auth method's mount; "" = the method's name
    token_env: str = "VAULT_TOKEN"
    role_id: str = ""  # AppRole
    secret_id_env: str = ""  # AppRole: the variable holding the secret id
    role: str = ""  # Kubernetes
    jwt_path: str = DEFAULT_JWT_PATH  # Kubernetes
    rotation_interval_s: float = 24 * 3600.0
    timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class TokenInfo:
    ttl_s: float  # 0: never expires (a root or periodic-less token)
    renewable: bool


@dataclass(frozen=True, slots=True)
class SecretVersion:
    data: Mapping[str, Any]
    version: int


class VaultError(Exception):
    """Vault answered with an error, or could not be reached. The message never holds a secret."""

    status = 0


class PermissionDenied(VaultError):
    status = 403


class NotFound(VaultError):
    status = 404


class InvalidRequest(VaultError):  # 400: a check-and-set mismatch, an invalid login, an unknown lease
    status = 400


class Unavailable(VaultError):  # no connection, a timeout, 5xx, sealed
    status = 503


class VaultClient:
    def __init__(self, settings: VaultSettings, environ: Mapping[str, str] | None = None) -> None:
        import hvac  # loaded only where a policy uses Vault: a worker without it stays small

        self.settings = settings
        self.environ = os.environ if environ is None else environ
        # token="" and url given: hvac would otherwise read VAULT_TOKEN, ~/.vault-token, VAULT_ADDR.
        self._hvac = hvac.Client(url=settings.address, token="", timeout=settings.timeout_s)

    @property
    def has_token(self) -> bool:
        return bool(self._hvac.token)

    def login(self) -> TokenInfo:
        """Get a token by the configured method; its TTL says when to renew it."""
        s = self.settings
        if s.method == "token":
            token = self.environ.get(s.token_env, "")
            if not token:
                raise PermissionDenied(f"no Vault token: environment variable {s.token_env} is not set")
            self._hvac.token = token
            data = self._call(self._hvac.auth.token.lookup_self)["data"]
            return TokenInfo(float(data.get("ttl") or 0), bool(data.get("renewable")))
        if s.method == "approle":
            secret_id = self.environ.get(s.secret_id_env, "")
            if not secret_id:
                raise PermissionDenied(f"no AppRole secret id: environment variable {s.secret_id_env} is not set")
            answer = self._call(
                self._hvac.auth.approle.login, role_id=s.role_id, secret_id=secret_id, mount_point=s.mount or "approle"
            )
        elif s.method == "kubernetes":
            try:
                with open(s.jwt_path, encoding="utf-8") as handle:
                    jwt = handle.read().strip()
            except OSError as exc:
                raise PermissionDenied(f"cannot read the service account token {s.jwt_path}: {exc.strerror}") from None
            answer = self._call(
                self._hvac.auth.kubernetes.login, role=s.role, jwt=jwt, mount_point=s.mount or "kubernetes"
            )
        else:
            raise InvalidRequest(f"unknown auth method {s.method!r}")
        return _token_info(answer)

    def renew_token(self, increment_s: int | None = None) -> TokenInfo:
        answer = self._call(self._hvac.auth.token.renew_self, increment=increment_s)
        return _token_info(answer)

    def read(self, ref: SecretRef, version: int | None = None) -> SecretVersion:
        answer = self._call(
            self._hvac.secrets.kv.v2.read_secret_version,
            path=ref.path,
            version=version,
            mount_point=ref.mount,
            raise_on_deleted_version=True,
        )
        data = answer["data"]
        return SecretVersion(data.get("data") or {}, int((data.get("metadata") or {}).get("version") or 0))

    def write(self, ref: SecretRef, data: Mapping[str, Any], cas: int | None = None) -> int:
        """A new version (``cas``: only if the current one is that; 0: only if none); its number."""
        answer = self._call(
            self._hvac.secrets.kv.v2.create_or_update_secret,
            path=ref.path,
            secret=dict(data),
            cas=cas,
            mount_point=ref.mount,
        )
        return int(answer["data"]["version"])

    def metadata(self, ref: SecretRef) -> Mapping[str, Any]:
        return self._call(self._hvac.secrets.kv.v2.read_secret_metadata, path=ref.path, mount_point=ref.mount)["data"]

    def renew_lease(self, lease_id: str, increment_s: int | None = None) -> float:
        """Renew a dynamic secret's lease; its new duration in seconds."""
        answer = self._call(self._hvac.sys.renew_lease, lease_id=lease_id, increment=increment_s)
        return float(answer.get("lease_duration") or 0)

    def _call(self, method: Any, **kwargs: Any) -> Any:
        import hvac.exceptions as hv
        import requests

        try:
            return method(**kwargs)
        except (hv.Forbidden, hv.Unauthorized) as exc:
            raise PermissionDenied(_message(exc, "permission denied")) from None
        except hv.InvalidPath as exc:
            raise NotFound(_message(exc, "not found")) from None
        except hv.InvalidRequest as exc:
            raise InvalidRequest(_message(exc, "invalid request")) from None
        except (hv.VaultDown, hv.InternalServerError, hv.BadGateway) as exc:
            raise Unavailable(_message(exc, "Vault is unavailable")) from None
        except hv.VaultError as exc:
            raise VaultError(_message(exc, type(exc).__name__)) from None
        except requests.RequestException as exc:
            raise Unavailable(f"cannot reach Vault at {self.settings.address}: {type(exc).__name__}") from None


def _token_info(answer: Mapping[str, Any]) -> TokenInfo:
    auth = answer.get("auth") or {}
    return TokenInfo(float(auth.get("lease_duration") or 0), bool(auth.get("renewable")))


def _message(exc: Any, fallback: str) -> str:
    """Vault's own error texts (they name paths and reasons, never values); newlines folded."""
    errors = [str(e) for e in (getattr(exc, "errors", None) or []) if e]
    if not errors and getattr(exc, "text", None):  # hvac parses the envelope only when it can
        try:
            errors = [str(e) for e in json.loads(exc.text).get("errors") or [] if e]
        except (ValueError, AttributeError):
            errors = []
    return " ".join("; ".join(errors).split()) or fallback
