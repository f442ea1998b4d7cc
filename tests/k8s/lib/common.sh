# Settings and helpers shared by cluster.sh and its libraries. Sourced, never run.
# shellcheck shell=bash

# The state directory is matched literally against process command lines and mount points, so
# it must be absolute and free of symlinks.
STATE=$(realpath -m "${PVDIR_K8S_STATE:-/var/tmp/pvdir-k8s}")

NODE_NAME=node-1
NODE_IP=10.250.0.1
# kubelet refuses a loopback node IP and this kernel has no dummy links: the node IP lives on a
# bridge without ports, so packets to it are delivered locally and never leave.
NODE_BRIDGE=k8snode0
POD_BRIDGE=k8sloop0
POD_CIDR=10.244.0.0/24
POD_GW=10.244.0.1
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SVC_IP=10.96.0.1
APISERVER_PORT=6443
NAT_CHAIN=K8S-LOOP
KUBELET_DIR=/var/lib/kubelet
PVDIR_DIR=/var/lib/pvdir
PAUSE_IMAGE=registry.k8s.io/pause:3.10
BUSYBOX_IMAGE=docker.io/library/busybox:offline

LOGS=$STATE/logs
PIDS=$STATE/pids
PKI=$STATE/pki
ETCD_DIR=$STATE/etcd
CTRD_DIR=$STATE/containerd
CTRD_SOCK=$CTRD_DIR/containerd.sock
RUNC_ROOT=$CTRD_DIR/runc
CNI_DIR=$STATE/cni
IMAGES_DIR=$STATE/images
BASE_IMAGES_DIR=$STATE/base-images
SYSCTL_SAVED=$STATE/sysctl.saved
CREATED_LIST=$STATE/created-paths
IPTABLES_BEFORE=$STATE/iptables-chains.before

# kubelet rewrites these at start (its "kernel tunables"); up saves them and down puts them back.
# ip_forward is not touched by anything here, but is saved too so down can prove it.
SAVED_SYSCTLS=(kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom
    kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward)

# Host paths that the cluster's programs create when missing. up records the ones that did not
# exist, and down removes exactly those, so the host is left as it was: the cluster's own
# directories with their contents, the shared ones (any other containerd on the machine may put
# shim sockets or network namespaces there meanwhile) only once they are empty.
HOST_PATHS=("$KUBELET_DIR" "$PVDIR_DIR" /var/log/pods /var/log/containers)
SHARED_HOST_PATHS=(/var/lib/cni /run/netns /run/containerd /etc/cni /opt/cni)
# CNI's result cache is keyed by network name: this is how down finds ours in /var/lib/cni.
CNI_NETWORK=pvdir-k8s

# Ports the cluster listens on (all on loopback or the port-less node IP).
PORTS=(2379 2380 2381 "$APISERVER_PORT" 10248 10250 10257 10259)

say() { echo "cluster: $*"; }
warn() { echo "cluster: WARNING: $*" >&2; }
die() {
    echo "cluster: ERROR: $*" >&2
    exit 1
}

# die, with the end of the log that explains it.
die_with_log() {
    local msg=$1 log=$2
    echo "cluster: ERROR: $msg" >&2
    if [ -s "$log" ]; then
        echo "---- last 40 lines of $log" >&2
        tail -n 40 "$log" >&2
        echo "----" >&2
    fi
    exit 1
}

ctr_k8s() { timeout 60 ctr --address "$CTRD_SOCK" --namespace k8s.io "$@"; }

# shellcheck source=proc.sh
. "$(dirname "${BASH_SOURCE[0]}")/proc.sh"

proc_alive() {
    local pid exe
    [ -s "$PIDS/$1.pid" ] || return 1
    read -r pid exe <"$PIDS/$1.pid"
    pid_is "$pid" "$exe"
}

# start_proc NAME BINARY ARGS...: runs in its own session (a Ctrl-C on the caller's terminal must
# not kill half the cluster), logs to $LOGS/NAME.log, PID recorded for down. Inherited proxy
# settings are dropped: the apiserver would send its kubelet connections through them. Extra
# environment comes from the array START_ENV.
START_ENV=()
start_proc() {
    local name=$1 exe
    shift
    exe=$(readlink -f "$(command -v "$1")") || die "$1 not found"
    # fd 9 is cluster.sh's lock: a daemon inheriting it would hold the lock for its lifetime.
    setsid env -u HTTP_PROXY -u HTTPS_PROXY -u http_proxy -u https_proxy -u NO_PROXY -u no_proxy \
        -u ALL_PROXY -u all_proxy "${START_ENV[@]}" "$@" </dev/null >>"$LOGS/$name.log" 2>&1 9>&- &
    echo "$! $exe" >"$PIDS/$name.pid"
    START_ENV=()
}

# wait_for SECONDS WHAT LOG NAME CMD...: polls CMD until it succeeds. Fails at once if the
# process started as NAME has died, or after SECONDS, with the end of LOG either way.
wait_for() {
    local limit=$1 what=$2 log=$3 name=$4
    shift 4
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if [ -n "$name" ] && ! proc_alive "$name"; then
            die_with_log "$what: $name exited" "$log"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            die_with_log "$what: not after ${limit}s" "$log"
        fi
        sleep 0.5
    done
}
