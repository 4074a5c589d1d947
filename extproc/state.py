"""What every request of one ext_proc worker reads, whichever transport brought it."""

from __future__ import annotations

from extproc.auth.decision import Authenticator
from extproc.cache.inflight import Flights
from extproc.cache.repeats import Repeats
from extproc.cache.store import CacheStore
from extproc.responses_store import ResponseStore, Saver
from extproc.routing_table import RoutingTable
from extproc.tokens import SessionUsage


class GatewayState:
    """What every request reads: the routing table currently in force (None until the first policy)
    and the worker's key cache and limiter (``auth``; without a key store every request is anonymous
    unless the policy requires keys), and the response cache's store (``cache``; None: nothing is
    cached whatever the policy says) with its flights (``flights``: identical requests in flight, which
    wait for the first; None: they never wait)."""

    def __init__(
        self, auth: Authenticator | None = None, cache: CacheStore | None = None, flights: Flights | None = None
    ) -> None:
        self.table: RoutingTable | None = None
        self.sessions = SessionUsage()  # last real input tokens per session (long-context routing)
        self.auth = auth if auth is not None else Authenticator()
        self.cache = cache
        self.flights = flights if flights is not None or cache is None else Flights()
        # Byte-identical repeats of cached requests: looked up without being parsed or routed again.
        self.repeats = Repeats() if cache is not None else None
        self.hop_cluster = ""  # Envoy's cluster of this worker's hop alone: the cache's answers come back here
        # Stored responses of the Responses API (extproc.responses_store), and the background writer
        # of their records; None: none kept, whatever the policy says (set by extproc.server.serve).
        self.responses: ResponseStore | None = None
        self.saver: Saver | None = None

    def keep_responses(self, store: ResponseStore | None) -> None:
        self.responses = store
        self.saver = Saver(store) if store is not None else None
