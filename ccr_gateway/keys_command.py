"""`ccr-gateway keys ...`: the key CLI (extproc.auth.keys_cli) on the local store, or with
``--admin URL`` the same actions through a control plane's Admin API (ccr_gateway.admin_client).
Here in the composition root because ext_proc's code carries no HTTP client of the Admin API."""

from __future__ import annotations

import argparse

from extproc.auth import keys_cli


def add_arguments(parser: argparse.ArgumentParser) -> None:
    keys_cli.add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.admin:
        from ccr_gateway.admin_client import run_keys

        return run_keys(args)
    return keys_cli.run(args)
