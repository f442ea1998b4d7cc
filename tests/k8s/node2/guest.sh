#!/bin/bash
# node-2's PID 1 after switch_root (see node2/init and node2.sh). Runs on the host's own root
# (9p, read-only, under a tmpfs overlay), so kubelet, containerd, runc, nfs-utils and pvdir are
# the very binaries of the host. It sets up the guest, starts kernel nfsd, containerd, kubelet,
# pvdir's NFS node plugin, pvdir's NFS controller and csi-provisioner, then serves the command
# channel until told to power off.
#
# The settings come from $CHAN/settings.sh (a `declare -p` header written by node2.sh), where
# CHAN is the read-write 9p share named on the kernel command line. Everything the host needs
# to see goes there: status marks ($CHAN/status), logs ($CHAN/logs/), command results.
#
# PID 1 must never exit (the kernel would panic): every failure path ends in a power-off.
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CHAN=$(sed -n 's/.*pvdir\.chan=\([^ ]*\).*/\1/p' /proc/cmdline)
# shellcheck disable=SC1091
. "$CHAN/settings.sh"
LOGS=$CHAN/logs
RUN=/run/node2

console() { echo "NODE2: $*" >/dev/console 2>/dev/null || true; }
mark() {
    echo "$(date +%s.%N) $*" >>"$CHAN/status"
    console "$*"
}
power_off() {
    mark "power off"
    sync
    echo o >/proc/sysrq-trigger
    sleep 30
}
fail() {
    mark "FAILED: $*"
    power_off
}

# start NAME CMD...: a daemon in its own session, logging to $LOGS/NAME.log.
start() {
    local name=$1
    shift
    setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 &
    echo $! >"$RUN/$name.pid"
}
alive() { [ -s "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

# wait_until SECONDS WHAT NAME CMD...: polls CMD; fails if daemon NAME died or time is up.
wait_until() {
    local limit=$1 what=$2 name=$3
    shift 3
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if [ -n "$name" ] && ! alive "$name"; then fail "$what: $name exited (see $LOGS/$name.log)"; fi
        [ "$SECONDS" -lt "$deadline" ] || fail "$what: not after ${limit}s"
        sleep 0.2
    done
}

# ---- filesystems
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p "$RUN" "$LOGS"
mark "guest script started (kernel $(uname -r))"
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup || fail "cannot mount cgroup2"
# Mount propagation for kubelet and the node plugin (Bidirectional, HostToContainer).
mount --make-rshared /
# containerd's overlayfs snapshotter cannot keep its upper directories on the overlay root;
# the tmpfs mounts also hide node-1's state, which the guest would otherwise see through the
# host's root.
for d in /var/lib/containerd /var/lib/kubelet /var/lib/pvdir /var/lib/cni /var/log/pods \
    /var/log/containers /etc/cni/net.d /etc/containerd; do
    mkdir -p "$d"
    mount -t tmpfs -o mode=755 tmpfs "$d"
done
hostname "$NODE_NAME"
echo "$NODE_NAME" >/etc/hostname
printf '127.0.0.1 localhost\n%s %s\n' "$NODE_IP" "$NODE_NAME" >/etc/hosts
# Nothing in the guest may resolve names through the host's resolver.
: >/etc/resolv.conf

# ---- network: eth0 on slirp's restricted network with no default route; the node IP on a
# port-less bridge (kubelet refuses a loopback node IP).
for m in virtio_net bridge veth br_netfilter; do modprobe "$m" || fail "modprobe $m"; done
ip link set lo up
ip link set eth0 up || fail "no eth0"
ip addr add "$GUEST_ETH_IP/24" dev eth0
ip link add "$NODE_BRIDGE" type bridge
ip addr add "$NODE_IP/32" dev "$NODE_BRIDGE"
ip link set "$NODE_BRIDGE" up
ip link add "$POD_BRIDGE" type bridge
ip addr add "$POD_GW/${POD_CIDR#*/}" dev "$POD_BRIDGE"
ip link set "$POD_BRIDGE" up
sysctl -qw net.ipv4.ip_forward=0
# The pods of deploy/'s DaemonSet (host network) reach the apiserver as every in-cluster client
# does, at the `kubernetes` Service (10.96.0.1:443); with no kube-proxy, that address is
# translated to the apiserver's forward, like node-1's K8S-LOOP chain does. The Service range
# is routed to the port-less bridge, so it can never take another way.
for m in nf_tables nft_compat nft_chain_nat nf_nat xt_nat; do modprobe "$m" || fail "modprobe $m"; done
ip route add 10.96.0.0/16 dev "$NODE_BRIDGE" src "$NODE_IP"
iptables -t nat -N K8S-LOOP
iptables -t nat -A K8S-LOOP -d 10.96.0.1/32 -p tcp --dport 443 \
    -j DNAT --to-destination "$APISERVER_GUEST_IP:$APISERVER_PORT"
iptables -t nat -A OUTPUT -d 10.96.0.0/16 -j K8S-LOOP
mark "network up: $(ip -o -4 addr show | awk '{ print $2 "=" $4 }' | tr '\n' ' ')routes: $(ip route | tr '\n' ';')"

# ---- kernel NFS server: tests/vm/guest/nfs-server.sh, as in the VM tier.
# shellcheck disable=SC1090
. "$NFS_SERVER_LIB"
nfs_server_start >>"$LOGS/nfsd.log" 2>&1 || fail "nfsd did not start (see $LOGS/nfsd.log)"
mkdir -p "/srv/export${NFS_SHARE}"
mark "nfsd ready: $(exportfs -v | tr -s ' \t\n' ' ')"

# ---- containerd: the host cluster's settings, minus restrict_oom_score_adj (guest root has
# every capability). Pulls go to a dead proxy (and the guest has no route out anyway).
cat >/etc/containerd/config.toml <<EOF
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "/run/containerd/containerd.sock"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
EOF
cat >/etc/cni/net.d/10-$POD_BRIDGE.conflist <<EOF
{
  "cniVersion": "0.4.0",
  "name": "pvdir-k8s-node2",
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
        "ranges": [[{ "subnet": "$POD_CIDR", "gateway": "$POD_GW" }]]
      }
    }
  ]
}
EOF
start containerd env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
    containerd --config /etc/containerd/config.toml
