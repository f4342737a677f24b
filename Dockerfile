# syntax=docker/dockerfile:1
# The Neural platform's one image: every service, worker and the gateway. The command names the
# process (the same commands `make run` starts), e.g.
#   python -m services.tracker | services.compiler | services.trainer | services.deployer
#   python -m gateway.authz | gateway.ratelimit
#   python -m services.deployer.controller
#   python -m dramatiq services.compiler.worker --processes 1 --threads 2
#   python -m dramatiq services.trainer.worker --processes 1 --threads 1
#   envoy -c /etc/envoy/envoy.yaml   (rendered by `python -m gateway.render --target ...`)
# Build: docker build -t neural/platform:0.1.0 .
# It runs as uid 10001 on a read-only root filesystem: writable are /data (NEURAL_DATA_DIR, a
# volume) and /tmp (an emptyDir or tmpfs).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:20.19-bookworm-slim

# ---------------------------------------------------------------- web: the console's build
# Only its output (static files) reaches the image: Envoy serves web/dist at / (gateway/console.py).
FROM ${NODE_IMAGE} AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY web/ ./
RUN npm run build

# ---------------------------------------------------------------- build: venv, stubs, docs
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
WORKDIR /app
RUN python -m venv /opt/venv
COPY requirements.txt pyproject.toml Makefile ./
COPY libs/ libs/
# torch's CPU wheel (requirements.txt pins the version; PyPI's default build is the CUDA one)
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        -r requirements.txt
COPY protos/ protos/
COPY scripts/ scripts/
COPY gateway/ gateway/
# The generated stubs, the OIP stubs, the DSL parser's cache (installed with the library as
# package data), the OpenAPI document and Swagger UI's files, by the Makefile's own rules
# (STAMP emptied: the venv is this image's, not .venv).
RUN apt-get update \
    && apt-get install -y --no-install-recommends make=4.3-4.1 \
    && make STAMP= PY=/opt/venv/bin/python VENV=/opt/venv \
        libs/neural_api/.generated libs/neural_api/.generated-oip \
        libs/neural_dsl/.generated-parser gateway/openapi.json gateway/docs/index.html \
    && pip install --no-cache-dir --no-deps ./libs/neural_dsl ./libs/neural_api ./libs/service_kit \
    && rm -rf /var/lib/apt/lists/* /opt/venv/cache
COPY services/ services/
# Bytecode now: the root filesystem is read-only at run time.
RUN python -m compileall -q /app /opt/venv

# ---------------------------------------------------------------- runtime: no compilers, no caches
FROM ${PYTHON_IMAGE} AS runtime
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    NEURAL_HOST=0.0.0.0 \
    NEURAL_DATA_DIR=/data \
    NEURAL_ENVOY_DYNAMIC_DIR=/var/run/neural/envoy-dynamic
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin neural \
    && mkdir -p /data /var/run/neural/envoy-dynamic \
    && chown neural:neural /data /var/run/neural/envoy-dynamic
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY --from=web /web/dist /app/web/dist
WORKDIR /app
VOLUME ["/data"]
USER 10001
EXPOSE 8080 50051 50052 50053 50054 50055 50056
CMD ["python", "-m", "services.tracker"]
