"""``python -m fake_provider``: the same server ``ccr-gateway fake-provider`` starts."""

from __future__ import annotations

import argparse

from fake_provider.server import add_arguments, run


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fake_provider", description="Fake Anthropic/OpenAI/Gemini upstream for tests."
    )
    add_arguments(parser)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
