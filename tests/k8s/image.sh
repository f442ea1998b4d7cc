#!/usr/bin/env bash
# Builds the images the cluster tier runs, without a container engine or a registry (CI has
# neither): OCI archives for `ctr -n k8s.io images import`.
#
#   tests/k8s/image.sh OUTDIR PVDIR_BINARY SIDECAR_BIN_DIR
#   tests/k8s/image.sh --plan        # what it would build from the Dockerfile, as key=value
#
# OUTDIR/pvdir.tar is the Dockerfile's runtime stage, rebuilt from the same Debian packages
# with mmdebstrap and packed with umoci. The values come FROM the Dockerfile (its last stage),
# and any instruction or form of that stage this script does not know how to reproduce makes
# it fail, naming the line: a Dockerfile change it cannot follow must break CI rather than
# quietly test a different image than the one users run. tests/image.rs checks the plan
# against the Dockerfile and the manifests. PVDIR_DOCKERFILE points it at another Dockerfile.
#
# OUTDIR/csi-provisioner.tar, csi-snapshotter.tar and snapshot-controller.tar are the upstream
# images' equivalents, built from SIDECAR_BIN_DIR (tests/k8s/build.sh's output): the static
# binary alone (upstream uses distroless/static, which adds only CA certificates and tzdata the
# sidecars do not read in-cluster).
#
# The rootfs (mmdebstrap's part, the slow one) is cached by release and packages under
# PVDIR_K8S_CACHE (/var/cache/pvdir-k8s), so warm runs only pack layers.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DOCKERFILE=${PVDIR_DOCKERFILE:-$ROOT/Dockerfile}
CACHE=${PVDIR_K8S_CACHE:-/var/cache/pvdir-k8s}
# build.sh builds this version; the manifests must name the same tag for kubelet to find it.
PROVISIONER_IMAGE=${PROVISIONER_IMAGE:-registry.k8s.io/sig-storage/csi-provisioner:v5.3.0}
SNAPSHOTTER_IMAGE=${SNAPSHOTTER_IMAGE:-registry.k8s.io/sig-storage/csi-snapshotter:v8.2.1}
SNAPSHOT_CONTROLLER_IMAGE=${SNAPSHOT_CONTROLLER_IMAGE:-registry.k8s.io/sig-storage/snapshot-controller:v8.2.1}
# The config the debian:*-slim base image carries and every image FROM it inherits: the
# driver finds mount.nfs through PATH.
BASE_ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Programs the image must provide: mount.nfs for the driver (EXTERNAL_PROGRAMS), mount and
# umount for whoever debugs a node plugin with kubectl exec.
REQUIRED_PROGRAMS=(mount.nfs mount umount)

die() {
    echo "image.sh: $*" >&2
    exit 1
}

# Line LINE of the Dockerfile uses something this recipe does not reproduce.
refuse() {
    echo "image.sh: $DOCKERFILE:$1: cannot reproduce \"$2\": $3" >&2
    echo "image.sh: teach tests/k8s/image.sh this instruction, or keep the Dockerfile within what it follows" >&2
    exit 2
}

# The Dockerfile as logical instructions, "LINE<TAB>TEXT": comment lines dropped (also inside
# continuations, as Docker does), continuations joined with a space (the tokens are parsed,
# not run, so the exact whitespace does not matter).
logical_lines() {
    awk '
        { sub(/\r$/, "") }
        /^[ \t]*#/ { next }
        /^[ \t]*$/ { next }
        {
            line = $0
            if (cur == "") { start = NR; sub(/^[ \t]+/, "", line) }
            if (line ~ /\\[ \t]*$/) { sub(/\\[ \t]*$/, "", line); cur = cur line " "; next }
            print start "\t" cur line
            cur = ""
        }
        END { if (cur != "") print start "\t" cur }
    ' "$1"
}

# A JSON array of strings (exec form), printed compact; anything else refused.
exec_form() {
    local line=$1 text=$2 json=$3
    jq -ec 'if type == "array" and length > 0 and all(.[]; type == "string") then . else error("not exec form") end' \
        <<<"$json" 2>/dev/null || refuse "$line" "$text" "only the exec form ([\"...\"]) is reproduced"
}

