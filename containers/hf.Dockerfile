# hyperbench/hf: the transformers engine (bitsandbytes INT8/NF4, SDPA; FlashAttention-2 where the
# base has CUDA and it is installed) serving the wire contract on 0.0.0.0:8000.
#
# Build from the repository root (compose/docker-compose.yml does):
#   CPU : docker build -f containers/hf.Dockerfile -t hyperbench/hf .
#   CUDA: docker build -f containers/hf.Dockerfile --build-arg VARIANT=cuda \
#           --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 -t hyperbench/hf:cuda .
# Optional extra CA for pip (corporate proxy): --secret id=extra_ca,src=/path/ca.pem
# Build arguments: BASE_IMAGE, VARIANT (cpu|cuda), TORCH_VERSION, TORCH_INDEX_URL (CPU wheels;
# empty: only the registry and containers/context/wheels), EXTRAS (pip extras of hyperbench),
# FLASH_ATTN_VERSION / FLASH_ATTN_WHEEL (CUDA: FlashAttention-2 from a prebuilt wheel, see below).
# The first stages are written exactly as in harness.Dockerfile, so both images share those layers.
ARG BASE_IMAGE=debian:bookworm-slim

# Wheels from the git-ignored build context (the CPU torch wheel, a prebuilt llama-cpp-python):
# optional; the [t] wildcard turns a missing containers/context into nothing instead of an error,
# and each image copies only the wheels it uses (a new llama wheel does not rebuild torch layers).
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

# dependencies before the source: a code change rebuilds only the small layer below
ARG EXTRAS=hf,bnb
COPY pyproject.toml /opt/hyperbench/pyproject.toml
RUN --mount=type=secret,id=extra_ca \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python /opt/hyperbench/requirements.py /opt/hyperbench/pyproject.toml "$EXTRAS" --skip torch > /tmp/req.txt \
    && sh /opt/hyperbench/pip.sh install -r /tmp/req.txt setuptools \
    && rm /tmp/req.txt

# CUDA: FlashAttention-2 from its authors' prebuilt wheel matching this torch/CUDA/Python, when
# there is one (flash_attn.py; never a multi-hour compile): otherwise SDPA. FLASH_ATTN_WHEEL: a
# wheel URL/file to use instead, or "none".
ARG FLASH_ATTN_VERSION=2.8.3
ARG FLASH_ATTN_WHEEL=""
COPY containers/flash_attn.py /opt/hyperbench/
RUN --mount=type=secret,id=extra_ca \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    if [ "$VARIANT" = cuda ]; then \
        FLASH_ATTN_VERSION="$FLASH_ATTN_VERSION" FLASH_ATTN_WHEEL="$FLASH_ATTN_WHEEL" python /opt/hyperbench/flash_attn.py; \
    fi

COPY containers/healthcheck.py containers/serve.sh containers/entry.sh /opt/hyperbench/
COPY pyproject.toml /tmp/src/
COPY harness /tmp/src/harness
COPY backends /tmp/src/backends
RUN pip install --no-deps --no-build-isolation --no-cache-dir --no-compile -q /tmp/src && rm -rf /tmp/src

USER hyperbench
WORKDIR /workspace
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "/opt/hyperbench/healthcheck.py"]
LABEL org.opencontainers.image.title="hyperbench/hf" \
      org.opencontainers.image.description="transformers engine of hyperbench (wire contract on :8000)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/opt/hyperbench/entry.sh", "/opt/hyperbench/serve.sh", "hf"]
CMD ["--model", "smollm2-135m"]
