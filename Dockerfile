# The CDS Hooks service (movement-cds serve) in a container: docs/operations.md.
#
#   docker build -t movement-cds .
#   docker run -p 8080:8080 -v /etc/movement-cds:/etc/movement-cds:ro \
#              -v movement-cds-data:/var/lib/movement-cds movement-cds
#
# The config is mounted at /etc/movement-cds/service.toml; keep SQLite files (feedback,
# used-token cache) under /var/lib/movement-cds. Behind a proxy or a package mirror, pass
# --build-arg PIP_INDEX_URL=... and/or --build-arg PIP_CERT=/path/in/base/image.
# BASE_IMAGE: any Debian-based image with python3 (3.11+) and its venv module.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG PIP_INDEX_URL
ARG PIP_CERT
# durable-rules is compiled from source: a C compiler, and Python's headers where the base
# image has none, in this stage only
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends gcc libc6-dev make; \
    python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || apt-get install -y --no-install-recommends python3-dev; \
    rm -rf /var/lib/apt/lists/*; \
    python3 -m venv /opt/movement-cds
COPY . /src
RUN /opt/movement-cds/bin/pip install --no-cache-dir --disable-pip-version-check \
        '/src[service]' \
    && /opt/movement-cds/bin/movement-cds kb validate --strict

FROM ${BASE_IMAGE}
RUN set -eux; \
    useradd --system --uid 10001 --user-group --home-dir /var/lib/movement-cds \
        --shell /usr/sbin/nologin movement-cds; \
    mkdir -p /var/lib/movement-cds /etc/movement-cds; \
    chown movement-cds:movement-cds /var/lib/movement-cds
COPY --from=build /opt/movement-cds /opt/movement-cds
ENV PATH=/opt/movement-cds/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/movement-cds
VOLUME ["/var/lib/movement-cds"]
EXPOSE 8080
# /healthz: the process answers HTTP (readiness, /readyz, is for the load balancer)
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["movement-cds", "serve"]
CMD ["--config", "/etc/movement-cds/service.toml", "--host", "0.0.0.0", "--port", "8080"]
