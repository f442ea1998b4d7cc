#!/usr/bin/env bash
# A second node with kernel NFS for the host cluster of tests/k8s/cluster.sh: the host kernel
# has no NFS, so a QEMU guest (software emulation) with Debian's kernel joins the cluster as
# node-2 and runs kernel nfsd, containerd and kubelet. pvdir's node plugin runs there as the
# pod of deploy/'s DaemonSet (up applies deploy/); pvdir's NFS controller and its
# csi-provisioner run as host processes of the guest (see node2/guest.sh for why).
#
#   tests/k8s/node2.sh up         start the guest (after cluster.sh up); waits until node-2 is
#                                 Ready and CSINode node-2 lists nfs.pvdir.io
#   tests/k8s/node2.sh down       power the guest off, stop QEMU and its socat helpers, undo the
#                                 host's route and iptables chain; safe when nothing is up
#   tests/k8s/node2.sh scenario   the seed's StatefulSet on pvdir-nfs on node-2, and the reclaim
#                                 of each NFS StorageClass (delete, retain, archive)
#   tests/k8s/node2.sh guest CMD  run a shell command in the guest (through the command channel)
#   tests/k8s/node2.sh status     is the guest up; its status marks
#
# State: $STATE/node2 (STATE as in cluster.sh): the guest's console log, its logs
# (chan/logs/*.log: kubelet, containerd, nfsd, pvdir-controller, csi-provisioner),
# its status marks (chan/status) and the scenario's log (scenario.log).
#
# The guest runs on the host's own root (9p, read-only, under a tmpfs overlay), so it uses the
# very binaries of the host: kubelet and csi-provisioner from tests/k8s/build.sh's cache,
# target/release/pvdir (a copy taken by up), containerd, runc and nfs-utils from Debian.
#
# No packet leaves the machine. The guest's NIC is QEMU user networking with restrict=on (the
# guest can reach nothing but the two forwards below) and the guest has no default route:
#   - guest 10.0.2.100:6443 -> host 127.0.0.1:6443 (apiserver), one socat per connection;
#   - host 127.0.0.1:10260 -> guest 10.0.2.15:10250 (kubelet: logs, exec). The apiserver
#     dials node-2's InternalIP 10.250.0.2:10250, which the host routes to lo and DNATs to
#     127.0.0.1:10260 (chain K8S-VM-NODE). slirp presents a loopback client as 10.0.2.2; any
#     other source address would reach the guest unchanged and be dropped there as martian.
# The apiserver's certificate has no SAN for 10.0.2.100: the guest's kubeconfigs name it by its
# DNS SAN `kubernetes` (tls-server-name).
#
# Needs: qemu-system-x86 linux-image-amd64 (6.1.0-57-amd64, for its modules) busybox-static
# socat nfs-kernel-server, and cluster.sh's packages.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib/pki.sh
. "$HERE/lib/pki.sh"
# shellcheck source=lib/proc.sh
. "$HERE/lib/proc.sh"
TOP=$(cd "$HERE/../.." && pwd)
STATE=$(realpath -m "${PVDIR_K8S_STATE:-/var/tmp/pvdir-k8s}")
N2=$STATE/node2
# The command channel, also mounted read-write in the guest at the same path. Under /var/tmp:
# the guest's /tmp is a tmpfs of its own.
CHAN=$N2/chan
PKI=$STATE/pki

NODE_NAME=node-2
NODE_IP=10.250.0.2
GUEST_ETH_IP=10.0.2.15
APISERVER_GUEST_IP=10.0.2.100
APISERVER_PORT=6443
KUBELET_FWD_PORT=10260
NAT_CHAIN=K8S-VM-NODE
DRIVER=nfs.pvdir.io
NFS_SERVER=127.0.0.1
NFS_SHARE=/k8s
VM_MEM=${PVDIR_NODE2_MEM:-2048}
# One vCPU: with two, TCG's vCPU threads on this 2-core host, already busy with the control
# plane, once left the guest's second CPU unscheduled for minutes (soft lockups of kubelet on
# the first, which waited for it), and node-2 never became Ready. One vCPU has no
# cross-CPU waits to stall, and joins in about the same time.
VM_SMP=${PVDIR_NODE2_SMP:-1}
# From QEMU's start to node-2 Ready with the driver registered. It must leave room for the
# guest's own bounds: a slow boot retried after 90 s, and image imports bounded at 300 s each
# (node2/guest.sh), of which pvdir's has taken over 60 s on a busy host.
UP_LIMIT=${PVDIR_NODE2_UP_LIMIT:-600}

