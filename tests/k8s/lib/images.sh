# Offline images: built locally with umoci from nothing, imported into containerd's k8s.io
# namespace. Nothing is ever pulled. Sourced by cluster.sh.
# shellcheck shell=bash

# oci_archive OUT.tar TAG ROOTFS_DIR UMOCI_CONFIG_ARGS...: a one-layer OCI image archive whose
# index names it TAG (a bare tag; the import adds the repository).
oci_archive() {
    local out=$1 tag=$2 rootfs=$3 work
    shift 3
    work=$(mktemp -d "$STATE/tmp-image.XXXXXX")
    umoci init --layout "$work/oci"
    umoci new --image "$work/oci:$tag"
    umoci unpack --image "$work/oci:$tag" "$work/bundle" >/dev/null
    cp -a "$rootfs/." "$work/bundle/rootfs/"
    umoci repack --image "$work/oci:$tag" "$work/bundle"
    umoci config --image "$work/oci:$tag" --os linux --architecture amd64 "$@"
    umoci gc --layout "$work/oci"
    tar -C "$work/oci" -cf "$out.tmp" .
    mv "$out.tmp" "$out"
    rm -rf "$work"
}

# The images are rebuilt only when their inputs change (pause.c, this file, busybox).
base_image_fresh() {
    local tar=$1
    shift
    [ -s "$tar" ] || return 1
    local src
    for src in "$@"; do [ "$tar" -nt "$src" ] || return 1; done
}

build_base_images() {
    mkdir -p "$BASE_IMAGES_DIR"
    local lib="$HERE/lib/images.sh" root
    if ! base_image_fresh "$BASE_IMAGES_DIR/pause.tar" "$HERE/pause.c" "$lib"; then
        root=$(mktemp -d "$STATE/tmp-rootfs.XXXXXX")
        gcc -static -O2 -s -o "$root/pause" "$HERE/pause.c"
        oci_archive "$BASE_IMAGES_DIR/pause.tar" "${PAUSE_IMAGE##*:}" "$root" \
            --config.entrypoint /pause --config.user 65535:65535
        rm -rf "$root"
    fi
    if ! base_image_fresh "$BASE_IMAGES_DIR/busybox.tar" /bin/busybox "$lib"; then
        root=$(mktemp -d "$STATE/tmp-rootfs.XXXXXX")
        mkdir -p "$root"/{bin,etc,root,tmp,var/tmp}
        chmod 1777 "$root/tmp" "$root/var/tmp"
        cp /bin/busybox "$root/bin/busybox"
        local applet
        for applet in $(/bin/busybox --list); do
            [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
        done
        printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
        printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
        oci_archive "$BASE_IMAGES_DIR/busybox.tar" "${BUSYBOX_IMAGE##*:}" "$root" \
            --config.env PATH=/bin --config.cmd sh
        rm -rf "$root"
    fi
}

# import_archive FILE [REPOSITORY]: imports FILE and prints the image names it held. With
# REPOSITORY, bare tags in the archive's index become REPOSITORY:TAG. Without it the archive must
# carry full names (annotation io.containerd.image.name, or org.opencontainers.image.ref.name set
# to a full reference such as ghcr.io/pvdir/pvdir:v0.1.0): ctr would otherwise invent an
# "import-DATE:TAG" name that no manifest can use, which is refused here.
import_archive() {
    local file=$1 repo=${2:-} out names
    [ -f "$file" ] || die "no image archive $file"
    if [ -n "$repo" ]; then
        out=$(ctr_k8s images import --base-name "$repo" "$file" 2>&1) || die "import of $file failed: $out"
    else
        out=$(ctr_k8s images import "$file" 2>&1) || die "import of $file failed: $out"
    fi
    names=$(sed -n 's/^unpacking \([^ ]*\) (sha256:.*/\1/p' <<<"$out")
    [ -n "$names" ] || die "$file: no named image in it (ctr said: $out)"
    if grep -q '^import-' <<<"$names"; then
        die "$file: its index names images by tag only ($(tr '\n' ' ' <<<"$names")); give them full names (org.opencontainers.image.ref.name=REPO:TAG)"
    fi
    echo "$names"
}

# The repository and tag containerd's CRI stores for an image reference as manifests write it:
# a bare name means docker.io/library/NAME, a missing tag means :latest.
normalize_ref() {
    local ref=$1 first rest
    first=${ref%%/*}
    if [ "$first" = "$ref" ]; then
        ref=docker.io/library/$ref
    elif [[ $first != *.* && $first != *:* && $first != localhost ]]; then
        ref=docker.io/$ref
    fi
    rest=${ref##*/}
    if [[ $ref != *@* && $rest != *:* ]]; then ref=$ref:latest; fi
    echo "$ref"
}

image_present() {
    local ref
    ref=$(normalize_ref "$1")
    if [[ $ref == *@sha256:* ]]; then
        # A digest reference matches an image of that repository whose manifest has the digest.
        ctr_k8s images ls | awk -v repo="${ref%@*}" -v dgst="${ref#*@}" \
            '(index($1, repo ":") == 1 || index($1, repo "@") == 1) && $3 == dgst { found = 1 }
             END { exit !found }'
    else
        # Not `ctr | grep -q`: grep's early exit would fail the pipe (pipefail).
        local names
        names=$(ctr_k8s images ls -q)
        grep -qxF "$ref" <<<"$names"
    fi
}
