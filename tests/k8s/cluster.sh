#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, offline, for the cluster test tier.
#
#   tests/k8s/cluster.sh up                    start everything (after cleaning up any earlier run)
#   tests/k8s/cluster.sh down                  stop everything, put the host back as it was
#   tests/k8s/cluster.sh import FILE.tar...    import OCI image archives into containerd
#   tests/k8s/cluster.sh require-images DIR    fail unless every image of `kubectl kustomize DIR`
#                                              is already in containerd (nothing is ever pulled)
#   tests/k8s/cluster.sh status                which components run
#
# State, logs ($STATE/logs/COMPONENT.log) and the sourceable $STATE/env are in
# STATE=${PVDIR_K8S_STATE:-/var/tmp/pvdir-k8s}. Image archives found in $STATE/images/*.tar are
# imported by up; they must name their images in full (see import_archive in lib/images.sh).
#
# The cluster: etcd, kube-apiserver on 127.0.0.1:6443 (advertised as 10.250.0.1), controller
# manager and scheduler, containerd with its own config and directories under $STATE, kubelet as
# node-1 with node IP 10.250.0.1. The binaries come from tests/k8s/build.sh's cache (or
# PVDIR_K8S_BIN). No packet leaves the machine: pods and the node IP sit on bridges without a
# way out, ip_forward stays 0, and containerd's pulls go to a dead proxy.
# Needs root and: containerd runc etcd-server containernetworking-plugins umoci busybox-static
# gcc iptables conntrack openssl curl iproute2 (see tests/setup.sh).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"
# shellcheck source=lib/pki.sh
. "$HERE/lib/pki.sh"
# shellcheck source=lib/images.sh
. "$HERE/lib/images.sh"
# shellcheck source=lib/teardown.sh
. "$HERE/lib/teardown.sh"

k8s_bin() {
    if [ -n "${PVDIR_K8S_BIN:-}" ]; then
        echo "$PVDIR_K8S_BIN"
    elif [ -s "$STATE/env" ] && grep -q '^export PVDIR_K8S_BIN=' "$STATE/env"; then
        sed -n "s/^export PVDIR_K8S_BIN='\(.*\)'$/\1/p" "$STATE/env"
    else
        "$HERE/build.sh" | tail -n 1
    fi
}

preflight() {
    [ "$(id -u)" = 0 ] || die "must run as root"
    local missing=() c
    for c in etcd containerd containerd-shim-runc-v2 runc ctr umoci gcc iptables iptables-save \
        iptables-restore conntrack openssl curl ip setsid ss sysctl; do
        command -v "$c" >/dev/null || missing+=("$c")
    done
    for c in bridge host-local loopback; do [ -x "/usr/lib/cni/$c" ] || missing+=("/usr/lib/cni/$c"); done
    [ -x /bin/busybox ] || missing+=(/bin/busybox)
    [ "${#missing[@]}" -eq 0 ] || die "missing: ${missing[*]} (apt-get install containerd runc etcd-server containernetworking-plugins umoci busybox-static gcc libc6-dev iptables conntrack openssl curl iproute2)"
    # Unix socket paths are limited to 108 bytes; containerd adds ".ttrpc".
    [ "${#CTRD_SOCK}" -le 96 ] || die "state directory path too long for containerd's socket: $STATE"
}

# Taken before anything is changed, so down knows what to undo and what to leave alone.
record_host_state() {
    local p k tool
    : >"$CREATED_LIST"
    for p in "${HOST_PATHS[@]}"; do [ -e "$p" ] || echo "own $p" >>"$CREATED_LIST"; done
    for p in "${SHARED_HOST_PATHS[@]}"; do [ -e "$p" ] || echo "shared $p" >>"$CREATED_LIST"; done
    : >"$SYSCTL_SAVED.tmp"
    for k in "${SAVED_SYSCTLS[@]}"; do echo "$k=$(sysctl -n "$k")" >>"$SYSCTL_SAVED.tmp"; done
    mv "$SYSCTL_SAVED.tmp" "$SYSCTL_SAVED"
    : >"$IPTABLES_BEFORE.tmp"
    for tool in iptables ip6tables; do
        command -v "$tool-save" >/dev/null || continue
        "$tool-save" 2>/dev/null | sed -n "s/^:\(KUBE-[^ ]*\).*/$tool \1/p" >>"$IPTABLES_BEFORE.tmp"
    done
    # A file that is present (even empty) means "KUBE-* chains beyond these are kubelet's".
    echo "# KUBE-* chains present before up" >>"$IPTABLES_BEFORE.tmp"
    mv "$IPTABLES_BEFORE.tmp" "$IPTABLES_BEFORE"
}

