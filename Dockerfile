# syntax=docker/dockerfile:1
# MoR serving image: mor_server (gRPC 50051, Prometheus metrics 9400) with a model baked in
# at /opt/mor/models/default. Needs BuildKit (the default builder since Docker 23).
#
#   docker build -t mor-serving .                      # bakes models/default (must exist)
#   docker build -t mor-serving --build-arg MOR_MODEL=random .   # random stand-in (smoke tests)
#   docker run --rm --gpus all -p 50051:50051 -p 9400:9400 mor-serving
#   docker run --rm -p 50051:50051 mor-serving --device=cpu       # no GPU
#
# docs/deploy.md explains the image, the compose stack (deploy/compose) and Kubernetes
# (deploy/k8s). Lint: `hadolint Dockerfile` (the `deploy` tests run it).
#
# setup:   an NVIDIA CUDA 13.0 devel image (Ubuntu 24.04). PyPI's torch 2.11.0 wheel is the
#          CUDA 13.0 build, and its CMake config needs nvcc at configure time. It runs the
#          project's own `./mor setup`: the Debian/Ubuntu packages and the .venv with torch,
#          the same recipe as on a workstation.
# model:   the model to bake in (MOR_MODEL, below).
# builder: `./mor build` of the two binaries, and the runtime tree.
# runtime: the CUDA 13.0 base image (cudart and the NVIDIA container runtime settings),
#          the Ubuntu packages of the shared libraries the binaries load (found by ldd in
#          the builder), LibTorch and the CUDA libraries from the torch wheel, the binaries
#          and the model. No compiler, no Python, non-root.

ARG CUDA_VERSION=13.0.1
ARG UBUNTU=ubuntu24.04

# ---------------------------------------------------------------------------- setup
FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS setup
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /opt/mor

# `./mor setup`: apt-get installs the package list at the top of `mor` (never starting a
# service), creates .venv and pip-installs tools/requirements.txt (torch is several GB).
# Only these two files are copied first, so this layer survives source changes.
COPY mor ./
COPY tools/requirements.txt tools/
RUN --mount=type=cache,target=/root/.cache/pip ./mor setup

