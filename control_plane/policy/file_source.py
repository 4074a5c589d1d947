"""Policy from a local YAML file, watched for edits (the embedded default source).

Polling the file's content (not inotify) keeps working when editors replace the file instead of
writing it in place, when it sits on a mounted volume (Kubernetes ConfigMap symlink swaps), and
costs one stat() per interval.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable

from control_plane.policy import GatewayPolicy, PolicyError, load_policy

log = logging.getLogger("ccr.control_plane.file")


class FilePolicySource:
    def __init__(self, path: str, interval: float = 0.5) -> None:
        self.path = path
        self.interval = interval
        self._seen: tuple[float, int, int] | None = None
        self._digest: bytes | None = None

    def load(self) -> GatewayPolicy | None:
        """Read the file if it changed. Returns the new policy, None when unchanged; raises
        PolicyError when the new content is invalid (the caller keeps the last good policy)."""
        try:
            info = os.stat(self.path)
        except OSError as exc:
            raise PolicyError.single(self.path, f"cannot read: {exc.strerror}") from None
        seen = (info.st_mtime, info.st_size, info.st_ino)
        if seen == self._seen:
            return None
        self._seen = seen
        with open(self.path, "rb") as handle:
            raw = handle.read()
        digest = hashlib.sha256(raw).digest()
        if digest == self._digest:
            return None
        self._digest = digest
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError.single(self.path, f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
        return load_policy(text, source=self.path)

    async def load_once(self) -> GatewayPolicy | None:
        return self.load()

    async def close(self) -> None:
        """Nothing to release: the file is opened per read."""

    async def watch(self, on_policy: Callable[[GatewayPolicy], None], on_error: Callable[[PolicyError], None]) -> None:
        while True:
            try:
                policy = self.load()
            except PolicyError as exc:
                on_error(exc)
            else:
                if policy is not None:
                    on_policy(policy)
            await asyncio.sleep(self.interval)
