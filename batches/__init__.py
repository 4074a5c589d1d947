"""Message Batches (issue 20): the sans-IO core.

Bytes and dicts in; dicts, bytes and decisions out. Nothing here opens a socket, reads a clock or
draws randomness on its own: time (``now``, unix seconds) and entropy are parameters, so the
RabbitMQ, PostgreSQL, HTTP and worker adapters built around it stay thin and the core stays
testable without any of them.

  model.py          one API-neutral batch: items, their states and every transition
  anthropic_api.py  the Anthropic Message Batches API: validation, objects, results JSONL, errors
  openai_api.py     the OpenAI Files + Batch API: input file, objects, output/error files, errors
  lanes.py          scheduling: the two lanes, per-tenant fairness, retries, dead-letter decisions
  api_common.py     what both APIs share: ApiError, size-limited JSON parsing, cursor pagination
  ids.py            object ids from caller-supplied entropy
"""
