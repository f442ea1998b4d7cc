#!/usr/bin/env bash
# Installs what the tests need on a Debian 12 machine with Rust and Go, as root. Idempotent:
# whatever is already there is skipped, so a second run takes seconds. README's test command
# is `tests/setup.sh && tests/run-all.sh`, and .ci/run runs exactly that.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "tests/setup.sh installs packages: run it as root"; exit 1; }

# util-linux: mount/umount used by the driver's helpers; ca-certificates for the registries.
# strace: crash tests hold a syscall of the driver with its fault injection and kill it there.
# python3-venv: a virtualenv for grpcio (below).
# The VM suite: qemu, Debian's kernel (it has nfs, nfsd, 9p and overlay modules), busybox for
# the initramfs, and nfs-utils, which the guest runs from this machine's root; xfsprogs makes
# the guest's XFS filesystems for the quota tests (e2fsprogs, for ext4, is always there).
# The cluster tier (tests/k8s): etcd, containerd with runc and the CNI plugins, umoci and
# mmdebstrap to build images offline, gcc for the static pause program, iptables and socat for
# the loopback-only networking, openssl for the cluster's PKI, jq for the image recipe's reading
# of the Dockerfile. g++: libFuzzer, which the fuzz targets link (tests/fuzz.sh).
PACKAGES=(
    util-linux mount ca-certificates strace python3 python3-venv
    qemu-system-x86 linux-image-amd64 busybox-static nfs-kernel-server nfs-common xfsprogs e2fsprogs
    containerd runc etcd-server containernetworking-plugins umoci mmdebstrap gcc libc6-dev
    iptables conntrack openssl curl iproute2 psmisc socat jq g++
)
missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' ||
        missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "== installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
else
    echo "== Debian packages: all there"
fi

echo "== toolchains"
# Rust and Go come with the machine image (Debian's own packages are too old for tonic 0.14
# and csi-test v5); fail early and clearly if either is missing.
command -v cargo >/dev/null || { echo "cargo (Rust >= 1.88) is required"; exit 1; }
command -v go >/dev/null || { echo "go (>= 1.22) is required to build csi-sanity and helm"; exit 1; }
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
cargo --version
go version

# csi-sanity and helm (which renders the chart in tests/manifests.rs, as a user would before
# installing it) go where `go install` puts them; tests/run-all.sh looks there.
GOBIN=${GOBIN:-$(go env GOPATH)/bin}
export GOBIN PATH="$GOBIN:$PATH"
CSI_TEST_VERSION=v5.5.0
# The version is read from the binary's build info, so an older csi-sanity is replaced.
if ! go version -m "$(command -v csi-sanity || echo /nonexistent)" 2>/dev/null |
    grep -qE "^\s+mod\s+github.com/kubernetes-csi/csi-test/v5\s+${CSI_TEST_VERSION}\b"; then
    echo "== csi-sanity $CSI_TEST_VERSION"
    go install "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@${CSI_TEST_VERSION}"
fi
HELM_VERSION=v3.22.0
if ! helm version >/dev/null 2>&1; then
    echo "== helm $HELM_VERSION"
    go install "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
fi

# grpcio for tests/real_grpcio.rs, from PyPI into a virtualenv of its own (the system Python
# stays untouched). Not Debian's python3-grpcio: its 1.51 sends `localhost` as :authority on
# unix sockets, where current grpcio sends the socket path, which is what the test is about.
GRPCIO_VERSION=1.84.0
GRPCIO_VENV=/var/cache/pvdir-grpcio
if ! "$GRPCIO_VENV/bin/python" -c "import grpc, grpc_tools.protoc, sys
sys.exit(grpc.__version__ != '$GRPCIO_VERSION')" 2>/dev/null; then
    echo "== grpcio $GRPCIO_VERSION in $GRPCIO_VENV"
    /usr/bin/python3 -m venv "$GRPCIO_VENV"
    "$GRPCIO_VENV/bin/pip" install -q "grpcio==$GRPCIO_VERSION" "grpcio-tools==$GRPCIO_VERSION"
fi
echo "== setup done"
