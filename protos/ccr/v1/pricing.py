"""What a model's tokens cost: the prices the policy gives a model, and the one cost formula.

The control plane resolves each model's prices (the policy's own ``pricing:`` or the bundled table)
and sends them to ext_proc in the Policy; ext_proc prices each usage record with ``cost_usd``. One
formula in the contract, so a report that recomputes a cost gets the record's figure.

Pure: no I/O, standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

PER_TOKENS = 1_000_000  # prices are in USD per million tokens, as providers publish them


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per million tokens. ``cache_read``/``cache_write`` apply to the prompt's cached part
    (Anthropic's cache_read/cache_creation_input_tokens, OpenAI's cached_tokens, Gemini's
    cachedContentTokenCount); ``input`` to the rest of the prompt."""

    input: float
    output: float
    cache_read: float = 0.0
    cache_write: float = 0.0


def cost_usd(prices: Prices | None, input: int, output: int, cache_read: int, cache_creation: int) -> float:
    """The cost of one request's tokens; 0.0 for a model priced nowhere (the policy warned)."""
    if prices is None:
        return 0.0
    total = (
        input * prices.input
        + output * prices.output
        + cache_read * prices.cache_read
        + cache_creation * prices.cache_write
    )
    # Rounded to a millionth of a cent: float noise (0.1 + 0.2) must not leak into sums and exports.
    return round(total / PER_TOKENS, 8)
