"""Identity and limits for the decision service: who is calling (virtual keys: keys, key_store,
key_cache, keys_cli) and how much they may use (rate limits, concurrency, budgets: limits*)."""
