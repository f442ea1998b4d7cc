# Helpers for the cluster scenarios: bounded waits, checks that fail loudly with the cluster's
# state, and the workloads' manifests. Sourced by run.sh, never run.
# shellcheck shell=bash

BUSYBOX=docker.io/library/busybox:offline
LOCAL_SOCKET=/var/lib/kubelet/plugins/local.pvdir.io/csi.sock

# kubectl never waits longer than this for one answer.
k() { timeout 60 kubectl --request-timeout=50s "$@"; }

step() { echo; echo "=== $* ($(date +%T))"; }
ok() { echo "ok: $*"; }

# What a reader of the log needs to see why a check failed.
diagnose() {
    echo "---- pods"; k get pods -A -o wide || true
    echo "---- pvc/pv"; k get pvc,pv -A -o wide || true
    echo "---- recent events"; k get events -A --sort-by=.lastTimestamp | tail -n 30 || true
    echo "---- pvdir node plugin (last 30 lines)"
    k -n pvdir logs ds/pvdir-node -c pvdir --tail=30 || true
}

fail() {
    echo "FAILED: $*" >&2
    diagnose >&2
    exit 1
}

check() {
    local what=$1
    shift
    "$@" || fail "$what"
    ok "$what"
}

# wait_until SECONDS WHAT COMMAND...: COMMAND succeeds within SECONDS, or the scenario fails.
wait_until() {
    local limit=$1 what=$2 start=$SECONDS
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS - start >= limit)); then
            fail "$what (not within ${limit}s)"
        fi
        sleep 1
    done
    ok "$what ($((SECONDS - start))s)"
}

# wait_gone SECONDS KIND NAME [NAMESPACE]
wait_gone() {
    local limit=$1 kind=$2 name=$3 ns=${4:-default}
    wait_until "$limit" "$kind $name is gone" \
        sh -c "! kubectl -n $ns get $kind $name >/dev/null 2>&1"
}

jsonpath() { k get "$1" "$2" -o "jsonpath=$3" ${4:+-n "$4"}; }

# The seed's StatefulSet `web` with `volumeClaimTemplates: www`, on the given class, with the
# offline busybox image. Each replica writes its greeting once, so a restarted pod proves its
# data survived by finding the old one.
web_statefulset() {
    local class=$1 replicas=$2 selector=""
    [ -z "${3:-}" ] || selector="nodeSelector: {kubernetes.io/hostname: $3}"
    cat <<YAML
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: nginx
  replicas: $replicas
  selector:
    matchLabels: {app: nginx}
  template:
    metadata:
      labels: {app: nginx}
    spec:
      terminationGracePeriodSeconds: 1
      $selector
      containers:
        - name: nginx
          image: $BUSYBOX
          imagePullPolicy: Never
          command: [sh, -c, 'f=/usr/share/nginx/html/hello; [ -f \$f ] || echo "hello from \$(hostname) at \$(date +%s)" > \$f; exec sleep 100000']
          volumeMounts:
            - {name: www, mountPath: /usr/share/nginx/html}
  volumeClaimTemplates:
    - metadata: {name: www}
      spec:
        storageClassName: $class
        accessModes: [ReadWriteOnce]
        resources: {requests: {storage: 1Gi}}
YAML
}

# claim NAME CLASS [ACCESS_MODE] [SIZE]
claim() {
    cat <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $1}
spec:
  storageClassName: $2
  accessModes: [${3:-ReadWriteOnce}]
  resources: {requests: {storage: ${4:-1Gi}}}
YAML
}

# pod NAME CLAIM COMMAND: a busybox pod with the claim at /data.
pod() {
    cat <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: $BUSYBOX
      imagePullPolicy: Never
      command: [sh, -c, '$3']
      volumeMounts: [{name: data, mountPath: /data}]
  volumes:
    - name: data
      persistentVolumeClaim: {claimName: $2}
YAML
}

# CSINode NODE lists both drivers (in the order kubelet registered them).
both_registered() {
    local names
    names=$(kubectl get csinode "$1" -o jsonpath='{.spec.drivers[*].name}' 2>/dev/null) || return 1
    [ "$(echo "$names" | tr ' ' '\n' | sort | paste -sd ' ')" = "local.pvdir.io nfs.pvdir.io" ]
}

# A CSIStorageCapacity for pvdir-local with NODE's topology and some space.
capacity_for() {
    kubectl -n pvdir get csistoragecapacities -o json | NODE=$1 python3 -c '
import json, os, sys
items = json.load(sys.stdin)["items"]
ok = [c for c in items if c.get("storageClassName") == "pvdir-local"
      and c.get("nodeTopology", {}).get("matchLabels", {}).get("topology.pvdir.io/node") == os.environ["NODE"]
      and str(c.get("capacity", "0")) not in ("0", "")]
sys.exit(0 if ok else 1)'
}

# kubelet's registrations of DRIVER so far, from its log.
registrations() { grep -c "Register new plugin with name: $1 " "$STATE/logs/kubelet.log" || true; }
deregistrations() { grep -c "DeRegisterPlugin request for plugin $1," "$STATE/logs/kubelet.log" || true; }

pod_running() { [ "$(jsonpath pod "$1" '{.status.phase}')" = Running ]; }
pvc_bound() { [ "$(jsonpath pvc "$1" '{.status.phase}')" = Bound ]; }
pv_of() { jsonpath pvc "$1" '{.spec.volumeName}'; }
# Mounts on the host below kubelet's pods directory for a pod UID.
host_mounts_of_pod() { grep -c "/var/lib/kubelet/pods/$1/" /proc/self/mountinfo || true; }
