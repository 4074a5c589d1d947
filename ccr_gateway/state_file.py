"""One JSON file per running `ccr-gateway up`, for `ccr-gateway status` and for the next `up`.

``<state dir>/<pid of up>.json``; the state dir is ``$CCR_GATEWAY_STATE_DIR``, else
``${XDG_RUNTIME_DIR:-/tmp}/ccr-gateway-<uid>``. Written whole each time (a temporary file, then
``os.replace``): a reader sees the previous version or the next one, never half of one. The keys
are a contract with the status command; add keys, do not rename them.

An `up` killed by SIGKILL cannot remove its file or its run directory (the Unix sockets); the next
`up` does (``remove_stale``), once the pid in the file is no longer a running `up`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

RUN_DIR_PREFIX = "ccr-gateway-"


def state_dir() -> Path:
    explicit = os.environ.get("CCR_GATEWAY_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"ccr-gateway-{os.getuid()}"


def write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, path)


def is_running_gateway(pid: int) -> bool:
    """Is ``pid`` a live `ccr-gateway up` (and not an unrelated process that reuses the number)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux): trust the pid
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return b"ccr_gateway" in cmdline or b"ccr-gateway" in cmdline


def remove_stale(directory: Path) -> list[str]:
    """Delete the state files, and the run directories they name, of `up` processes that died
    without cleaning up; returns what was removed, for the log."""
    removed = []
    for path in directory.glob("*.json"):
        if not path.stem.isdigit() or is_running_gateway(int(path.stem)) or int(path.stem) == os.getpid():
            continue
        with contextlib.suppress(OSError, ValueError):
            run_dir = json.loads(path.read_text()).get("run_dir", "")
            # Only a directory `up` made: a hand-edited file must not make us delete anything else.
            if run_dir and Path(run_dir).name.startswith(RUN_DIR_PREFIX):
                shutil.rmtree(run_dir, ignore_errors=True)
                removed.append(run_dir)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        removed.append(str(path))
    return removed
