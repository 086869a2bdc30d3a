# hyperbench/harness: the `hyperbench` CLI (bench, compare, tune, score, report), with the hf
# engine inside it (so `bench --engine hf` runs in-process, and built-in models can be staged into
# the shared cache volume) and the Docker SDK (the docker launcher starts the other engines'
# containers when compose/docker-compose.launcher.yml mounts the Docker socket).
#
# Build from the repository root (compose/docker-compose.yml does):
#   docker build -f containers/harness.Dockerfile -t hyperbench/harness .
# Build arguments as hf.Dockerfile, plus HARNESS_EXTRAS (default tune,eval,docker).
# Everything down to the source layer is written exactly as in hf.Dockerfile (shared layers).
ARG BASE_IMAGE=debian:bookworm-slim

FROM scratch AS context
COPY containers/context.md containers/contex[t]/wheels/torch-*.whl /ctx/wheels/

FROM ${BASE_IMAGE}
COPY containers/setup-runtime.sh /opt/hyperbench/
RUN sh /opt/hyperbench/setup-runtime.sh
ENV PATH=/opt/venv/bin:$PATH VIRTUAL_ENV=/opt/venv PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 HYPERBENCH_CACHE=/cache HF_HOME=/cache/hf \
    MPLCONFIGDIR=/tmp/matplotlib TOKENIZERS_PARALLELISM=false
COPY containers/pip.sh containers/requirements.py containers/constraints.txt /opt/hyperbench/

ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN --mount=type=bind,from=context,source=/ctx,target=/ctx \
    --mount=type=secret,id=extra_ca \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    if [ "$VARIANT" = cpu ]; then \
        set -- --find-links /ctx/wheels ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}; \
    else set --; fi; \
    sh /opt/hyperbench/pip.sh install "$@" "torch==$TORCH_VERSION"

ARG EXTRAS=hf,bnb
COPY pyproject.toml /opt/hyperbench/pyproject.toml
RUN --mount=type=secret,id=extra_ca \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python /opt/hyperbench/requirements.py /opt/hyperbench/pyproject.toml "$EXTRAS" --skip torch > /tmp/req.txt \
    && sh /opt/hyperbench/pip.sh install -r /tmp/req.txt setuptools \
    && rm /tmp/req.txt

# the harness's own: tuning (Ax), scoring (lm-eval), the Docker SDK of the docker launcher
ARG HARNESS_EXTRAS=tune,eval,docker
RUN --mount=type=secret,id=extra_ca \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python /opt/hyperbench/requirements.py /opt/hyperbench/pyproject.toml "$HARNESS_EXTRAS" --skip torch > /tmp/req.txt \
    && sh /opt/hyperbench/pip.sh install -r /tmp/req.txt \
    && rm /tmp/req.txt

COPY containers/healthcheck.py containers/serve.sh containers/entry.sh /opt/hyperbench/
COPY pyproject.toml /tmp/src/
COPY harness /tmp/src/harness
COPY backends /tmp/src/backends
RUN pip install --no-deps --no-build-isolation --no-cache-dir --no-compile -q /tmp/src && rm -rf /tmp/src

USER hyperbench
WORKDIR /workspace
# a one-shot CLI, not a server: there is nothing to probe (engine images have health checks)
HEALTHCHECK NONE
LABEL org.opencontainers.image.title="hyperbench/harness" \
      org.opencontainers.image.description="hyperbench CLI: bench, compare, tune, score" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/opt/hyperbench/entry.sh", "hyperbench"]
CMD ["--help"]
