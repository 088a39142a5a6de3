# GPU serving image: ONNX Runtime (CUDA) behind gRPC, no torch. The models come from a mounted repository
# (DIR/<name>/<version>/ as written by `twin export`).
#
#   docker build -t twin-serve .
#   docker run --gpus all -p 8001:8001 -p 8002:8002 -v $PWD/models:/models:ro twin-serve
#
# onnxruntime-gpu 1.2x wheels are built for CUDA 12 and cuDNN 9, which this base image provides.
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/twin/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/twin \
    && useradd --create-home --uid 10001 twin

WORKDIR /opt/twin/src
COPY pyproject.toml README.md ./
COPY twin ./twin
COPY serving ./serving
COPY training ./training
# The `gpu` extra: onnxruntime-gpu, grpcio, health checking, reflection, protobuf, prometheus-client.
RUN pip install --upgrade pip && pip install ".[gpu]"

USER twin
EXPOSE 8001 8002
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["twin", "health", "localhost:8001"]
ENTRYPOINT ["twin", "serve", "--repository", "/models", "--host", "0.0.0.0", "--grpc-port", "8001", "--metrics-port", "8002"]
