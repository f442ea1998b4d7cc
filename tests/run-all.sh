#!/usr/bin/env bash
# The whole test suite, as README.md gives it: lint, the three tiers, and csi-sanity.
# Run as root from the repository root: the privileged tier makes real bind mounts.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== fmt and clippy"
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings

echo "== unit, service (fake mounter) and privileged (real mounts) tests"
# Not --all-targets: that would also run the benchmark as a test.
cargo test --lib --bins --tests

echo "== csi-sanity against the real binary"
cargo build --release
tests/csi-sanity.sh

# The host kernel has no NFS client or server: the NFS backend is proven in a VM that has both.
echo "== NFS backend in a VM: kernel nfsd and NFS client (csi-sanity, seed story, faults)"
if [ "${PVDIR_SKIP_VM:-0}" = 1 ]; then
    echo "skipped (PVDIR_SKIP_VM=1)"
else
    tests/vm/suite.sh
fi
