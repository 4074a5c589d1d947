"""The response cache: keys, rules, stored entries, replay and storage (issue 16)."""
