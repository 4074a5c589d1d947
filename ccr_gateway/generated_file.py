"""How the import commands (`import-ccr`, `import-mcp`) hand over what they generated: to stdout,
or to ``-o FILE`` written atomically (a reader never sees half a policy), with the same messages
and exit codes."""

from __future__ import annotations

import os
import sys
import tempfile


def output_path(args: object) -> str | None:
    """``--output`` with ``~`` expanded; None for stdout (absent or ``-``)."""
    output = getattr(args, "output", None)
    return None if output in (None, "-") else os.path.expanduser(output)


def hand_over(rendered: str, output: str | None, shown_as: str, written_note: str = "") -> int:
    """Print ``rendered`` or write it to ``output``: 0, or 2 when the file cannot be written."""
    if output is None:
        sys.stdout.write(rendered)
        return 0
    try:
        write_atomically(output, rendered)
    except OSError as exc:
        return fail(f"error: cannot write {shown_as}: {exc.strerror or exc}")
    print(f"wrote {shown_as}{written_note}", file=sys.stderr)
    return 0


def write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".ccr-gateway-", suffix=".yaml", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def fail(message: str, code: int = 2) -> int:
    print(message, file=sys.stderr)
    return code