check_ports_free() {
    local p users
    for p in "${PORTS[@]}"; do
        users=$(ss -Hltnp "sport = :$p" 2>/dev/null)
        [ -z "$users" ] || die "port $p is taken: $users"
    done
}

setup_host() {
    local d
    mkdir -p "$KUBELET_DIR" "$PVDIR_DIR"
    # This machine's / is a private mount, which breaks Bidirectional and HostToContainer mount
    # propagation (pvdir's node plugin publishes volumes from inside its container). A shared
    # self-bind gives both trees a peer group of their own without changing /.
    for d in "$KUBELET_DIR" "$PVDIR_DIR"; do
        mount --bind "$d" "$d"
        mount --make-rshared "$d"
    done

    ip link add "$NODE_BRIDGE" type bridge
    ip addr add "$NODE_IP/32" dev "$NODE_BRIDGE"
    ip link set "$NODE_BRIDGE" up
    # The Service range is routed to the port-less bridge, so that a Service address without a
    # DNAT below is dropped here instead of following the default route off the machine.
    ip route add "$SERVICE_CIDR" dev "$NODE_BRIDGE" src "$NODE_IP"

    # Pods' bridge, made here so that its host address exists before the first pod: the CNI
    # config says isGateway=false (with it the bridge plugin would turn on ip_forward), so the
    # plugin never assigns one itself.
    ip link add "$POD_BRIDGE" type bridge
    ip addr add "$POD_GW/${POD_CIDR#*/}" dev "$POD_BRIDGE"
    ip link set "$POD_BRIDGE" up
    # There is no kube-proxy. The `kubernetes` Service is DNATed to the apiserver on loopback,
    # which the kernel only accepts from the pod bridge with route_localnet on it (and on no
    # other interface).
    sysctl -qw "net.ipv4.conf.$POD_BRIDGE.route_localnet=1"
    iptables -t nat -N "$NAT_CHAIN"
    iptables -t nat -A "$NAT_CHAIN" -d "$KUBERNETES_SVC_IP/32" -p tcp --dport 443 \
        -j DNAT --to-destination "127.0.0.1:$APISERVER_PORT"
    iptables -t nat -A OUTPUT -d "$SERVICE_CIDR" -j "$NAT_CHAIN"
    iptables -t nat -A PREROUTING -i "$POD_BRIDGE" -d "$SERVICE_CIDR" -j "$NAT_CHAIN"
}

start_etcd() {
    mkdir -p "$ETCD_DIR"
    chmod 700 "$ETCD_DIR"
    start_proc etcd etcd --name pvdir-k8s --data-dir "$ETCD_DIR" \
        --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster pvdir-k8s=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
        --quota-backend-bytes 2147483648
}

start_apiserver() {
    start_proc kube-apiserver "$BIN/kube-apiserver" \
        --etcd-servers=http://127.0.0.1:2379 \
        --bind-address=127.0.0.1 --secure-port="$APISERVER_PORT" --advertise-address="$NODE_IP" \
        --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
        --client-ca-file="$PKI/ca.crt" \
        --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
        --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
        --kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=InternalIP \
        --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
        --allow-privileged=true \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
        --service-cluster-ip-range="$SERVICE_CIDR" --profiling=false
}

start_controllers() {
    start_proc kube-controller-manager "$BIN/kube-controller-manager" \
        --kubeconfig="$PKI/controller-manager.kubeconfig" \
        --authentication-kubeconfig="$PKI/controller-manager.kubeconfig" \
        --authorization-kubeconfig="$PKI/controller-manager.kubeconfig" \
        --bind-address=127.0.0.1 --leader-elect=false --cluster-name=pvdir-k8s \
        --root-ca-file="$PKI/ca.crt" --service-account-private-key-file="$PKI/sa.key" \
        --use-service-account-credentials=true \
        --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
        --service-cluster-ip-range="$SERVICE_CIDR" --profiling=false
    start_proc kube-scheduler "$BIN/kube-scheduler" \
        --kubeconfig="$PKI/scheduler.kubeconfig" \
        --authentication-kubeconfig="$PKI/scheduler.kubeconfig" \
        --authorization-kubeconfig="$PKI/scheduler.kubeconfig" \
        --bind-address=127.0.0.1 --leader-elect=false --profiling=false
}

start_containerd() {
    mkdir -p "$CTRD_DIR" "$CNI_DIR/net.d" "$CNI_DIR/ipam"
    cat >"$CNI_DIR/net.d/10-$POD_BRIDGE.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$POD_BRIDGE",
      "isGateway": false,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CNI_DIR/ipam",
        "ranges": [[{ "subnet": "$POD_CIDR", "gateway": "$POD_GW" }]],
        "routes": [{ "dst": "$SERVICE_CIDR", "gw": "$POD_GW" }]
      }
    }
  ]
}
EOF
    # restrict_oom_score_adj: this machine's root lacks CAP_SYS_RESOURCE, so runc cannot give a
    # sandbox the oom_score_adj of -998 that kubelet asks for ("nsexec: failed to update
    # /proc/self/oom_score_adj"); with it, containerd clamps the value to its own.
    # runc's Root: the default /run/containerd/runc would be shared with any other containerd.
    cat >"$STATE/containerd.toml" <<EOF
