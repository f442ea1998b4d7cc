#!/usr/bin/env bash
# Builds the Kubernetes binaries and csi-provisioner that the cluster tier runs, from the Go
# module proxy (the only place this machine can fetch them from), into a cache outside the
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
CACHE=${PVDIR_K8S_CACHE:-/var/cache/pvdir-k8s}
BIN="$CACHE/bin-$K8S_VERSION-provisioner-$PROVISIONER_VERSION"
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)

have_all() {
    for b in "${K8S_CMDS[@]}" csi-provisioner; do [ -x "$BIN/$b" ] || return 1; done
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
echo "== building Kubernetes $K8S_VERSION (staging $staging_minor)" >&2
k8s_pkgs=()
for c in "${K8S_CMDS[@]}"; do k8s_pkgs+=("k8s.io/kubernetes/cmd/$c"); done
scratch_module "$work/k8s" k8s.io/kubernetes "$K8S_VERSION" \
    "$(upstream_replaces k8s.io/kubernetes "$K8S_VERSION" "$staging_minor")" "${k8s_pkgs[@]}"
(cd "$work/k8s" && go build -trimpath -tags providerless \
    -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${K8S_VERSION#v1.}" \
    -o "$BIN/" "${k8s_pkgs[@]}")

echo "== building csi-provisioner $PROVISIONER_VERSION" >&2
prov=github.com/kubernetes-csi/external-provisioner/v5
scratch_module "$work/prov" "$prov" "$PROVISIONER_VERSION" \
    "$(upstream_replaces "$prov" "$PROVISIONER_VERSION" "")" "$prov/cmd/csi-provisioner"
(cd "$work/prov" && go build -trimpath -ldflags "-s -w -X main.version=$PROVISIONER_VERSION" \
    -o "$BIN/" "$prov/cmd/csi-provisioner")

have_all
echo "== built in $(($(date +%s) - start)) s" >&2
echo "$BIN"
