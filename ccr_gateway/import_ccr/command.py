"""`ccr-gateway import-ccr CONFIG -o POLICY`: the only part that touches files."""

from __future__ import annotations

import argparse
import os
import sys

from ccr_gateway.generated_file import fail, hand_over, output_path
from ccr_gateway.import_ccr.convert import DEFAULT_LISTEN_PORT
from ccr_gateway.import_ccr.emit import import_text
from ccr_gateway.import_ccr.model import ConfigError
from control_plane.policy import PolicyError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="CCR config file (e.g. ~/.claude-code-router/config.json)")
    parser.add_argument("-o", "--output", help="policy YAML file to write (default: stdout)")
    parser.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    parser.add_argument(
        "--listen-port",
        type=int,
        default=None,
        help=f"gateway listener port (default: the config's PORT, else {DEFAULT_LISTEN_PORT})",
    )


def run(args: argparse.Namespace) -> int:
    """0: written; 1: the generated policy does not validate (a bug); 2: the input or output is unusable."""
    source = args.config
    path = os.path.expanduser(source)
    output = output_path(args)
    if output and os.path.exists(output):
        if os.path.exists(path) and os.path.samefile(output, path):
            return fail(f"error: {args.output} is the CCR config itself; choose another --output")
        if not getattr(args, "force", False):
            return fail(f"error: {args.output} exists; use --force to overwrite it")
    listen_port = getattr(args, "listen_port", None)
    if listen_port is not None and not 1 <= listen_port <= 65535:
        return fail(f"error: --listen-port {listen_port} is not a port number")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return fail(f"error: cannot read {source}: {reason}")
    try:
        rendered, findings = import_text(text, source, listen_port)
    except ConfigError as exc:
        for finding in exc.findings:
            print(finding, file=sys.stderr)
        return fail(f"error: {exc}")
    except PolicyError as exc:
        return fail(f"internal error: import-ccr produced a policy that does not validate (a bug):\n{exc}", 1)
    for finding in findings:
        print(finding, file=sys.stderr)
    return hand_over(rendered, output, args.output, f"; check it with: ccr-gateway validate -c {args.output}")
