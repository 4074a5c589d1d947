"""The usage and spend ledger: every request's usage record, exactly once, from the decision service
to storage, and the reports read from it.

  ext_proc worker --UsageSink.put(records)--> publisher (RabbitMQ, publisher confirms; a local fsync'd
  spool while the broker is away) --> quorum queue --> writer (`ccr-gateway ledger`: batches into
  PostgreSQL, ack after commit) ; or, with nothing configured, straight into a local SQLite ledger.

The record itself is the contract ``ccr.v1.usage_record``. This package imports neither ext_proc nor
the control plane: the composition root (ccr_gateway) hands it what it needs.
"""
