"""The tamper-evident audit log: hash-chained entries of policy, key and admin changes (docs/audit.md)."""
