"""Every command line the deployment files give the image is one its parsers accept.

The image's entry point is `ccr-gateway`; the probes and the metrics relay run
`python -m ccr_gateway.pod`; the Envoy bootstrap is written by `ccr-gateway envoy-bootstrap
--output`. Each is parsed by the same argparse parser the process would use,
so a renamed or removed flag fails here instead of in a crash-looping pod.
"""

from __future__ import annotations

import argparse
import shlex

from ccr_gateway import cli, pod

POD_MODULE = ["python", "-m", "ccr_gateway.pod"]


def parse_ccr(argv: list[str]) -> argparse.Namespace:
    """``ccr-gateway ARGV`` parsed as cli.main parses it (AssertionError when refused)."""
    selected = next((word for word in argv if word in cli.PLUGIN_COMMANDS), None)
    try:
        return cli.build_parser(selected).parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`ccr-gateway {shlex.join(argv)}` is refused by its parser") from exc


def parse_pod(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ccr_gateway.pod")
    pod.add_arguments(parser)
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`python -m ccr_gateway.pod {shlex.join(argv)}` is refused by its parser") from exc


def check_exec(command: list[str]) -> None:
    """An exec probe or health check: `ccr-gateway ...` or `python -m ccr_gateway.pod ...`."""
    if command[:3] == POD_MODULE:
        parse_pod(command[3:])
    elif command[:1] == ["ccr-gateway"]:
        parse_ccr(command[1:])
    else:
        raise AssertionError(f"unexpected exec command {command}")
