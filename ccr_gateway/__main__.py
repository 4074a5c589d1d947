"""`python -m ccr_gateway` is the `ccr-gateway` command."""

from ccr_gateway.cli import main

raise SystemExit(main())
