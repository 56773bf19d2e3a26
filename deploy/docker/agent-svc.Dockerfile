# syntax=docker/dockerfile:1.7
# Image of agent-svc, the RL agent: the only image that carries libtorch. Build context: the repository root.
#   docker build -f deploy/docker/agent-svc.Dockerfile -t streamrec/agent-svc:local .
#
# libtorch comes from the PyPI torch wheel, the only source of libtorch 2.13.0 (what tch 0.26.0 needs); see
# docs/DESIGN.md ("Building"). That wheel is the CUDA 13.0 build, and even libtorch_cpu.so needs libcudart.so.13
# and libcupti.so.13, which it finds through its $ORIGIN rpath (../../nvidia/cu13/lib). The minimal install below
# (--no-deps, runtime + CUPTI only) is enough for CPU; the image runs on CPU only.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
ARG TORCH_VERSION=2.13.0
ARG CUDA_RUNTIME_VERSION=13.0.96
ARG CUDA_CUPTI_VERSION=13.0.85
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv python3-pip \
 && rm -rf /var/lib/apt/lists/*
# Before COPY, so a source change does not download torch again. Nothing checks the libtorch version on the
# LIBTORCH path: keep torch pinned exactly.
RUN --mount=type=cache,id=streamrec-pip,target=/root/.cache/pip,sharing=locked \
    python3 -m venv /opt/torch-venv \
 && /opt/torch-venv/bin/pip install --no-deps "torch==${TORCH_VERSION}" \
      "nvidia-cuda-runtime==${CUDA_RUNTIME_VERSION}" "nvidia-cuda-cupti==${CUDA_CUPTI_VERSION}"
# Bookworm's python3 is 3.11. Set in the environment, LIBTORCH wins over a non-forced [env] of .cargo/config.toml.
ENV LIBTORCH=/opt/torch-venv/lib/python3.11/site-packages/torch
ENV LD_LIBRARY_PATH=/opt/torch-venv/lib/python3.11/site-packages/torch/lib:/opt/torch-venv/lib/python3.11/site-packages/nvidia/cu13/lib
RUN test -f "$LIBTORCH/lib/libtorch_cpu.so" && test -f "$LIBTORCH/../nvidia/cu13/lib/libcudart.so.13"

WORKDIR /src
# Wins over any target-dir of .cargo/config.toml, so the path below holds.
ENV CARGO_TARGET_DIR=/src/target
COPY . .
# Cache mounts keep the crate registry and target/ between builds; the binary is copied out in the same step.
RUN --mount=type=cache,id=streamrec-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=streamrec-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=streamrec-target-agent-svc,target=/src/target,sharing=locked \
    cargo build --release --locked -p agent-svc \
 && install -D -m 0755 target/release/agent-svc /out/agent-svc

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 streamrec \
 && useradd --system --uid 10001 --gid streamrec --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin streamrec \
 && install -d -o 10001 -g 10001 /checkpoints
# The same paths as in the builder: any absolute rpath baked in at build time stays valid, and the wheel's
# $ORIGIN rpath from torch/lib to nvidia/cu13/lib still resolves. Only the shared libraries, no headers.
COPY --from=builder /opt/torch-venv/lib/python3.11/site-packages/torch/lib /opt/torch-venv/lib/python3.11/site-packages/torch/lib
COPY --from=builder /opt/torch-venv/lib/python3.11/site-packages/nvidia/cu13/lib /opt/torch-venv/lib/python3.11/site-packages/nvidia/cu13/lib
ENV LD_LIBRARY_PATH=/opt/torch-venv/lib/python3.11/site-packages/torch/lib:/opt/torch-venv/lib/python3.11/site-packages/nvidia/cu13/lib
COPY --from=builder /out/agent-svc /usr/local/bin/agent-svc
# Fail the build, not the first start, if a shared library is missing.
RUN if ldd /usr/local/bin/agent-svc | grep 'not found'; then exit 1; fi
USER 10001:10001
# Owned by the service user, so a fresh named volume mounted here (compose: agent-checkpoints) is writable;
# one subfolder per container ({host}: its id), so replicas sharing the volume keep apart.
ENV CHECKPOINT_DIR=/checkpoints/{host}
ENTRYPOINT ["/usr/local/bin/agent-svc"]
CMD ["run"]
