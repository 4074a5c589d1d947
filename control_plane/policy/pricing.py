"""Model prices: a model entry's own ``pricing:``, else the bundled table of well-known models.

```yaml
models:
  - name: claude-sonnet-4-5
    id: claude-sonnet-4-5-20250929
    pricing: {input: 3.0, output: 15.0, cache_read: 0.3, cache_write: 3.75}   # USD per million tokens
```

The table is matched on the provider's model id (``id``, not the name clients use), by the longest
family prefix that ends where the id's next part begins: ``claude-sonnet-4-5-20250929`` and
``claude-sonnet-4-5@20250929`` are ``claude-sonnet-4-5``; ``gpt-4o-mini-2024-07-18`` is
``gpt-4o-mini``, not ``gpt-4o``. Hosting prefixes (``models/``, ``anthropic/``, Bedrock's
``us.anthropic.``) are ignored. A model the table does not know and the policy does not price is
recorded at cost 0, and the policy says so in a warning (``unpriced_warning``).
"""

from __future__ import annotations

from ccr.v1.pricing import Prices
from control_plane.policy.yaml_check import Checker, Located, join, kind_of

PRICING_FIELDS = ("input", "output", "cache_read", "cache_write")
_MAX_PRICE = 100_000.0  # USD per million tokens: far above any model, low enough to catch a typo in units


def _anthropic(input: float, output: float) -> Prices:
    """Anthropic's cache prices follow the input price: reads 0.1x, 5-minute writes 1.25x."""
    return Prices(input, output, round(input * 0.1, 6), round(input * 1.25, 6))


def _no_cache_writes(input: float, output: float, cache_read: float) -> Prices:
    """OpenAI and Gemini charge no cache writes: a prompt written to the cache is billed as input."""
    return Prices(input, output, cache_read, input)


# List prices in USD per million tokens, standard tier, prompts under 200k tokens, as the providers
# published them in 2025-11. Prices change: a policy's own `pricing:` always wins over this table.
DEFAULT_PRICES: dict[str, Prices] = {
    # Anthropic
    "claude-opus-4-5": _anthropic(5.0, 25.0),
    "claude-opus-4-1": _anthropic(15.0, 75.0),
    "claude-opus-4": _anthropic(15.0, 75.0),
    "claude-sonnet-4-5": _anthropic(3.0, 15.0),
    "claude-sonnet-4": _anthropic(3.0, 15.0),
    "claude-haiku-4-5": _anthropic(1.0, 5.0),
    "claude-3-7-sonnet": _anthropic(3.0, 15.0),
    "claude-3-5-sonnet": _anthropic(3.0, 15.0),
    "claude-3-5-haiku": Prices(0.8, 4.0, 0.08, 1.0),
    "claude-3-opus": _anthropic(15.0, 75.0),
    "claude-3-haiku": Prices(0.25, 1.25, 0.03, 0.3),
    # OpenAI
    "gpt-5-pro": _no_cache_writes(15.0, 120.0, 15.0),
    "gpt-5-nano": _no_cache_writes(0.05, 0.4, 0.005),
    "gpt-5-mini": _no_cache_writes(0.25, 2.0, 0.025),
    "gpt-5": _no_cache_writes(1.25, 10.0, 0.125),  # gpt-5.1, gpt-5-codex, gpt-5-chat-latest too
    "gpt-4.1-nano": _no_cache_writes(0.1, 0.4, 0.025),
    "gpt-4.1-mini": _no_cache_writes(0.4, 1.6, 0.1),
    "gpt-4.1": _no_cache_writes(2.0, 8.0, 0.5),
    "gpt-4o-mini": _no_cache_writes(0.15, 0.6, 0.075),
    "gpt-4o-2024-05-13": _no_cache_writes(5.0, 15.0, 5.0),  # the first gpt-4o snapshot kept its price
    "gpt-4o": _no_cache_writes(2.5, 10.0, 1.25),
    "o1-pro": _no_cache_writes(150.0, 600.0, 150.0),
    "o1-mini": _no_cache_writes(1.1, 4.4, 0.55),
    "o1": _no_cache_writes(15.0, 60.0, 7.5),
    "o3-pro": _no_cache_writes(20.0, 80.0, 20.0),
    "o3-mini": _no_cache_writes(1.1, 4.4, 0.55),
    "o3": _no_cache_writes(2.0, 8.0, 0.5),
    "o4-mini": _no_cache_writes(1.1, 4.4, 0.275),
    # Google Gemini
    "gemini-2.5-pro": _no_cache_writes(1.25, 10.0, 0.31),
    "gemini-2.5-flash-lite": _no_cache_writes(0.1, 0.4, 0.025),
    "gemini-2.5-flash": _no_cache_writes(0.3, 2.5, 0.075),
    "gemini-2.0-flash-lite": _no_cache_writes(0.075, 0.3, 0.075),
    "gemini-2.0-flash": _no_cache_writes(0.1, 0.4, 0.025),
}
# Where an id's family name may end: "claude-sonnet-4-5" + "-20250929", "@20250929" (Vertex),
# ":0" (Bedrock), ".1" (gpt-5.1).
_FAMILY_END = ("-", "@", ":", ".")
_HOSTING_PREFIXES = ("global.", "us.", "eu.", "apac.", "anthropic.")  # Bedrock: us.anthropic.claude-...


def default_prices(model_id: str) -> Prices | None:
    """The bundled table's prices for a provider's model id, by its longest matching family."""
    name = model_id.lower().rsplit("/", 1)[-1]  # models/gemini-2.5-pro, anthropic/claude-...
    for prefix in _HOSTING_PREFIXES:
        name = name.removeprefix(prefix)
    best = ""
    for family in DEFAULT_PRICES:
        if len(family) > len(best) and name.startswith(family):
            rest = name[len(family) :]
            if not rest or rest.startswith(_FAMILY_END):
                best = family
    return DEFAULT_PRICES[best] if best else None


def parse_pricing(check: Checker, at: Located, path: str) -> Prices | None:
    """A model's ``pricing:`` mapping; input and output are required, cache prices default to 0
    (a provider without prompt caching). None when it has problems (recorded in ``check``)."""
    before = len(check.problems)
    fields = check.mapping(at, path, PRICING_FIELDS, required=("input", "output"))
    values: dict[str, float] = {}
    for key, value_at in fields.items():
        value = value_at.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            check.problem(value_at, join(path, key), f"must be a price in USD per million tokens, got {kind_of(value)}")
        elif not 0 <= value <= _MAX_PRICE:
            check.problem(value_at, join(path, key), f"must be between 0 and {_MAX_PRICE:g} USD per million tokens")
        else:
            values[key] = float(value)
    if len(check.problems) > before or "input" not in values or "output" not in values:
        return None
    return Prices(**values)


def unpriced_warning(check: Checker, at: Located, path: str, model_id: str) -> None:
    check.warning(
        at,
        path,
        f"model {model_id!r} has no price (no pricing: here, and the bundled table does not know it): "
        "its usage is recorded at cost 0; write pricing: {input: 0, output: 0} for a free model",
    )
