"""The composition root: the `ccr-gateway` command, the `up` supervisor and the operator tools
(route --explain, import-ccr, policy in Consul). It wires the services together; extproc and
control_plane never import it, nor each other."""