# Sets RELEASE BUILD_RELEASE PACKAGES BIN_SOURCE BIN_DEST USER_NAME ENTRYPOINT CMD from the
# Dockerfile, or refuses.
parse_dockerfile() {
    [ -f "$DOCKERFILE" ] || die "no Dockerfile at $DOCKERFILE"
    if grep -Eiq '^[[:space:]]*#[[:space:]]*escape[[:space:]]*=' "$DOCKERFILE"; then
        die "$DOCKERFILE: an escape parser directive changes how lines join; not reproduced"
    fi
    local -a lines=() texts=()
    local n text
    while IFS=$'\t' read -r n text; do
        lines+=("$n")
        texts+=("$text")
    done < <(logical_lines "$DOCKERFILE")

    # Earlier stages only matter as the source of COPY --from: their names and base images.
    local -A stage_image=()
    local i last=-1 op
    local -a w
    for i in "${!texts[@]}"; do
        read -ra w <<<"${texts[$i]}"
        op=${w[0]^^}
        if [ "$op" = FROM ]; then
            last=$i
            if [ "${#w[@]}" = 4 ] && [ "${w[2]^^}" = AS ]; then
                stage_image[${w[3]}]=${w[1]}
            fi
        fi
    done
    [ "$last" -ge 0 ] || die "$DOCKERFILE has no FROM"

    RELEASE='' BUILD_RELEASE='' PACKAGES=() BIN_SOURCE='' BIN_DEST='' USER_NAME='' ENTRYPOINT='' CMD=''
    local seen_user='' seen_cmd='' line rest cmd part stage recommends a
    local -a parts args
    for ((i = last; i < ${#texts[@]}; i++)); do
        line=${lines[$i]}
        text=${texts[$i]}
        read -ra w <<<"$text"
        op=${w[0]^^}
        rest=${text#"${w[0]}"}
        rest=${rest#"${rest%%[![:space:]]*}"}
        case $op in
        FROM)
            # debian:<release>-slim, the only base reproduced: Debian's images are debootstrap's
            # minbase variant (essential packages plus apt), which mmdebstrap builds too, and
            # -slim adds the dpkg path filters in SLIM_DPKGOPTS.
            if [ "${#w[@]}" != 2 ] && ! { [ "${#w[@]}" = 4 ] && [ "${w[2]^^}" = AS ]; }; then
                refuse "$line" "$text" "only FROM <image> [AS <name>]"
            fi
            [[ ${w[1]} =~ ^debian:([a-z]+)-slim$ ]] ||
                refuse "$line" "$text" "only a debian:<release>-slim runtime base is reproduced"
            RELEASE=${BASH_REMATCH[1]}
            ;;
        RUN)
            # Only the apt-get idiom: update, install packages, drop the lists. Each command
            # must match exactly, so that anything else the line would do is refused.
            [[ $rest != \[* ]] || refuse "$line" "$text" "RUN in exec form"
            parts=()
            while [[ $rest == *"&&"* ]]; do
                parts+=("${rest%%&&*}")
                rest=${rest#*&&}
            done
            parts+=("$rest")
            for part in "${parts[@]}"; do
                read -ra args <<<"$part"
                cmd="${args[*]}"
                case $cmd in
                "apt-get update") ;;
                "rm -rf /var/lib/apt/lists/*") ;; # mmdebstrap's cleanup does the same
                "apt-get install "*)
                    recommends=yes
                    for a in "${args[@]:2}"; do
                        case $a in
                        -y | --yes) ;;
                        --no-install-recommends) recommends=no ;;
                        -*) refuse "$line" "$text" "apt-get install option $a" ;;
                        *)
                            [[ $a =~ ^[a-z0-9][a-z0-9+.-]+$ ]] ||
                                refuse "$line" "$text" "package \"$a\" (only plain package names)"
                            PACKAGES+=("$a")
                            ;;
                        esac
                    done
                    [ "$recommends" = no ] ||
                        refuse "$line" "$text" "apt-get install without --no-install-recommends"
                    ;;
                *) refuse "$line" "$text" "command \"$cmd\" (only apt-get update, apt-get install -y --no-install-recommends and rm -rf /var/lib/apt/lists/*)" ;;
                esac
            done
            ;;
        COPY)
            # The one file copied is the pvdir binary from the build stage; this recipe is
            # given that binary instead of building it.
            [ -z "$BIN_DEST" ] || refuse "$line" "$text" "a second COPY"
            [ "${#w[@]}" = 4 ] && [[ ${w[1]} == --from=* ]] ||
                refuse "$line" "$text" "only COPY --from=<stage> <file> <dest>"
            stage=${w[1]#--from=}
            [ -n "${stage_image[$stage]:-}" ] || refuse "$line" "$text" "no earlier stage named $stage"
            [[ ${stage_image[$stage]} =~ ^rust:[0-9.]+-([a-z]+)(-slim)?$ ]] ||
                refuse "$line" "$text" "cannot tell the Debian release of ${stage_image[$stage]}"
            BUILD_RELEASE=${BASH_REMATCH[1]}
            BIN_SOURCE=${w[2]}
            [ "${BIN_SOURCE##*/}" = pvdir ] || refuse "$line" "$text" "copies something other than the pvdir binary"
            BIN_DEST=${w[3]}
            [[ $BIN_DEST == /* ]] || refuse "$line" "$text" "a relative destination"
            [[ $BIN_DEST != */ ]] || BIN_DEST=$BIN_DEST${BIN_SOURCE##*/}
            ;;
        USER)
            [ -z "$seen_user" ] || refuse "$line" "$text" "a second USER"
            [ "${#w[@]}" = 2 ] && [[ ${w[1]} =~ ^[A-Za-z0-9_.:-]+$ ]] || refuse "$line" "$text" "only USER <name>"
            USER_NAME=${w[1]}
            seen_user=1
            ;;
        ENTRYPOINT)
            [ -z "$ENTRYPOINT" ] || refuse "$line" "$text" "a second ENTRYPOINT"
            ENTRYPOINT=$(exec_form "$line" "$text" "$rest")
            ;;
        CMD)
            [ -z "$seen_cmd" ] || refuse "$line" "$text" "a second CMD"
            CMD=$(exec_form "$line" "$text" "$rest")
            seen_cmd=1
            ;;
        *) refuse "$line" "$text" "$op is not reproduced" ;;
        esac
    done
    [ -n "$BIN_DEST" ] || die "$DOCKERFILE: the runtime stage copies no pvdir binary"
    # Without an ENTRYPOINT the base image's CMD (bash) would run; not reproduced.
    [ -n "$ENTRYPOINT" ] || die "$DOCKERFILE: the runtime stage has no ENTRYPOINT"
    # Setting ENTRYPOINT clears the CMD inherited from the base image.
    [ -n "$CMD" ] || CMD='[]'
}

