# hyperbench/llamacpp: llama.cpp through llama-cpp-python (GGUF quants) serving the wire contract
# on 0.0.0.0:8000. No torch here: it serves .gguf files (a built-in model's GGUF, or any GGUF);
# converting an HF folder to GGUF needs torch, so do that where the harness runs (the harness
# image, or `pip install 'hyperbench[hf,llamacpp]'`), into the shared cache.
#
# llama-cpp-python is source-only on the registry. CPU: the wheel cached by
# scripts/build_llamacpp_wheel.sh is taken from containers/context/wheels when it is there
# (scripts/containers_setup.sh puts it there), else compiled here (~5 min on 2 cores).
#   CPU : docker build -f containers/llamacpp.Dockerfile -t hyperbench/llamacpp .
#   CUDA: docker build -f containers/llamacpp.Dockerfile --build-arg VARIANT=cuda \
#           --build-arg BUILD_BASE_IMAGE=nvidia/cuda:12.8.1-devel-ubuntu24.04 \
#           --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 \
#           --build-arg "LLAMACPP_CMAKE_ARGS=-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=80;90" -t hyperbench/llamacpp:cuda .
ARG BASE_IMAGE=debian:bookworm-slim
ARG BUILD_BASE_IMAGE=debian:bookworm-slim

FROM scratch AS context
COPY containers/context.md containers/contex[t]/wheels/llama_cpp_python-*.whl /ctx/wheels/

# the llama-cpp-python wheel: prebuilt from the context (CPU), or compiled
FROM ${BUILD_BASE_IMAGE} AS llama-wheel
ARG VARIANT=cpu
ARG LLAMACPP_VERSION=0.3.36
ARG LLAMACPP_CMAKE_ARGS="-DGGML_NATIVE=off -DLLAVA_BUILD=off"
COPY containers/pip.sh containers/constraints.txt /opt/hyperbench/
RUN --mount=type=bind,from=context,source=/ctx,target=/ctx \
    --mount=type=secret,id=extra_ca \
    mkdir -p /wheels; \
    if [ "$VARIANT" = cpu ] && cp /ctx/wheels/llama_cpp_python-"$LLAMACPP_VERSION"-*.whl /wheels/ 2>/dev/null; then \
        echo "llama-cpp-python: prebuilt wheel from containers/context/wheels"; \
    else \
        export DEBIAN_FRONTEND=noninteractive; \
        apt-get update -qq && apt-get install -y -qq --no-install-recommends build-essential cmake git \
            python3 python3-venv python3-dev ca-certificates >/dev/null \
        && python3 -m venv /b \
        && CMAKE_ARGS="$LLAMACPP_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" PYTHON=/b/bin/python \
           sh /opt/hyperbench/pip.sh wheel --no-deps "llama-cpp-python==$LLAMACPP_VERSION" -w /wheels; \
    fi

FROM ${BASE_IMAGE}
COPY containers/setup-runtime.sh /opt/hyperbench/
RUN sh /opt/hyperbench/setup-runtime.sh
ENV PATH=/opt/venv/bin:$PATH VIRTUAL_ENV=/opt/venv PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 HYPERBENCH_CACHE=/cache HF_HOME=/cache/hf \
    MPLCONFIGDIR=/tmp/matplotlib TOKENIZERS_PARALLELISM=false
COPY containers/pip.sh containers/requirements.py containers/constraints.txt /opt/hyperbench/

ARG EXTRAS=llamacpp
COPY pyproject.toml /opt/hyperbench/pyproject.toml
RUN --mount=type=bind,from=llama-wheel,source=/wheels,target=/wheels \
    --mount=type=secret,id=extra_ca \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python /opt/hyperbench/requirements.py /opt/hyperbench/pyproject.toml "$EXTRAS" > /tmp/req.txt \
    && sh /opt/hyperbench/pip.sh install --find-links /wheels -r /tmp/req.txt setuptools \
    && rm /tmp/req.txt

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
LABEL org.opencontainers.image.title="hyperbench/llamacpp" \
      org.opencontainers.image.description="llama.cpp engine of hyperbench (wire contract on :8000)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/opt/hyperbench/entry.sh", "/opt/hyperbench/serve.sh", "llamacpp"]
CMD ["--model", "smollm2-135m"]
