# syntax=docker/dockerfile:1
# One image for the workers, Flower, the migrations and the producer.
#   CPU (default): docker build -t catalog-tagger:cpu .
#   CUDA:          docker build -t catalog-tagger:cuda \
#                    --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04 \
#                    --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# torch's CUDA wheels carry their own CUDA libraries: the CUDA base only has to be new enough for
# the host's driver to run them, and pick the cuXXX index that the driver supports.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The CUDA image adds torchvision for nvJPEG decoding, pinned to torch (2.13 -> 0.28.0).
ARG TORCH_EXTRAS=""

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    HF_HUB_DISABLE_PROGRESS_BARS=1 \
    TAGGER_HOME=/tmp/tagger \
    TAGGER_CACHE_DIR=/cache/tagger

# The CUDA base images have no Python; python:*-slim has one. A venv works on both.
RUN if ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv \
    && pip install --upgrade pip

# torch first, from the index of the chosen flavour, so that nothing else pulls another build.
RUN pip install "torch==${TORCH_VERSION}" ${TORCH_EXTRAS} --index-url "${TORCH_INDEX_URL}"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY producer ./producer
COPY migrations ./migrations
# The label sets and the migrations ship inside the package (`producer db upgrade`).
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app tagger \
    && mkdir -p /cache/huggingface /cache/tagger /data "$TAGGER_HOME" \
    && chown -R tagger /cache /data "$TAGGER_HOME"

# Celery warns when a worker runs as root, and nothing here needs root.
USER tagger
CMD ["celery", "--quiet", "-A", "worker", "worker", "-P", "prefork", "-c", "1", "--loglevel", "INFO"]
