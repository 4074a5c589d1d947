"""The xDS room: snapshots and their consistency check, the snapshot cache, the make-before-break
rollout that decides what each group is served, the Envoy snapshot builder, and the ADS server."""
