"""A hand-written stdio peer that breaks the transport on purpose, which an SDK server cannot: the
SDK moves fd 1 aside while it serves, so a stray print lands on stderr, not on the wire.

``python raw_server.py MODE``; for each request line it reads:
- ``garbage``: writes a line that is not JSON-RPC, then the right answer (``{"echo": <method>}``);
- ``cut``: writes the first half of an answer, no newline, and exits with code 3.
"""

from __future__ import annotations

import json
import os
import sys


def main(mode: str) -> None:
    print("raw server starting", file=sys.stderr, flush=True)
    for line in sys.stdin:
        message = json.loads(line)
        if "id" not in message:
            continue
        if mode == "cut":
            os.write(1, b'{"jsonrpc": "2.0", "id": ')
            os._exit(3)
        os.write(1, b"this is not JSON-RPC\n")
        answer = {"jsonrpc": "2.0", "id": message["id"], "result": {"echo": message["method"]}}
        os.write(1, json.dumps(answer).encode() + b"\n")


if __name__ == "__main__":
    main(sys.argv[1])