# The image name the manifests run pvdir as (one, or they disagree).
pvdir_image() {
    local names
    names=$(find "$ROOT/deploy" -name '*.yaml' -exec \
        sed -n 's/^[[:space:]]*image:[[:space:]]*\([^[:space:]]*\/pvdir:[^[:space:]]*\).*/\1/p' {} + |
        sort -u)
    [ -n "$names" ] || die "the manifests in deploy/ name no pvdir image"
    [ "$(wc -l <<<"$names")" = 1 ] || die "the manifests in deploy/ name different pvdir images: $names"
    echo "$names"
}

print_plan() {
    echo "image=$(pvdir_image)"
    echo "release=$RELEASE"
    echo "build_release=$BUILD_RELEASE"
    echo "variant=minbase"
    echo "packages=${PACKAGES[*]}"
    echo "binary_source=$BIN_SOURCE"
    echo "binary=$BIN_DEST"
    echo "user=$USER_NAME"
    echo "entrypoint=$ENTRYPOINT"
    echo "cmd=$CMD"
}

# debian:*-slim is built with these dpkg filters (debuerreotype's slimify), which stay in the
# image for packages installed later, as the Dockerfile's apt-get install does.
SLIM_DPKGOPTS=(
    'path-exclude=/usr/share/doc/*'
    'path-include=/usr/share/doc/*/copyright'
    'path-exclude=/usr/share/groff/*'
    'path-exclude=/usr/share/info/*'
    'path-exclude=/usr/share/linda/*'
    'path-exclude=/usr/share/lintian/overrides/*'
    'path-exclude=/usr/share/locale/*'
    'path-exclude=/usr/share/man/*'
)

