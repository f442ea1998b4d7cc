# Multi-stage build: compile pvdir, then ship it with only what it execs at run time
# (mount/umount from util-linux, mount.nfs from nfs-common). It runs as root because mounting
# needs CAP_SYS_ADMIN in the host's mount namespace (the node DaemonSet is privileged).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin pvdir

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends util-linux mount nfs-common ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/pvdir /usr/local/bin/pvdir
ENTRYPOINT ["/usr/local/bin/pvdir"]
CMD ["serve"]
