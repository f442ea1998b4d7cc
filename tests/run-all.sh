#!/usr/bin/env bash
# The whole test suite, as README.md gives it: lint, the three tiers, and csi-sanity.
# Run as root after tests/setup.sh (README: `tests/setup.sh && tests/run-all.sh`): the
# privileged tier makes real bind mounts.
set -euo pipefail
cd "$(dirname "$0")/.."
# csi-sanity and helm, where tests/setup.sh has `go install` put them.
if command -v go >/dev/null; then
    PATH="${GOBIN:-$(go env GOPATH)/bin}:$PATH"
    export PATH
fi

echo "== fmt, clippy and doc links"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --all-targets -- -D warnings
# A doc link that no longer resolves is a comment that no longer says where to look.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --document-private-items --quiet

# Kubernetes and csi-provisioner from the Go module proxy, cached outside the clone (seconds
# when warm): the cluster tier runs them, and tests/manifests.rs renders the kustomize variants
# with this kubectl.
if [ "${PVDIR_SKIP_K8S:-0}" != 1 ]; then
    echo "== Kubernetes binaries for the cluster tier (tests/k8s/build.sh)"
    PVDIR_KUBECTL="$(tests/k8s/build.sh | tail -n 1)/kubectl"
    export PVDIR_KUBECTL
fi

echo "== unit, service (fake mounter) and privileged (real mounts) tests"
# Not --all-targets: that would also run the benchmark as a test.
cargo test --lib --bins --tests

echo "== csi-sanity against the real binary"
cargo build --release
tests/csi-sanity.sh

# Coverage-guided fuzzing of what pvdir reads off the wire, a bounded time per target (README:
# Tests); the kept corpus in fuzz/corpus is replayed first, so an old crash stays fixed.
echo "== fuzzing the wire parsers (tests/fuzz.sh)"
tests/fuzz.sh

# The host kernel has no NFS client or server and no quotas: the NFS backend and local
# volumes' quotas are proven in a VM that has them.
echo "== in a VM: NFS (kernel nfsd and client: csi-sanity, seed story, faults) and local quotas (XFS, ext4)"
if [ "${PVDIR_SKIP_VM:-0}" = 1 ]; then
    echo "skipped (PVDIR_SKIP_VM=1)"
else
    tests/vm/suite.sh
fi

# The install path on a real cluster: kubelet, containerd and the control plane on this machine,
# the image built offline, `kubectl apply -k deploy/`, the seed's story (tests/k8s/run.sh).
echo "== cluster tier: a real Kubernetes on this machine"
if [ "${PVDIR_SKIP_K8S:-0}" = 1 ]; then
    echo "skipped (PVDIR_SKIP_K8S=1)"
else
    tests/k8s/run.sh
fi