# ---------------------------------------------------------------------------- model
# MOR_MODEL is a model folder in the build context (config.json + safetensors,
# docs/model-format.md; default models/default), or `random`: the randomly initialised
# 135M-class stand-in that `./mor serve` uses, made with the same arguments
# (RANDOM_MODEL_ARGS in `mor`). Its output is gibberish: it is for smoke tests of the
# deployment only. A missing model fails the build (BuildKit runs this stage next to the
# C++ build and stops both) rather than producing an image that cannot serve.
# Its own stage, so that changing MOR_MODEL does not rebuild the binaries.
FROM setup AS model
ARG MOR_MODEL=models/default
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY . .
RUN if [[ $MOR_MODEL == random ]]; then \
      eval "$(sed -n '/^RANDOM_MODEL_ARGS=(/,/^)/p' mor)"; \
      if (( ${#RANDOM_MODEL_ARGS[@]} == 0 )); then echo "error: no RANDOM_MODEL_ARGS in ./mor" >&2; exit 1; fi; \
      .venv/bin/python tools/reference/make_random_model.py "${RANDOM_MODEL_ARGS[@]}" /staging/opt/mor/models/default; \
    elif [[ -f $MOR_MODEL/config.json ]]; then \
      mkdir -p /staging/opt/mor/models && cp -a "$MOR_MODEL" /staging/opt/mor/models/default; \
    else \
      echo "error: no model at '$MOR_MODEL' in the build context ($MOR_MODEL/config.json is missing)." >&2; \
      echo "  Put the model in models/default, pass --build-arg MOR_MODEL=<folder in the context>," >&2; \
      echo "  or --build-arg MOR_MODEL=random for a random stand-in (smoke tests only)." >&2; \
      exit 1; \
    fi \
 && echo "$MOR_MODEL" > /staging/opt/mor/models/default/.mor-model-source

# ---------------------------------------------------------------------------- builder
FROM setup AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY . .
# Only the server and the client (the client is the image's health check).
RUN --mount=type=cache,target=/root/.cache/ccache ./mor build mor_server mor_client

# The runtime tree. mor_server's RUNPATH points at the venv's torch/lib, and torch's
# libraries find the CUDA ones at ../../nvidia/*/lib, so both keep their paths. Only the
# shared libraries are kept (no headers, static archives or Python bindings).
# /runtime-packages.txt: the Ubuntu packages that own the system libraries ldd resolves.
# (tar drops the leading / of the names, so they extract at the same path under /staging.)
RUN sp="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && mkdir -p /staging/opt/mor/bin \
 && cp build/release/server/mor_server build/release/server/mor_client /staging/opt/mor/bin/ \
 && tar --exclude='*.a' --exclude=libtorch_python.so -cf - "$sp/torch/lib" "$sp"/nvidia/*/lib \
    | tar -C /staging -xf - \
 && ldd /staging/opt/mor/bin/mor_server /staging/opt/mor/bin/mor_client \
    | awk '$2 == "=>" && $3 ~ /^\/(usr\/)?lib\// {print $3}' | sort -u \
    | while read -r lib; do \
        real="$(readlink -f "$lib")"; \
        dpkg -S "$real" 2>/dev/null || dpkg -S "${real#/usr}"; \
      done \
    | cut -d: -f1 | sort -u > /runtime-packages.txt \
 && grep -q grpc /runtime-packages.txt \
 && cat /runtime-packages.txt

# ---------------------------------------------------------------------------- runtime
FROM nvidia/cuda:${CUDA_VERSION}-base-${UBUNTU} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The system libraries (gRPC, protobuf, Abseil, civetweb, re2, ...) at the versions the
# builder linked against: same Ubuntu release, package list computed there. Not pinned to
# versions: the base image tag fixes the release and apt then brings its security updates.
COPY --from=builder /runtime-packages.txt /tmp/runtime-packages.txt
# hadolint ignore=DL3008
RUN apt-get update \
 && xargs -a /tmp/runtime-packages.txt apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
 && groupadd --system --gid 10001 mor \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/mor --create-home \
      --shell /usr/sbin/nologin mor

COPY --from=builder /staging/ /
COPY --from=model /staging/ /
# Fail the build, not the first start, if a shared library did not make it: ldd, then both
# binaries load and run (--version exits 0).
RUN ldd /opt/mor/bin/mor_server /opt/mor/bin/mor_client > /tmp/ldd.txt \
 && if grep 'not found' /tmp/ldd.txt; then exit 1; fi \
 && rm /tmp/ldd.txt \
 && /opt/mor/bin/mor_server --version > /dev/null \
 && /opt/mor/bin/mor_client --version > /dev/null \
 && test -f /opt/mor/models/default/config.json

WORKDIR /opt/mor
USER 10001:10001
# Caches (CUDA JIT, LibTorch kernels) go to /tmp, so that the root filesystem can be
# read-only: compose and Kubernetes mount a writable /tmp.
ENV CUDA_CACHE_PATH=/tmp/cuda-cache \
    XDG_CACHE_HOME=/tmp/cache

ARG MOR_MODEL=models/default
LABEL org.opencontainers.image.title="mor-serving" \
      org.opencontainers.image.description="MoR (Mixture-of-Recursions) LLM gRPC server, CUDA 13" \
      org.opencontainers.image.documentation="docs/deploy.md" \
      io.mor.model.source="${MOR_MODEL}"

# 50051: gRPC (mor.v1.MorService, grpc.health.v1.Health, reflection).
# 9400: Prometheus metrics, GET /metrics.
EXPOSE 50051 9400

# grpc.health.v1 Check of the whole server: SERVING once the model is loaded, NOT_SERVING
# while it loads and while it drains after SIGTERM. mor_client --health prints the status.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10m --retries=3 \
  CMD ["/bin/sh", "-c", "/opt/mor/bin/mor_client --health --timeout=4s | grep -qx SERVING"]

# SIGTERM: health NOT_SERVING, in-flight calls get --shutdown_grace, then exit 0. Give the
# container longer than that to stop (docker stop -t, compose stop_grace_period,
# Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/mor/bin/mor_server", "--listen_address=0.0.0.0:50051", \
            "--metrics_address=0.0.0.0:9400", "--model_dir=/opt/mor/models/default"]
# Arguments after the image name replace these (e.g. `--device=cpu`); flags given later
# override the ones above, `--flagfile=<file>` reads one flag per line.
CMD ["--device=cuda", "--dtype=bfloat16", "--shutdown_grace=30s"]
