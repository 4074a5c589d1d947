"""`ccr-gateway import-ccr`: a Claude Code Router ``config.json`` -> this gateway's policy YAML.

Everything here is pure except ``run``: ``parse_config`` (JSON with ``//`` and ``/* */`` comments and
trailing commas, as CCR accepts) -> ``convert`` (a ``Conversion``: the policy as plain data plus one
``Finding`` per thing worth telling the user) -> ``render`` (YAML with the findings as a comment
header). ``import_text`` chains the three and checks the result with ``load_policy``, so an import
either yields a policy the gateway accepts or is a bug in this package.

What the importer never does: copy a secret. Literal API keys become ``api_key_env`` names plus an
"action needed" finding; CCR's ``APIKEY`` becomes ``auth.required: true`` (clients
then use virtual keys, created by the user), never copied; query strings and
transformer options (which may hold keys) are dropped and never echoed in findings.

The package, by step: ``read`` (CCR's JSON dialect), ``convert`` (the policy and the findings),
``emit`` (``render``: YAML; ``import_text``: the three, checked together), ``command`` (the CLI).
"""

from __future__ import annotations

from ccr_gateway.import_ccr.command import add_arguments, run
from ccr_gateway.import_ccr.convert import convert
from ccr_gateway.import_ccr.emit import import_text, render
from ccr_gateway.import_ccr.model import ConfigError, Conversion, Finding, Kind
from ccr_gateway.import_ccr.read import parse_config

__all__ = [
    "ConfigError",
    "Conversion",
    "Finding",
    "Kind",
    "add_arguments",
    "convert",
    "import_text",
    "parse_config",
    "render",
    "run",
]