# ctr_k8s_within SECS ARGS...: ctr in the k8s.io namespace, killed if not done in SECS.
ctr_k8s_within() {
    local limit=$1
    shift
    timeout -k 10 "$limit" ctr --address /run/containerd/containerd.sock --namespace k8s.io "$@"
}
ctr_k8s() { ctr_k8s_within 60 "$@"; }
wait_until 60 "containerd" containerd ctr_k8s version
mark "containerd ready"
# What pods on this node run: the sandbox, the workloads' busybox, and deploy/'s images (the
# node plugin runs here as the DaemonSet's pod). Nothing is ever pulled.
# import_image TAR [CTR-ARGS...]: one archive into the k8s.io namespace, bounded by
# IMPORT_LIMIT rather than ctr_k8s's 60 s. pvdir's image is a 60 MB gzip layer that unpacks to
# 175 MB (nfs-common depends on python3), and under TCG, on one vCPU beside the busy host, a CI
# run saw containerd take 18 s to ingest it and still be unpacking it when the 60 s bound
# killed ctr. The time each import took is marked, so a slow one shows in CI's output before
# it reaches the bound.
IMPORT_LIMIT=300
import_image() {
    local tar=$1 t0=$SECONDS rc
    shift
    ctr_k8s_within "$IMPORT_LIMIT" images import "$@" "$tar" >>"$LOGS/images.log" 2>&1
    rc=$?
    case $rc in
        0) mark "imported ${tar##*/} in $((SECONDS - t0))s" ;;
        124 | 137) fail "import of $tar: not done after ${IMPORT_LIMIT}s" ;;
        *) fail "import of $tar: ctr exited with $rc (see $LOGS/images.log)" ;;
    esac
}
import_image "$PAUSE_TAR" --base-name "${PAUSE_IMAGE%:*}"
import_image "$BUSYBOX_TAR" --base-name "${BUSYBOX_IMAGE%:*}"
for tar in "$IMAGES_DIR"/*.tar; do
    # The snapshot-controller is pinned to node-1 (scenarios/snapshots.sh).
    [ "${tar##*/}" != snapshot-controller.tar ] || continue
    import_image "$tar"