# The cached rootfs tarball for the plan, built on a miss. Keyed by everything mmdebstrap is
# given, so a change to the packages or to this recipe's options builds a new one.
rootfs_tar() {
    local opts=(--variant=minbase --format=tar --aptopt='APT::Install-Recommends "false"')
    local o
    for o in "${SLIM_DPKGOPTS[@]}"; do opts+=("--dpkgopt=$o"); done
    [ "${#PACKAGES[@]}" = 0 ] || opts+=("--include=$(IFS=,; echo "${PACKAGES[*]}")")
    # The sources debian:*-slim carries, which are also this machine's: the Dockerfile's
    # apt-get install sees the release with its updates and security suites, all on
    # deb.debian.org (mmdebstrap's default would fetch security from security.debian.org).
    local sources=(
        "deb http://deb.debian.org/debian $RELEASE main"
        "deb http://deb.debian.org/debian $RELEASE-updates main"
        "deb http://deb.debian.org/debian-security $RELEASE-security main"
    )
    local key
    key=$(printf '%s\n' "$RELEASE" "${opts[@]}" "${sources[@]}" | sha256sum | cut -c1-16)
    local tar="$CACHE/rootfs-$RELEASE-$key.tar"
    if [ -f "$tar" ]; then
        echo "image.sh: reusing $tar" >&2
    else
        echo "image.sh: mmdebstrap $RELEASE + ${PACKAGES[*]:-nothing} -> $tar" >&2
        mkdir -p "$CACHE"
        # The lists and apt's cache are removed by mmdebstrap's cleanup (the Dockerfile's
        # rm -rf /var/lib/apt/lists/*). /dev is left empty as in any image; the runtime
        # provides it.
        mmdebstrap "${opts[@]}" "$RELEASE" - "${sources[@]}" |
            mmtarfilter '--path-exclude=/dev/*' >"$tar.tmp.$$" ||
            { rm -f "$tar.tmp.$$"; die "mmdebstrap failed"; }
        mv "$tar.tmp.$$" "$tar"
    fi
    echo "$tar"
}

# A tar of one file at PATH (absolute, in the image) owned by root, as COPY writes it.
file_layer() {
    local src=$1 path=$2 out=$3 stage
    stage=$(mktemp -d "$WORK/stage.XXXXXX")
    mkdir -p "$stage$(dirname "$path")"
    cp "$src" "$stage$path"
    chmod 0755 "$stage$path"
    # Only the file: parents come from the base layer (or the runtime creates them), and a
    # temp directory's 0700 must not become the image's /.
    tar -C "$stage" --owner=0 --group=0 --numeric-owner -cf "$out" "${path#/}"
}

# Packs an OCI layout into an archive that `ctr images import` names NAME: containerd takes the
# io.containerd.image.name annotation as the full name, whereas org.opencontainers.image.ref.name
# (umoci's tag) is only a tag that ctr would prefix with "import-<date>" or drop.
archive() {
    local layout=$1 tag=$2 name=$3 out=$4
    umoci gc --layout "$layout"
    jq --arg tag "$tag" --arg name "$name" '
        .manifests |= map(if .annotations["org.opencontainers.image.ref.name"] == $tag
                          then .annotations["io.containerd.image.name"] = $name else . end)' \
        "$layout/index.json" >"$layout/index.json.new"
    mv "$layout/index.json.new" "$layout/index.json"
    tar -C "$layout" -cf "$out" oci-layout index.json blobs
}

# The image config umoci wrote for TAG in LAYOUT.
image_config() {
    local layout=$1 tag=$2 manifest config
    manifest=$(jq -r --arg tag "$tag" \
        '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $tag) | .digest' \
        "$layout/index.json")
    config=$(jq -r .config.digest "$layout/blobs/${manifest/://}")
    jq -c .config "$layout/blobs/${config/://}"
}