say() { echo "node2: $*"; }
warn() { echo "node2: WARNING: $*" >&2; }
die() {
    echo "node2: ERROR: $*" >&2
    exit 1
}

kernel_path() { ls -1 /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -1; }

cluster_env() {
    [ -s "$STATE/env" ] || die "no $STATE/env: run tests/k8s/cluster.sh up first"
    # shellcheck disable=SC1091
    . "$STATE/env"
    BIN=$PVDIR_K8S_BIN
    kubectl get --raw /readyz >/dev/null 2>&1 || die "the apiserver does not answer: run tests/k8s/cluster.sh up"
}

# ---- processes of ours: QEMU by recorded PID (checked against its executable), its socat
# helpers as QEMU's children (pid_is: lib/proc.sh).
qemu_pid() {
    local pid exe
    [ -s "$N2/qemu.pid" ] || return 1
    read -r pid exe <"$N2/qemu.pid"
    pid_is "$pid" "$exe" || return 1
    echo "$pid"
}
children_of() {
    local p
    for p in /proc/[0-9]*; do
        [ "$(awk '/^PPid:/ { print $2 }' "$p/status" 2>/dev/null)" = "$1" ] && echo "${p#/proc/}"
    done
    return 0
}

# ---- command channel
# guest [-t SECONDS] SCRIPT: runs SCRIPT with bash in the guest; prints its output, returns its
# status (124 when it overran).
guest() {
    local limit=60
    if [ "$1" = -t ]; then
        limit=$2
        shift 2
    fi
    qemu_pid >/dev/null || die "node-2 is not running"
    local id
    id=$(date +%s%N)-$$-$RANDOM
    # The guest bounds the command itself; this bound is for a guest that does not answer.
    { echo "export CMD_LIMIT=$limit"; echo "$1"; } >"$CHAN/cmd/$id.tmp"
    mv "$CHAN/cmd/$id.tmp" "$CHAN/cmd/$id.sh"
    local deadline=$((SECONDS + limit + 20))
    until [ -e "$CHAN/cmd/$id.rc" ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "node2: guest command gave no answer in $((limit + 20))s: $1" >&2
            rm -f "$CHAN/cmd/$id".*
            return 125
        fi
        sleep 0.2
    done
    local rc
    rc=$(cat "$CHAN/cmd/$id.rc")
    cat "$CHAN/cmd/$id.out"
    rm -f "$CHAN/cmd/$id".*
    return "$rc"
}

# ---- initramfs: busybox, node2/init, and the modules needed to reach the 9p root.
build_initrd() {
    local kver=$1 initrd=$N2/initrd-$kver.gz stage
    if [ -s "$initrd" ] && [ "$initrd" -nt "$HERE/node2/init" ] && [ "$initrd" -nt "$0" ]; then
        echo "$initrd"
        return
    fi
    stage=$(mktemp -d "$N2/initrd.XXXXXX")
    mkdir -p "$stage"/{bin,modules,proc,sys,dev,host,rw,newroot}
    cp /bin/busybox "$stage/bin/busybox"
    cp "$HERE/node2/init" "$stage/init"
    chmod +x "$stage/init"
    local m ko
    for m in virtio_pci 9pnet_virtio 9p overlay; do
        modprobe -S "$kver" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
    done | awk '!seen[$0]++' | while read -r ko; do
        cp "$ko" "$stage/modules/"
        basename "$ko" >>"$stage/modules/order"
    done
    (cd "$stage" && find . | cpio -o -H newc 2>/dev/null | gzip -1 >"$initrd.tmp")
    mv "$initrd.tmp" "$initrd"
    rm -rf "$stage"
    echo "$initrd"
}

# ---- node-2's credentials, signed by the cluster's CA (cluster.sh makes a new one per up).
sign() { pki_cert "$1" "$2" "$3" "${4:-}" "$CHAN/pki"; }
# guest_kubeconfig FILE USER-LINES...: the apiserver as the guest reaches it.
guest_kubeconfig() {
    local file=$1
    shift
    {
        cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: pvdir-k8s
  cluster:
    server: https://$APISERVER_GUEST_IP:$APISERVER_PORT
    tls-server-name: kubernetes
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
contexts:
- name: pvdir-k8s
  context:
    cluster: pvdir-k8s
    user: u
current-context: pvdir-k8s
users:
- name: u
  user:
EOF
        printf '    %s\n' "$@"
    } >"$file"
    chmod 600 "$file"
}
make_credentials() {
    mkdir -p "$CHAN/pki"
    chmod 700 "$CHAN/pki"
    cp "$PKI/ca.crt" "$CHAN/pki/ca.crt"
    sign kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
    sign kubelet-serving "/CN=$NODE_NAME" serverAuth "DNS:$NODE_NAME,IP:$NODE_IP,IP:$GUEST_ETH_IP,IP:127.0.0.1"
    guest_kubeconfig "$CHAN/pki/kubelet.kubeconfig" \
        "client-certificate-data: $(base64 -w0 "$CHAN/pki/kubelet.crt")" \
        "client-key-data: $(base64 -w0 "$CHAN/pki/kubelet.key")"
    # csi-provisioner authenticates as pvdir's own controller ServiceAccount, so that
    # deploy/base/rbac-controller.yaml is what gets exercised.
    local token
    token=$(kubectl -n pvdir create token pvdir-controller --duration=24h) || die "no token for pvdir-controller"
    guest_kubeconfig "$CHAN/pki/provisioner.kubeconfig" "token: $token"
}

# ---- host network: node-2's InternalIP routed to lo, its kubelet port DNATed to the hostfwd.
host_network_up() {
    ip route replace "$NODE_IP/32" dev lo src 127.0.0.1
    echo "route" >>"$N2/host-changes"
    iptables -t nat -N "$NAT_CHAIN"
    echo "chain" >>"$N2/host-changes"
    iptables -t nat -A "$NAT_CHAIN" -d "$NODE_IP/32" -p tcp --dport 10250 \
        -j DNAT --to-destination "127.0.0.1:$KUBELET_FWD_PORT"
    iptables -t nat -A OUTPUT -d "$NODE_IP/32" -j "$NAT_CHAIN"
}
host_network_down() {
    local rule
    if iptables -t nat -S "$NAT_CHAIN" >/dev/null 2>&1; then
        while rule=$(iptables -t nat -S OUTPUT | grep -m1 -- "-j $NAT_CHAIN\$"); do
            # shellcheck disable=SC2086
            iptables -t nat ${rule/-A /-D } || break
        done
        iptables -t nat -F "$NAT_CHAIN"
        iptables -t nat -X "$NAT_CHAIN"
        say "down: removed iptables nat chain $NAT_CHAIN"
    fi
    if ip route show table main "$NODE_IP/32" dev lo 2>/dev/null | grep -q .; then
        ip route del "$NODE_IP/32" dev lo
        say "down: removed route $NODE_IP/32 dev lo"
    fi
    rm -f "$N2/host-changes"
}

# csi-provisioner's leader lease for nfs.pvdir.io.
LEASE=nfs-pvdir-io
lease_holder() { kubectl -n pvdir get lease "$LEASE" -o 'jsonpath={.spec.holderIdentity}' 2>/dev/null; }

# With deploy/ installed (pods mode, tests/k8s/run.sh), pvdir's controller StatefulSet runs on
# node-1, whose kernel has no NFS client: it could take the nfs.pvdir.io lease and then fail
# every CreateVolume. While node-2 is up the NFS controller is node-2's, so that StatefulSet is
# scaled to 0; down puts its replica count back.
park_pods_controller() {
    local n
    n=$(kubectl -n pvdir get statefulset pvdir-controller -o 'jsonpath={.spec.replicas}' 2>/dev/null) || return 0
    [ -n "$n" ] && [ "$n" != 0 ] || return 0
    echo "$n" >"$N2/parked-controller-replicas"
    say "scaling the pods-mode pvdir-controller (node-1, no NFS there) from $n to 0 while node-2 is up"
    kubectl -n pvdir scale statefulset pvdir-controller --replicas=0
    kubectl -n pvdir wait pod pvdir-controller-0 --for=delete --timeout=60s 2>/dev/null || true
}
unpark_pods_controller() {
    [ -s "$N2/parked-controller-replicas" ] || return 0
    local n
    n=$(cat "$N2/parked-controller-replicas")
    if timeout 20 kubectl -n pvdir scale statefulset pvdir-controller --replicas="$n" 2>/dev/null; then
        say "down: pods-mode pvdir-controller scaled back to $n"
    fi
    rm -f "$N2/parked-controller-replicas"
}

node_ready() {
    [ "$(kubectl get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
csinode_has_driver() {
    kubectl get csinode "$NODE_NAME" -o 'jsonpath={.spec.drivers[*].name}' 2>/dev/null | tr ' ' '\n' | grep -qxF "$DRIVER"
}

# Status marks, with times relative to QEMU's start, printed as they come.
MARKS_SHOWN=0
show_marks() {
    [ -s "$CHAN/status" ] || return 0
    local t0 n line
    t0=$(cat "$N2/started")
    n=$(wc -l <"$CHAN/status")
    [ "$n" -gt "$MARKS_SHOWN" ] || return 0
    tail -n +"$((MARKS_SHOWN + 1))" "$CHAN/status" | head -n "$((n - MARKS_SHOWN))" | while read -r t line; do
        printf 'node2: [+%5.1fs] guest: %s\n' "$(echo "$t - $t0" | bc)" "$line"
    done
    MARKS_SHOWN=$n
}

up_failed() {
    local rc=$?
    trap - EXIT INT TERM
    [ "$rc" -ne 0 ] || return 0
    echo "node2: up failed (exit $rc). Console: $N2/console.log, guest logs: $CHAN/logs/" >&2
    if [ -s "$N2/console.log" ]; then
        echo "---- console (last 30 lines)" >&2
        tr -d '\r' <"$N2/console.log" | tail -n 30 >&2
    fi
    local f
    for f in "$CHAN"/logs/*.log; do
        [ -s "$f" ] || continue
        echo "---- $f (last 15 lines)" >&2
        tail -n 15 "$f" >&2
    done
    if [ "${PVDIR_K8S_KEEP_ON_FAILURE:-0}" = 1 ]; then
        echo "node2: PVDIR_K8S_KEEP_ON_FAILURE=1: left running; run node2.sh down yourself" >&2
    else
        down || true
    fi
    exit "$rc"
}

# start_qemu KERNEL INITRD NETDEV: QEMU in the background, its PID and executable in qemu.pid.
start_qemu() {
    local kernel=$1 initrd=$2 netdev=$3 qemu
    qemu=$(readlink -f "$(command -v qemu-system-x86_64)")
    : >"$N2/console.log"
    date +%s.%N >"$N2/started"
    setsid env -u HTTP_PROXY -u HTTPS_PROXY -u http_proxy -u https_proxy "$qemu" \
        -name node-2 -accel tcg,tb-size=256 -m "$VM_MEM" -smp "$VM_SMP" \
        -nodefaults -display none -no-reboot -serial "file:$N2/console.log" \
        -kernel "$kernel" -initrd "$initrd" \
        -append "console=ttyS0 quiet panic=-1 pvdir.chan=$CHAN pvdir.script=$N2/guest/guest.sh pvdir.overlay=1g" \
        -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
        -virtfs "local,path=$CHAN,mount_tag=chan,security_model=none,multidevs=remap" \
        -netdev "$netdev" -device virtio-net-pci,netdev=n0 \
        </dev/null >"$N2/qemu.log" 2>&1 8>&- &
    local qpid=$! i
    # setsid and env exec QEMU in turn: the PID is QEMU's once its executable shows.
    for ((i = 0; i < 50; i++)); do
        pid_is "$qpid" "$qemu" && break
        sleep 0.1
    done
    echo "$qpid $qemu" >"$N2/qemu.pid"
    say "QEMU started (pid $qpid, ${VM_MEM} MiB, $VM_SMP vCPUs); console $N2/console.log"
}

up() {
    [ "$(id -u)" = 0 ] || die "must run as root"
    local c
    for c in qemu-system-x86_64 socat openssl iptables ip cpio gzip bc; do
        command -v "$c" >/dev/null || die "missing $c"
    done
    [ -x /bin/busybox ] || die "missing /bin/busybox (busybox-static)"
    local kernel kver
    kernel=$(kernel_path)
    [ -n "$kernel" ] || die "no /boot/vmlinuz-*-amd64: apt-get install linux-image-amd64"
    kver=${kernel#/boot/vmlinuz-}
    [ -d "/lib/modules/$kver" ] || die "no /lib/modules/$kver"
    cluster_env
    local provisioner=$BIN/csi-provisioner pvdir=$TOP/target/release/pvdir
    [ -x "$BIN/kubelet" ] || die "no $BIN/kubelet (tests/k8s/build.sh)"
    [ -x "$provisioner" ] || die "no $provisioner (tests/k8s/build.sh)"
    [ -x "$pvdir" ] || die "no $pvdir: cargo build --release"
    "$pvdir" serve --help | grep -q -- --kubelet-registration-dir \
        || die "$pvdir is too old (no --kubelet-registration-dir): cargo build --release"
    local tar
    for tar in pause busybox; do
        [ -s "$STATE/base-images/$tar.tar" ] || die "no $STATE/base-images/$tar.tar (cluster.sh up builds it)"
    done
    [ -s "$PKI/ca.key" ] || die "no $PKI/ca.key"

    down || die "could not clean up an earlier run"
    trap up_failed EXIT
    trap 'exit 130' INT TERM
    local t0=$SECONDS
    mkdir -p "$N2" "$CHAN/logs" "$CHAN/cmd"
    rm -f "$CHAN/logs/"*.log "$CHAN/status" "$CHAN/poweroff" "$CHAN/cmd/"*
    # The guest mounts a tmpfs on /tmp, which hides a checkout there (CI clones into /tmp):
    # what it reads from the repository is copied beside its state first.
    mkdir -p "$N2/guest"
    cp "$HERE/node2/guest.sh" "$TOP/tests/vm/guest/nfs-server.sh" "$N2/guest/"
    # A copy, so that a cargo build meanwhile cannot change the binary under the guest.
    mkdir -p "$N2/bin"
    cp "$pvdir" "$N2/bin/pvdir.tmp"
    mv "$N2/bin/pvdir.tmp" "$N2/bin/pvdir"

    # pvdir as a user installs it: node-2's node plugin is the DaemonSet's pod (its images are
    # imported in the guest); the NFS controller runs in the guest (see node2/guest.sh).
    # deploy/ less the resizer sidecars, as the install scenario applies it (see
    # tests/k8s/offline/kustomization.yaml).
    "$HERE/cluster.sh" require-images "$TOP/tests/k8s/offline"
    kubectl apply -k "$TOP/tests/k8s/offline"
    make_credentials
    local initrd
    initrd=$(build_initrd "$kver")

    {
        echo "# node-2's settings, written by node2.sh up"
        # shellcheck disable=SC2034
        local NODE_BRIDGE=k8snode0 POD_BRIDGE=k8sloop0 POD_CIDR=10.244.1.0/24 POD_GW=10.244.1.1 \
            PAUSE_IMAGE=registry.k8s.io/pause:3.10 BUSYBOX_IMAGE=docker.io/library/busybox:offline \
            PAUSE_TAR=$STATE/base-images/pause.tar BUSYBOX_TAR=$STATE/base-images/busybox.tar \
            KUBELET_BIN=$BIN/kubelet PROVISIONER_BIN=$provisioner PVDIR_BIN=$N2/bin/pvdir \
            NFS_SERVER_LIB=$N2/guest/nfs-server.sh IMAGES_DIR=$STATE/images
        declare -p NODE_NAME NODE_IP GUEST_ETH_IP NFS_SHARE NODE_BRIDGE POD_BRIDGE POD_CIDR POD_GW \
            PAUSE_IMAGE BUSYBOX_IMAGE PAUSE_TAR BUSYBOX_TAR KUBELET_BIN PROVISIONER_BIN PVDIR_BIN \
            NFS_SERVER_LIB IMAGES_DIR APISERVER_GUEST_IP APISERVER_PORT
    } >"$CHAN/settings.sh"

    : >"$N2/host-changes"
    host_network_up

    # Software emulation: KVM is present on these machines but its guests hang (see
    # tests/vm/run.sh). tb-size=256 shrinks TCG's translation cache from 1 GiB, which is most of
    # QEMU's resident memory.
    local netdev="user,id=n0,restrict=on,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3"
    netdev+=",guestfwd=tcp:$APISERVER_GUEST_IP:$APISERVER_PORT-cmd:socat - TCP:127.0.0.1:$APISERVER_PORT"
    netdev+=",hostfwd=tcp:127.0.0.1:$KUBELET_FWD_PORT-$GUEST_ETH_IP:10250"
    start_qemu "$kernel" "$initrd" "$netdev"

    local deadline=$((SECONDS + UP_LIMIT)) ready=0 registered=0 boots=1 boot_t=$SECONDS
    while :; do
        show_marks
        # Under TCG one boot in a few dozen hangs in the firmware with no output (see
        # tests/vm/run.sh): such a boot is killed after 90 s and retried once.
        if [ "$boots" = 1 ] && [ ! -s "$CHAN/status" ] && [ $((SECONDS - boot_t)) -ge 90 ] && qemu_pid >/dev/null; then
            warn "no guest after 90s; killing this boot and trying once more"
            kill -KILL "$(qemu_pid)"
            sleep 1
            boots=2
            start_qemu "$kernel" "$initrd" "$netdev"
        fi
        if ! qemu_pid >/dev/null; then
            cat "$N2/qemu.log" >&2
            die "QEMU exited"
        fi
        if grep -q ' FAILED: ' "$CHAN/status" 2>/dev/null; then die "the guest failed (see above)"; fi
        if [ "$ready" = 0 ] && node_ready; then
            ready=1
            say "[+$(elapsed)s] node $NODE_NAME Ready"
        fi
        if [ "$registered" = 0 ] && grep -q 'plugins_registry/nfs.pvdir.io-reg.sock, err: .*PROTOCOL_ERROR' "$CHAN/logs/kubelet.log" 2>/dev/null; then
            grep -m1 'nfs.pvdir.io-reg.sock, err' "$CHAN/logs/kubelet.log" >&2
            die "kubelet cannot use pvdir's registration socket: kubelet v1.34 dials it with the socket path as the HTTP/2 :authority, which a plain tonic/h2 server resets (PROTOCOL_ERROR; fixed in pvdir by 8227695: is $N2/bin/pvdir older?)"
        fi
        if [ "$ready" = 1 ] && [ "$registered" = 0 ] && csinode_has_driver; then
            registered=1
            say "[+$(elapsed)s] CSINode $NODE_NAME lists $DRIVER"
        fi
        [ "$ready" = 1 ] && [ "$registered" = 1 ] && grep -q ' csi started' "$CHAN/status" 2>/dev/null && break
        [ "$SECONDS" -lt "$deadline" ] || die "node-2 not Ready with $DRIVER registered after ${UP_LIMIT}s"
        sleep 0.5
    done
    show_marks
    park_pods_controller
    local t=$SECONDS
    until grep -q "successfully acquired lease pvdir/$LEASE" "$CHAN/logs/csi-provisioner.log" 2>/dev/null; do
        [ $((SECONDS - t)) -lt 90 ] || die "node-2's csi-provisioner did not get the lease pvdir/$LEASE in 90s (holder: $(lease_holder))"
        sleep 1
    done
    lease_holder >"$N2/lease-holder"
    say "[+$(elapsed)s] node-2's csi-provisioner holds the lease pvdir/$LEASE ($(cat "$N2/lease-holder"))"
    kubectl get node -o wide
    kubectl get csinode "$NODE_NAME" -o 'jsonpath={range .spec.drivers[*]}{.name} nodeID={.nodeID}{"\n"}{end}'
    trap - EXIT INT TERM
    say "up in $((SECONDS - t0))s (node-2 Ready and $DRIVER registered $(elapsed)s after QEMU started)"
    say "QEMU RSS: $(awk '/^VmRSS/ { print $2 / 1024 " MiB" }' "/proc/$(qemu_pid)/status")"
}
elapsed() { echo "$(date +%s.%N) - $(cat "$N2/started")" | bc | xargs printf '%.1f'; }

down() {
    local pid did=0 kids=() k
    if pid=$(qemu_pid); then
        did=1
        mapfile -t kids < <(children_of "$pid")
        # The guest stops kubelet and the CSI processes, then powers off.
        # (Only a guest that got as far as its command loop looks for the request.)
        local i n=200
        grep -q ' ready for commands' "$CHAN/status" 2>/dev/null || n=0
        : >"$CHAN/poweroff" 2>/dev/null || true
        for ((i = 0; i < n; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            [ "$n" = 0 ] || warn "down: the guest did not power off in 20s: stopping QEMU"
            kill -TERM "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
        fi
        say "down: QEMU (pid $pid) stopped"
        # socat helpers of the apiserver forward, one per guest connection: they exit on their
        # own when QEMU closes their stdin; any left is ended here by PID.
        for k in "${kids[@]}"; do
            if pid_is "$k" "$(readlink -f "$(command -v socat)")"; then
                kill -TERM "$k" 2>/dev/null && say "down: stopped socat (pid $k)"
            fi
        done
    fi
    rm -f "$N2/qemu.pid" "$CHAN/poweroff"
    host_network_down
    # The Node object of a powered-off node-2 would stay NotReady forever.
    if [ -s "$STATE/env" ]; then
        (
            # shellcheck disable=SC1091
            . "$STATE/env"
            # A powered-off provisioner does not give its lease back: the next one (node-2's or
            # the pods-mode controller's) would wait for it to expire.
            if [ -s "$N2/lease-holder" ] && [ "$(timeout 10 kubectl -n pvdir get lease "$LEASE" -o 'jsonpath={.spec.holderIdentity}' 2>/dev/null)" = "$(cat "$N2/lease-holder")" ]; then
                timeout 20 kubectl -n pvdir delete lease "$LEASE" >/dev/null && echo "node2: down: released the lease pvdir/$LEASE"
            fi
            rm -f "$N2/lease-holder"
            unpark_pods_controller
            if timeout 10 kubectl get node "$NODE_NAME" >/dev/null 2>&1; then
                timeout 20 kubectl delete node "$NODE_NAME" --wait=false && echo "node2: down: deleted Node $NODE_NAME"
            fi
        ) || true
    fi
    rm -rf "$CHAN/pki" "$CHAN/cmd"
    [ "$did" = 1 ] || say "down: no guest was running"
}

status() {
    if pid=$(qemu_pid); then
        say "QEMU running (pid $pid, RSS $(awk '/^VmRSS/ { print $2 / 1024 " MiB" }' "/proc/$pid/status"))"
        cat "$CHAN/status"
    else
        say "not running"
        return 1
    fi
}

# One node-2 per machine: runs of up, down and scenario take turns.
take_lock() {
    # Nothing to take turns on (and nothing to create) for a down with no state at all.
    if [ "$1" = down ] && [ ! -d "$N2" ]; then return 0; fi
    mkdir -p "$N2"
    exec 8>>"$N2/lock"
    if ! flock -n 8; then
        say "waiting for another node2.sh working on $N2 (up to 600s)"
        flock -w 600 8 || die "another node2.sh still holds $N2/lock after 600s"
    fi
}

case "${1:-}" in
up | down | scenario) take_lock "$1" ;;
esac
case "${1:-}" in
up) up ;;
down) down ;;
scenario)
    # shellcheck source=node2/scenario.sh
    . "$HERE/node2/scenario.sh"
    scenario
    ;;
guest)
    shift
    [ "$#" -ge 1 ] || die "usage: node2.sh guest COMMAND"
    guest "$*"
    ;;
status) status ;;
*)
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
