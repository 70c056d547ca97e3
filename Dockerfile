# MoR serving image. Minimal for now; deployment hardening is a later issue.
# It has not been built in this project's workspace (no Docker engine there).
# It also needs server/mor_server, which lands with the gRPC server issue: until then
# the COPY of that binary below fails.
#
#   docker build -t mor-serving .
#   docker run --gpus all -p 50051:50051 -p 9400:9400 -v /path/to/model:/models/default:ro mor-serving
#
# torch 2.11.0's default PyPI wheel is the CUDA 13 build. Its CMake config needs nvcc, which
# the devel image has. The server links that wheel's LibTorch, so the runtime stage copies
# the builder's .venv to the same path (the binary's RPATH points into it).

ARG CUDA_TAG=13.0.1

# ---------------------------------------------------------------------------- builder
FROM nvidia/cuda:${CUDA_TAG}-cudnn-devel-ubuntu24.04 AS builder

ENV DEBIAN_FRONTEND=noninteractive
# The same packages as `./mor setup` (Ubuntu 24.04 uses the same names as Debian 12).
# policy-rc.d: never start services (the prometheus package would start one).
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build ccache pkg-config git python3 python3-venv \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev \
      libcivetweb-dev prometheus libgtest-dev libgmock-dev googletest libbenchmark-dev \
      libre2-dev nlohmann-json3-dev clang-format \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/mor
# Python packages first, in their own layer (torch is several GB).
COPY tools/requirements.txt tools/requirements.txt
RUN python3 -m venv .venv \
 && .venv/bin/pip install --no-cache-dir -r tools/requirements.txt

COPY . .
# setup finds everything installed (it only records the requirements stamp); build configures
# build/release and builds it.
RUN ./mor setup && ./mor build

# ---------------------------------------------------------------------------- runtime
FROM nvidia/cuda:${CUDA_TAG}-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive
# Shared libraries mor_server links (Ubuntu 24.04 names; their own dependencies, such as
# libgrpc29t64, come with them). If one is missing, the ldd check below fails the build;
# the fallback is to use the builder stage as the runtime image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libgrpc++1.51t64 libprotobuf32t64 libabsl20220623t64 libcivetweb1 libre2-10 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /home/mor mor

WORKDIR /opt/mor
# LibTorch and the CUDA libraries it loads live in the venv (torch/lib, nvidia/*).
COPY --from=builder /opt/mor/.venv /opt/mor/.venv
COPY --from=builder /opt/mor/build/release/server/mor_server /opt/mor/build/release/server/mor_server
RUN if ldd /opt/mor/build/release/server/mor_server | grep 'not found'; then exit 1; fi \
 && mkdir -p /models && chown mor:mor /models

USER mor
# 50051: gRPC API. 9400: Prometheus metrics.
EXPOSE 50051 9400
# Mount a model directory (docs/model-format.md) at /models/default. The image is meant for
# `docker run --gpus ...`; without a GPU, override with --device cpu.
CMD ["/opt/mor/build/release/server/mor_server", "--listen_address", "0.0.0.0:50051", \
     "--metrics_address", "0.0.0.0:9400", "--model_dir", "/models/default", "--device", "cuda"]
