# Multi-stage build: compile pvdir, then ship it with only what it execs at run time: mount.nfs
# (nfs-common); pvdir unmounts with its own helper. Both stages are Debian bookworm, so the binary runs on the
# glibc it was linked against. CI has no container engine: tests/k8s/image.sh rebuilds the runtime
# stage from the same Debian packages, and tests/image.rs checks that it follows this file and that
# this file matches the binary and the manifests.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin pvdir

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends nfs-common \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/pvdir /usr/local/bin/pvdir
# Root: the node plugin bind-mounts into kubelet's directories and the controller mounts NFS
# exports and creates directories owned by root on them (the DaemonSet is privileged; the
# controller gets SYS_ADMIN, DAC_OVERRIDE and FOWNER only).
USER root
ENTRYPOINT ["/usr/local/bin/pvdir"]
CMD ["serve"]