version = 2
root = "$CTRD_DIR/root"
state = "$CTRD_DIR/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$CTRD_SOCK"

[ttrpc]
  address = "$CTRD_SOCK.ttrpc"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$CTRD_DIR/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$RUNC_ROOT"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CNI_DIR/net.d"
    max_conf_num = 1
EOF
    # The pull guard: any pull goes to a proxy on a port where nothing listens and fails at once
    # ("proxyconnect tcp: dial tcp 127.0.0.1:9"), before any name is even looked up.
    START_ENV=(HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY=)
    start_proc containerd containerd --config "$STATE/containerd.toml"
}

import_images() {
    build_base_images
    import_archive "$BASE_IMAGES_DIR/pause.tar" "${PAUSE_IMAGE%:*}" >/dev/null
    import_archive "$BASE_IMAGES_DIR/busybox.tar" "${BUSYBOX_IMAGE%:*}" >/dev/null
    local f names
    for f in "$IMAGES_DIR"/*.tar; do
        [ -e "$f" ] || continue
        names=$(import_archive "$f")
        say "imported $(tr '\n' ' ' <<<"$names")from ${f##*/}"
    done
    local ref
    for ref in "$PAUSE_IMAGE" "$BUSYBOX_IMAGE"; do image_present "$ref" || die "$ref missing after import"; done
}

start_kubelet() {
    # oomScoreAdj 0: see restrict_oom_score_adj above. resolvConf "": there is no cluster DNS,
    # and the host's resolver must not be handed to pods (a lookup would leave the machine).
    # Image garbage collection is off: an image removed here could never come back.
    cat >"$STATE/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: Webhook
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
rotateCertificates: false
serverTLSBootstrap: false
containerRuntimeEndpoint: unix://$CTRD_SOCK
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
resolvConf: ""
clusterDomain: cluster.local
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
  imagefs.inodesFree: 1%
EOF
    start_proc kubelet "$BIN/kubelet" --config="$STATE/kubelet-config.yaml" \
        --kubeconfig="$PKI/kubelet.kubeconfig" --root-dir="$KUBELET_DIR" \
        --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=2
}

write_env() {
    cat >"$STATE/env" <<EOF
# Source this to use the cluster: . $STATE/env
export STATE='$STATE'
export PVDIR_K8S_BIN='$BIN'
export KUBECONFIG='$PKI/admin.kubeconfig'
case ":\$PATH:" in *":$BIN:"*) ;; *) export PATH='$BIN':"\$PATH" ;; esac
export CONTAINERD_ADDRESS='$CTRD_SOCK'
export CONTAINERD_NAMESPACE=k8s.io
export K8S_NODE_NAME='$NODE_NAME'
export K8S_NODE_IP='$NODE_IP'
EOF
}

