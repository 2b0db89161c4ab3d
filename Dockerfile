# The connbridge gateway as a small, non-root container image.
#
#   docker build -t connbridge .
#   docker run -p 8000:8000 connbridge --demo       # the demo backend, nothing mounted
#   docker run -p 8000:8000 -v ./connbridge.toml:/etc/connbridge/connbridge.toml:ro \
#       -e ADDER_AUTHKEY=... -e CONNBRIDGE_AUTH__KEYS='[{"name": "app", "sha256": "..."}]' \
#       connbridge
#
# (podman build / podman run take the same arguments.)
# (ADDER_AUTHKEY as named by authkey_env in the file; API keys as SHA-256
# hashes, required to listen on 0.0.0.0.  See deploy/README.md.)
#
# BASE_IMAGE may be any Debian-like image with python3 (>= 3.11) and its venv
# module; both stages must use the same one, because the virtual environment
# built in the first stage refers to the interpreter by its absolute path.
# `make container-test` builds from a local Debian base made with mmdebstrap.
ARG BASE_IMAGE=python:3.11-slim

# -- build: a wheel of the project and a virtual environment with it ----------
FROM ${BASE_IMAGE} AS build

# pip reads PIP_CERT from the environment: a CA bundle for builds behind a
# TLS-intercepting proxy (mount it with `--volume`).  Left unset it changes nothing.
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the wheel is made of; see .dockerignore.
COPY pyproject.toml README.md ./
COPY connbridge ./connbridge
COPY gateway ./gateway

# The wheel is built first and installed from the file, so the runtime
# environment holds no source tree, no build backend and no editable link.
# pip and setuptools are removed from it afterwards: nothing installs at run time.
# The otel extra is in: tracing stays off (and costs nothing) until OTEL_* asks.
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && python3 -m venv /opt/connbridge \
    && wheel=$(echo /wheels/connbridge-*.whl) \
    && /opt/connbridge/bin/pip install "${wheel}[otel]" \
    && /opt/connbridge/bin/pip uninstall --yes pip setuptools

# -- runtime ------------------------------------------------------------------
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="connbridge" \
      org.opencontainers.image.description="HTTP and WebSocket gateway to Python multiprocessing.connection servers" \
      org.opencontainers.image.licenses="MIT"

# A fixed numeric id, so that Kubernetes' runAsNonRoot can verify it and a
# mounted secret can be made readable to it.
RUN groupadd --system --gid 10001 connbridge \
    && useradd --no-log-init --uid 10001 --gid connbridge --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin connbridge \
    && mkdir -p /etc/connbridge

COPY --from=build /opt/connbridge /opt/connbridge

ENV PATH=/opt/connbridge/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001:10001
EXPOSE 8000

# /healthz answers while the process serves; urllib raises (exit 1) on a
# refused connection, a timeout or any status >= 400.  No curl in the image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# --default-config: the file is read when it is mounted (or CONNBRIDGE_CONFIG
# names another); without one, `<image> --demo` serves the demo backend, and
# anything else is told what to mount or which variables to set.
ENTRYPOINT ["connbridge-gateway", "--default-config", "/etc/connbridge/connbridge.toml", "--host", "0.0.0.0", "--port", "8000"]
