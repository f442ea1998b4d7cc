#!/usr/bin/env bash
# The cluster tier, one command: a real Kubernetes (etcd, apiserver, controller-manager,
# scheduler, containerd, kubelet) on this machine, offline; pvdir's image built from the
# Dockerfile's recipe and imported; `kubectl apply -k deploy/` as a user runs it; then the
# scenarios, each a check that can fail, with kubectl's output in the log.
#
#   tests/k8s/run.sh            build (or reuse) everything, run all scenarios, tear down
#   KEEP=1 tests/k8s/run.sh     leave the cluster up afterwards, as a playground
#   PVDIR_K8S_NFS=0             skip the NFS part (the second node in a VM)
#
# Everything started is stopped on every exit path (cluster.sh down). Needs root.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/tests/k8s
CLUSTER=$HERE/cluster.sh
STATE=$(realpath -m "${PVDIR_K8S_STATE:-/var/tmp/pvdir-k8s}")
LOG_DIR=$STATE/scenario-logs
export PVDIR_K8S_STATE=$STATE
started=$SECONDS

phase() { echo; echo "##### $* (at $((SECONDS - started))s)"; }

phase "binaries"
BIN=$("$HERE/build.sh" | tail -n 1)
export PVDIR_K8S_BIN=$BIN
(cd "$ROOT" && cargo build --release --locked --bin pvdir)
PVDIR=$ROOT/target/release/pvdir

phase "images"
mkdir -p "$STATE/images"
"$HERE/image.sh" "$STATE/images" "$PVDIR" "$BIN"

finish() {
    local rc=$?
    if [ "${KEEP:-0}" = 1 ]; then
        echo
        echo "KEEP=1: the cluster stays up. Use it with:"
        echo "  source $STATE/env && kubectl get pods -A"
        echo "Tear it down with: $HERE/node2.sh down; $CLUSTER down"
    else
        phase "teardown"
        "$HERE/node2.sh" down || rc=1
        "$CLUSTER" down || rc=1
    fi
    echo "cluster tier: exit $rc after $((SECONDS - started))s"
    exit "$rc"
}
trap finish EXIT

phase "cluster up"
"$CLUSTER" up
# shellcheck source=/dev/null
. "$STATE/env"
mkdir -p "$LOG_DIR"

# shellcheck source=scenarios/lib.sh
. "$HERE/scenarios/lib.sh"
for scenario in install statefulset rwop node-restart reclaim snapshots; do
    phase "scenario: $scenario"
    # shellcheck source=/dev/null
    . "$HERE/scenarios/$scenario.sh"
done

phase "memory of the pvdir pods (kubelet's summary API, and ps)"
"$HERE/scenarios/memory.py" | tee "$LOG_DIR/memory.txt"
ps -o pid,rss,args -C pvdir -C csi-provisioner | tee -a "$LOG_DIR/memory.txt"

# The host kernel has no NFS: a VM with Debian's kernel joins as node-2, with the NFS server.
if [ "${PVDIR_K8S_NFS:-1}" = 1 ]; then
    phase "node-2: a VM with kernel NFS joins the cluster"
    "$HERE/node2.sh" up
    phase "scenario: two-nodes"
    . "$HERE/scenarios/two-nodes.sh"
    phase "scenario: NFS on node-2"
    "$HERE/node2.sh" scenario
fi

phase "all scenarios passed"
