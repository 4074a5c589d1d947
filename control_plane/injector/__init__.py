"""The sidecar injector: a mutating admission webhook that adds Envoy, the ext_proc workers and
Envoy's bootstrap to pods labelled ``ccr-gateway.io/inject: "true"`` (docs/sidecar-injection.md).

config.py (settings), sidecar.py (the containers), patch.py (AdmissionReview -> JSONPatch) are
pure; server.py is the HTTPS adapter, cli.py the `ccr-gateway injector` command.
"""
