#!/usr/bin/env bash
# Builds the Kubernetes binaries, csi-provisioner, csi-snapshotter and the snapshot-controller
# that the cluster tier runs, from the Go module proxy (the only place this machine can fetch them from), into a cache outside the
# clone so that later runs reuse them.
#
# `go install k8s.io/kubernetes/cmd/...` is refused because k8s.io/kubernetes replaces its
# staging modules with ./staging paths. A scratch module that requires it and replaces each
# staging module by its published v0.Y.Z builds the same sources.
#
# Prints the bin directory on its last line.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.4}
PROVISIONER_VERSION=${PROVISIONER_VERSION:-v5.3.0}
# The tag deploy/ names for csi-snapshotter; the snapshot-controller is built from the same
# release, and the VolumeSnapshot CRDs come from the client module it requires.
SNAPSHOTTER_VERSION=${SNAPSHOTTER_VERSION:-v8.2.1}
CACHE=${PVDIR_K8S_CACHE:-/var/cache/pvdir-k8s}
BIN="$CACHE/bin-$K8S_VERSION-provisioner-$PROVISIONER_VERSION-snapshotter-$SNAPSHOTTER_VERSION"
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
SNAPSHOT_CMDS=(csi-snapshotter snapshot-controller)

have_all() {
    for b in "${K8S_CMDS[@]}" csi-provisioner "${SNAPSHOT_CMDS[@]}"; do
        [ -x "$BIN/$b" ] || return 1
    done
    [ -s "$BIN/snapshot-crds.yaml" ] && [ -s "$BIN/snapshot-controller.yaml" ]
}
if have_all; then
    echo "reusing $BIN" >&2
    echo "$BIN"
    exit 0
fi

mkdir -p "$BIN"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
staging_minor="v0.${K8S_VERSION#v1.}"

# $1 module dir, $2 required module, $3 version, $4 replace lines, $5... packages to import.
scratch_module() {
    local dir=$1 mod=$2 ver=$3 replaces=$4
    shift 4
    rm -rf "$dir" && mkdir -p "$dir"
    {
        echo "module pvdir.test/$(basename "$dir")"
        echo
        echo "go 1.24"
        echo
        echo "require $mod $ver"
        echo
        echo "$replaces"
    } >"$dir/go.mod"
    {
        echo "//go:build tools"
        echo
        echo "package tools"
        echo
        echo "import ("
        for p in "$@"; do echo "	_ \"$p\""; done
        echo ")"
    } >"$dir/tools.go"
    (cd "$dir" && go mod tidy >&2)
}

# Replace lines pointing into the module's own tree are rewritten to the published version;
# lines pointing at other versions are kept as they are.
upstream_replaces() {
    local mod=$1 ver=$2 staging=$3
    local gomod
    gomod=$(go mod download -json "$mod@$ver" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
    [ -f "$gomod" ] || { echo "no go.mod for $mod@$ver" >&2; return 1; }
    awk -v staging="$staging" '
        /^replace \(/ { inblock = 1; next }
        inblock && /^\)/ { inblock = 0; next }
        inblock || /^replace / {
            line = $0; sub(/^replace /, "", line); sub(/^[ \t]+/, "", line)
            n = split(line, f, /[ \t]+/)
            if (n < 3) next
            if (f[3] ~ /^\.\//) {
                if (staging != "") print "replace " f[1] " => " f[1] " " staging
            } else {
                print "replace " line
            }
        }' "$gomod"
}

work=$(mktemp -d /tmp/pvdir-k8s-build.XXXXXX)
trap 'rm -rf "$work"' EXIT

start=$(date +%s)
have() { for b in "$@"; do [ -x "$BIN/$b" ] || return 1; done; }

if ! have "${K8S_CMDS[@]}"; then
echo "== building Kubernetes $K8S_VERSION (staging $staging_minor)" >&2
k8s_pkgs=()
for c in "${K8S_CMDS[@]}"; do k8s_pkgs+=("k8s.io/kubernetes/cmd/$c"); done
scratch_module "$work/k8s" k8s.io/kubernetes "$K8S_VERSION" \
    "$(upstream_replaces k8s.io/kubernetes "$K8S_VERSION" "$staging_minor")" "${k8s_pkgs[@]}"
(cd "$work/k8s" && go build -trimpath -tags providerless \
    -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${K8S_VERSION#v1.}" \
    -o "$BIN/" "${k8s_pkgs[@]}")
fi

if ! have csi-provisioner; then
echo "== building csi-provisioner $PROVISIONER_VERSION" >&2
prov=github.com/kubernetes-csi/external-provisioner/v5
scratch_module "$work/prov" "$prov" "$PROVISIONER_VERSION" \
    "$(upstream_replaces "$prov" "$PROVISIONER_VERSION" "")" "$prov/cmd/csi-provisioner"
(cd "$work/prov" && go build -trimpath -ldflags "-s -w -X main.version=$PROVISIONER_VERSION" \
    -o "$BIN/" "$prov/cmd/csi-provisioner")
fi

if ! have "${SNAPSHOT_CMDS[@]}" || [ ! -s "$BIN/snapshot-controller.yaml" ]; then
echo "== building csi-snapshotter and snapshot-controller $SNAPSHOTTER_VERSION" >&2
snap=github.com/kubernetes-csi/external-snapshotter/v8
client=github.com/kubernetes-csi/external-snapshotter/client/v8
snap_mod=$(go mod download -json "$snap@$SNAPSHOTTER_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
# The release builds its ./client directory as the client module; its go.mod names the
# published version of that module, which holds the same code (and the CRDs).
client_version=$(awk -v m="$client" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$snap_mod")
[ -n "$client_version" ] || { echo "no $client version in $snap_mod" >&2; exit 1; }
scratch_module "$work/snap" "$snap" "$SNAPSHOTTER_VERSION" \
    "$(upstream_replaces "$snap" "$SNAPSHOTTER_VERSION" "$client_version")" \
    "$snap/cmd/csi-snapshotter" "$snap/cmd/snapshot-controller"
(cd "$work/snap" && go build -trimpath -ldflags "-s -w -X main.version=$SNAPSHOTTER_VERSION" \
    -o "$BIN/" "$snap/cmd/csi-snapshotter" "$snap/cmd/snapshot-controller")
client_dir=$(go mod download -json "$client@$client_version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
# The VolumeSnapshot kinds only: pvdir advertises no group snapshots (README, Capabilities).
for kind in volumesnapshotclasses volumesnapshotcontents volumesnapshots; do
    echo "---"
    cat "$client_dir/config/crd/snapshot.storage.k8s.io_$kind.yaml"
done >"$BIN/snapshot-crds.yaml"
snap_dir=$(go mod download -json "$snap@$SNAPSHOTTER_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
# The release's own manifests for the snapshot-controller (its RBAC and Deployment), naming
# the image built here: v8.2.1's Deployment still names v8.2.0.
for f in rbac-snapshot-controller.yaml setup-snapshot-controller.yaml; do
    echo "---"
    sed "s|\(image: registry.k8s.io/sig-storage/snapshot-controller\):v[0-9.]*|\1:$SNAPSHOTTER_VERSION|" \
        "$snap_dir/deploy/kubernetes/snapshot-controller/$f"
done >"$BIN/snapshot-controller.yaml"
fi

have_all
echo "== built in $(($(date +%s) - start)) s" >&2
echo "$BIN"