node_ready() {
    [ "$(kubectl get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

up() {
    preflight
    BIN=$(k8s_bin)
    local b
    for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl; do
        [ -x "$BIN/$b" ] || die "no $BIN/$b (tests/k8s/build.sh builds it)"
    done
    export PATH="$BIN:$PATH"
    export KUBECONFIG="$PKI/admin.kubeconfig"

    local t0=$SECONDS
    mkdir -p "$STATE"
    # An earlier run may have been killed half-way: clean up after it first.
    down || die "could not clean up an earlier run (see above)"
    trap up_failed EXIT
    trap 'exit 130' INT TERM
    check_ports_free
    mkdir -p "$LOGS" "$PIDS" "$IMAGES_DIR"
    rm -rf "$LOGS.prev"
    mv "$LOGS" "$LOGS.prev"
    mkdir -p "$LOGS"
    record_host_state
    local t=$SECONDS
    setup_host
    pki_make
    say "host set up and PKI made ($((SECONDS - t))s)"

    t=$SECONDS
    start_etcd
    start_containerd
    wait_for 30 "etcd" "$LOGS/etcd.log" etcd curl -fsS http://127.0.0.1:2379/health
    start_apiserver
    # containerd and the images while the apiserver starts.
    wait_for 30 "containerd" "$LOGS/containerd.log" containerd ctr_k8s version
    import_images
    say "containerd up, images imported ($((SECONDS - t))s)"
    wait_for 90 "kube-apiserver readyz" "$LOGS/kube-apiserver.log" kube-apiserver \
        curl -fsS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
        "https://127.0.0.1:$APISERVER_PORT/readyz"
    say "kube-apiserver ready ($((SECONDS - t))s)"
    start_controllers
    start_kubelet
    wait_for 60 "kube-controller-manager healthz" "$LOGS/kube-controller-manager.log" kube-controller-manager \
        curl -fsSk https://127.0.0.1:10257/healthz
    wait_for 60 "kube-scheduler healthz" "$LOGS/kube-scheduler.log" kube-scheduler \
        curl -fsSk https://127.0.0.1:10259/healthz
    wait_for 60 "kubelet healthz" "$LOGS/kubelet.log" kubelet curl -fsS http://127.0.0.1:10248/healthz
    wait_for 60 "node $NODE_NAME Ready" "$LOGS/kubelet.log" kubelet node_ready
    wait_for 60 "default ServiceAccount" "$LOGS/kube-controller-manager.log" kube-controller-manager \
        kubectl -n default get serviceaccount default
    say "node $NODE_NAME Ready, default ServiceAccount there ($((SECONDS - t))s)"

    local saved
    saved=$(sed -n 's/^net.ipv4.ip_forward=//p' "$SYSCTL_SAVED")
    [ "$(sysctl -n net.ipv4.ip_forward)" = "$saved" ] || die "net.ipv4.ip_forward changed to $(sysctl -n net.ipv4.ip_forward)"
    write_env
    trap - EXIT INT TERM
    say "up in $((SECONDS - t0))s. Use it with:"
    echo "    . $STATE/env && kubectl get nodes"
    echo "    logs: $LOGS/    stop: $HERE/cluster.sh down"
}

up_failed() {
    local rc=$?
    trap - EXIT INT TERM
    [ "$rc" -ne 0 ] || return 0
    echo "cluster: up failed (exit $rc); tearing down. Logs stay in $LOGS" >&2
    if [ "${PVDIR_K8S_KEEP_ON_FAILURE:-0}" = 1 ]; then
        echo "cluster: PVDIR_K8S_KEEP_ON_FAILURE=1: left running; run down yourself" >&2
    else
        down || true
    fi
    exit "$rc"
}

need_containerd() {
    proc_alive containerd || die "the cluster is not up (no containerd of $STATE): run $HERE/cluster.sh up"
}

cmd_import() {
    [ "$#" -gt 0 ] || die "usage: cluster.sh import FILE.tar..."
    need_containerd
    local f names
    for f in "$@"; do
        names=$(import_archive "$f")
        say "imported $(tr '\n' ' ' <<<"$names")from $f"
    done
}

cmd_require_images() {
    [ "$#" -eq 1 ] && [ -d "$1" ] || die "usage: cluster.sh require-images DIR (a kustomization)"
    need_containerd
    BIN=$(k8s_bin)
    local rendered images missing=() ref
    rendered=$("$BIN/kubectl" kustomize "$1") || die "kubectl kustomize $1 failed"
    images=$(sed -n 's/^[[:space:]]*\(-[[:space:]]*\)\{0,1\}image:[[:space:]]*//p' <<<"$rendered" \
        | sed 's/[[:space:]]*$//; s/^["'\'']//; s/["'\'']$//' | sort -u)
    [ -n "$images" ] || die "no image: in $1"
    for ref in $images; do
        image_present "$ref" || missing+=("$ref")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "cluster: ERROR: images named in $1 but not in containerd (k8s.io), and never pulled:" >&2
        printf '    %s\n' "${missing[@]}" >&2
        exit 1
    fi
    say "all $(wc -w <<<"$images") images of $1 are present: $(tr '\n' ' ' <<<"$images")"
}

cmd_status() {
    local name rc=0
    for name in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet; do
        if proc_alive "$name"; then
            echo "$name: running (pid $(cut -d' ' -f1 "$PIDS/$name.pid"))"
        else
            echo "$name: not running"
            rc=1
        fi
    done
    return "$rc"
}

# The cluster is one per machine (bridges, ports, /var/lib/kubelet), so runs of this script take
# turns: two at once would tear each other's half-built cluster down.
take_lock() {
    mkdir -p "$STATE"
    exec 9>>"$STATE/lock"
    if ! flock -n 9; then
        say "waiting for another cluster.sh working on $STATE (up to 600s)"
        flock -w 600 9 || die "another cluster.sh still holds $STATE/lock after 600s"
    fi
}

case "${1:-}" in
up | down | import) take_lock ;;
esac
case "${1:-}" in
up) up ;;
down) down ;;
import)
    shift
    cmd_import "$@"
    ;;
require-images)
    shift
    cmd_require_images "$@"
    ;;
status) cmd_status ;;
*)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