build_pvdir() {
    local out=$1 bin=$2 name=$3 tag=${3##*:}
    local tar
    tar=$(rootfs_tar)

    # Check the image's filesystem as the container would see it: the programs through its own
    # PATH and merged-/usr symlinks, and the given binary against the image's glibc.
    local rootfs="$WORK/rootfs"
    mkdir "$rootfs"
    tar -C "$rootfs" -xf "$tar"
    mkdir -p "$rootfs$(dirname "$BIN_DEST")"
    cp "$bin" "$rootfs$BIN_DEST"
    local p
    for p in "${REQUIRED_PROGRAMS[@]}"; do
        chroot "$rootfs" /usr/bin/env -i "$BASE_ENV" sh -c "command -v $p" >/dev/null ||
            die "$p is not in the image (packages: ${PACKAGES[*]})"
    done
    chroot "$rootfs" /usr/bin/env -i "$BASE_ENV" "$BIN_DEST" --help >/dev/null ||
        die "$bin does not run in the image (built against a newer glibc than $RELEASE's?)"
    rm -rf "$rootfs"

    local layout="$WORK/pvdir"
    umoci init --layout "$layout"
    umoci new --image "$layout:$tag"
    umoci raw add-layer --image "$layout:$tag" \
        --history.created_by "mmdebstrap --variant=minbase $RELEASE --include=${PACKAGES[*]}" "$tar"
    file_layer "$bin" "$BIN_DEST" "$WORK/pvdir-layer.tar"
    umoci raw add-layer --image "$layout:$tag" \
        --history.created_by "COPY $BIN_SOURCE $BIN_DEST" "$WORK/pvdir-layer.tar"
    local cfg=(--config.env "$BASE_ENV" --clear=config.entrypoint --clear=config.cmd)
    [ -z "$USER_NAME" ] || cfg+=(--config.user "$USER_NAME")
    local a
    while IFS= read -r a; do cfg+=(--config.entrypoint "$a"); done < <(jq -r '.[]' <<<"$ENTRYPOINT")
    while IFS= read -r a; do cfg+=(--config.cmd "$a"); done < <(jq -r '.[]' <<<"$CMD")
    umoci config --image "$layout:$tag" "${cfg[@]}"

    # umoci's flags are not JSON; what it wrote must be exactly what the Dockerfile says.
    local got
    got=$(image_config "$layout" "$tag")
    jq -e --argjson e "$ENTRYPOINT" --argjson c "$CMD" --arg u "$USER_NAME" \
        '.Entrypoint == $e and (.Cmd // []) == $c and (.User // "") == $u' <<<"$got" >/dev/null ||
        die "the image config differs from the Dockerfile: $got"

    archive "$layout" "$tag" "$name" "$out"
}

# build_static OUT BINARY IMAGE: an image of BINARY alone, run as /<its name>.
build_static() {
    local out=$1 bin=$2 name=$3 tag=${3##*:} cmd
    cmd=$(basename "$bin")
    # FROM scratch runs only a static binary; the check is cheap, the failure otherwise would
    # be a pod in CrashLoopBackOff with "no such file or directory".
    [ "$(head -c4 "$bin" | od -An -c | tr -d ' ')" = '177ELF' ] || die "$bin is not an ELF binary"
    if ldd "$bin" >/dev/null 2>&1; then
        die "$bin is dynamically linked; a FROM scratch image has no libc (build with CGO_ENABLED=0)"
    fi
    local layout="$WORK/$cmd"
    umoci init --layout "$layout"
    umoci new --image "$layout:$tag"
    file_layer "$bin" "/$cmd" "$WORK/$cmd-layer.tar"
    umoci raw add-layer --image "$layout:$tag" \
        --history.created_by "COPY $cmd /$cmd" "$WORK/$cmd-layer.tar"
    umoci config --image "$layout:$tag" --config.entrypoint "/$cmd"
    archive "$layout" "$tag" "$name" "$out"
}

command -v jq >/dev/null || die "jq is not installed (it reads the Dockerfile's exec forms)"
if [ "${1:-}" = --plan ]; then
    [ $# = 1 ] || die "usage: $0 --plan"
    parse_dockerfile
    print_plan
    exit 0
fi

[ $# = 3 ] || die "usage: $0 OUTDIR PVDIR_BINARY SIDECAR_BIN_DIR | --plan"
OUTDIR=$1
PVDIR_BIN=$2
SIDECARS=("$3/csi-provisioner $PROVISIONER_IMAGE" "$3/csi-snapshotter $SNAPSHOTTER_IMAGE"
    "$3/snapshot-controller $SNAPSHOT_CONTROLLER_IMAGE")
for f in "$PVDIR_BIN" "$3/csi-provisioner" "$3/csi-snapshotter" "$3/snapshot-controller"; do
    [ -x "$f" ] || die "$f is not an executable file"
done
[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap's root mode; chroot for the image checks)"
for t in mmdebstrap mmtarfilter umoci; do command -v "$t" >/dev/null || die "$t is not installed"; done

parse_dockerfile
start=$(date +%s)
mkdir -p "$OUTDIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pvdir-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

pvdir_name=$(pvdir_image)
# umoci and mmdebstrap report on stdout; the names and sizes below are this script's output.
build_pvdir "$OUTDIR/pvdir.tar" "$PVDIR_BIN" "$pvdir_name" >&2
entries=("$pvdir_name pvdir.tar")
for sidecar in "${SIDECARS[@]}"; do
    read -r bin name <<<"$sidecar"
    build_static "$OUTDIR/$(basename "$bin").tar" "$bin" "$name" >&2
    entries+=("$name $(basename "$bin").tar")
done
for entry in "${entries[@]}"; do
    read -r name file <<<"$entry"
    printf '%-55s %4s MiB  %s\n' "$name" "$(($(stat -c %s "$OUTDIR/$file") / 1048576))" "$OUTDIR/$file"
done
echo "image.sh: built in $(($(date +%s) - start)) s" >&2
