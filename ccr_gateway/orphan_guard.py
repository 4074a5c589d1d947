"""Run a command that dies with its parent: ``python -I -S orphan_guard.py PARENT_PID COMMAND...``.

`ccr-gateway up` starts every child through this script. It asks Linux to SIGKILL the process when
its parent dies (prctl PR_SET_PDEATHSIG, which survives the exec below), then becomes the command.
So a SIGKILLed or crashed `up` never leaves Envoy or a worker behind holding its ports.

A script rather than ``subprocess.Popen(preexec_fn=...)``: preexec_fn runs Python between fork and
exec, which is unsafe once the parent has threads (`up` has two: Envoy's log filter and the metrics
server). It imports only the standard library and runs with ``-I -S`` (about 10 ms).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    parent, command = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # The parent may have died between our fork and the prctl: then nobody would signal us.
        if os.getppid() != parent:
            raise SystemExit(1)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