done
mark "images imported: $(ctr_k8s images ls -q | grep -v '^sha256:' | tr '\n' ' ')"

# ---- kubelet
cat >"$RUN/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 0.0.0.0
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
    clientCAFile: $CHAN/pki/ca.crt
authorization:
  mode: Webhook
tlsCertFile: $CHAN/pki/kubelet-serving.crt
tlsPrivateKeyFile: $CHAN/pki/kubelet-serving.key
rotateCertificates: false
serverTLSBootstrap: false
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
cgroupDriver: cgroupfs
failSwapOn: false
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
start kubelet "$KUBELET_BIN" --config="$RUN/kubelet-config.yaml" \
    --kubeconfig="$CHAN/pki/kubelet.kubeconfig" --root-dir=/var/lib/kubelet \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=2
wait_until 120 "kubelet healthz" kubelet curl -fsS http://127.0.0.1:10248/healthz
mark "kubelet healthz ok"

# ---- pvdir's NFS controller and its csi-provisioner, as host processes of the guest: the
# controller mounts the export to make and remove volume directories, and the host kernel has
# no NFS client, so deploy/'s controller StatefulSet cannot run on node-1 (node2.sh parks it).
# As a pod here it would mount from the pod network, which on this test node has no route to
# the NFS server. What is exercised is the same binary with the StatefulSet's arguments and,
# for csi-provisioner, pvdir-controller's own RBAC and leader election. The node plugin runs
# as deploy/'s DaemonSet pod, registering itself with this kubelet.
mkdir -p /run/pvdir-controller
start pvdir-controller "$PVDIR_BIN" serve --mode=controller \
    --nfs-endpoint=unix:///run/pvdir-controller/csi.sock --node-id="$NODE_NAME" \
    --nfs-staging-dir=/run/pvdir-controller/exports \
    --mount-staging-dir=/run/pvdir-controller/mounts --nfs-timeout-secs=30 \
    --http-endpoint=127.0.0.1:9808
wait_until 30 "pvdir controller socket" pvdir-controller test -S /run/pvdir-controller/csi.sock
start csi-provisioner env NAMESPACE=pvdir "$PROVISIONER_BIN" \
    --csi-address=/run/pvdir-controller/csi.sock --kubeconfig="$CHAN/pki/provisioner.kubeconfig" \
    --leader-election --leader-election-namespace=pvdir --extra-create-metadata --timeout=120s --v=2
wait_until 30 "pvdir controller /healthz" pvdir-controller curl -fsS http://127.0.0.1:9808/healthz
mark "csi started"

# ---- command channel: the host drops $CHAN/cmd/ID.sh (by rename, so it is whole); the
# result is ID.out and then ID.rc. Each command runs in the background with a bound.
mkdir -p "$CHAN/cmd"
mark "ready for commands"
while :; do
    for f in "$CHAN"/cmd/*.sh; do
        [ -e "$f" ] || continue
        id=${f%.sh}
        mv "$f" "$id.run" 2>/dev/null || continue
        limit=$(sed -n '1s/^export CMD_LIMIT=\([0-9]*\)$/\1/p' "$id.run")
        (
            timeout --kill-after=5 "${limit:-60}" bash "$id.run" >"$id.out" 2>&1
            echo $? >"$id.rc.tmp"
            mv "$id.rc.tmp" "$id.rc"
        ) &
    done
    if [ -e "$CHAN/poweroff" ]; then
        mark "power-off requested"
        for name in csi-provisioner kubelet pvdir-controller; do
            alive "$name" && kill -TERM "$(cat "$RUN/$name.pid")" 2>/dev/null
        done
        sleep 1
        power_off
    fi
    for name in containerd kubelet pvdir-controller csi-provisioner; do
        if ! alive "$name" && [ ! -e "$RUN/$name.reported" ]; then
            mark "WARNING: $name exited (see $LOGS/$name.log)"
            : >"$RUN/$name.reported"
        fi
    done
    sleep 0.3
done
