# syntax=docker/dockerfile:1.7
# Image of env-svc, the environment service. Build context: the repository root.
#   docker build -f deploy/docker/env-svc.Dockerfile -t streamrec/env-svc:local .
# No libtorch here: only agent-svc links tch.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# Wins over any target-dir of .cargo/config.toml, so the path below holds.
ENV CARGO_TARGET_DIR=/src/target
# rdkafka builds its bundled librdkafka with gcc, make, pkg-config and zlib1g-dev: all in the rust image.
COPY . .
# Cache mounts keep the crate registry and target/ between builds; the binary is copied out in the same step.
RUN --mount=type=cache,id=streamrec-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=streamrec-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=streamrec-target-env-svc,target=/src/target,sharing=locked \
    cargo build --release --locked -p env-svc \
 && install -D -m 0755 target/release/env-svc /out/env-svc

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 streamrec \
 && useradd --system --uid 10001 --gid streamrec --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin streamrec
COPY --from=builder /out/env-svc /usr/local/bin/env-svc
# The repo's generated sample (under 1 MB), the default dataset of a container run.
COPY data/sample /data/sample
ENV DATASET=/data/sample
# Fail the build, not the first start, if a shared library is missing.
RUN if ldd /usr/local/bin/env-svc | grep 'not found'; then exit 1; fi
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/env-svc"]
CMD ["run"]
