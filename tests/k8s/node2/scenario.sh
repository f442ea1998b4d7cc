# `node2.sh scenario`: NFS volumes on the real cluster, on node-2. Sourced by node2.sh, whose
# helpers (guest, cluster_env, qemu_pid, die, ...) it uses.
# shellcheck shell=bash
#
# 1. pvdir's NFS StorageClasses from deploy/base/storageclasses.yaml, with only server and
#    share changed, as the README tells a user to (the guest's nfsd: 127.0.0.1, /k8s).
# 2. The seed's StatefulSet (deploy/examples/seed-web-nfs.yaml) on node-2, once per class:
#    pvdir-nfs in `default` (3 replicas, the README's walk-through), pvdir-nfs-retain in
#    seed-retain and pvdir-nfs-archive in seed-archive (1 replica each). Changes to the
#    seed, because nothing is pulled: busybox (imported) serves the volume with its httpd
#    instead of nginx; plus the nodeSelector for node-2 and the class name.
# 3. Checks: claims Bound, pods Running on node-2, a file written in each pod is on the export
#    (read in the guest), a deleted pod comes back with its data; then the README's reclaim
#    (scale to 0, delete the claim of web-0): delete -> PV and directory gone; retain -> PV
#    Released, directory kept; archive -> directory renamed to archived-www-web-0.

BUSYBOX_IMAGE=docker.io/library/busybox:offline
EXPORT_DIR=/srv/export$NFS_SHARE
SCEN_NAMESPACES=(default seed-retain seed-archive)
declare -A SCEN_CLASS=([default]=pvdir-nfs [seed-retain]=pvdir-nfs-retain [seed-archive]=pvdir-nfs-archive)
declare -A SCEN_REPLICAS=([default]=3 [seed-retain]=1 [seed-archive]=1)
FAILED_CHECKS=0

ts() { date -u +%H:%M:%S; }
step() { echo "=== $* ($(ts), +$((SECONDS - SCEN_T0))s)"; }
ok() { echo "ok: $*"; }
bad() {
    echo "FAILED: $*"
    FAILED_CHECKS=$((FAILED_CHECKS + 1))
}
# run CMD...: echo it, run it, its output in the log.
run() {
    echo "+ $*"
    "$@"
}
# wait_for SECONDS WHAT CMD...: polls CMD (quietly) until it succeeds; false after SECONDS.
wait_for() {
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit)) t=$SECONDS
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            bad "$what: not after ${limit}s"
            return 1
        fi
        sleep 1
    done
    ok "$what ($((SECONDS - t))s)"
}
# The scenario cannot go on: show what is there, and stop.
abort() {
    bad "$*"
    diagnostics
    step "SCENARIO FAILED ($FAILED_CHECKS failed checks); objects left for inspection, log $N2/scenario.log"
    exit 1
}
diagnostics() {
    echo "--- diagnostics"
    kubectl get nodes -o wide || true
    kubectl get pods -A -o wide || true
    kubectl get pvc -A || true
    kubectl get pv || true
    kubectl get events -A --sort-by=.lastTimestamp 2>/dev/null | tail -n 30 || true
    guest -t 20 "grep -E ' nfs4? ' /proc/mounts; find $EXPORT_DIR -maxdepth 3 | sort" || true
    local f
    for f in csi-provisioner pvdir-controller kubelet; do
        echo "--- guest $f.log (last 20 lines)"
        tail -n 20 "$CHAN/logs/$f.log" 2>/dev/null || true
    done
    echo "--- node-2's pvdir node plugin (last 20 lines)"
    kubectl -n pvdir logs --tail=20 -c pvdir \
        "$(kubectl -n pvdir get pods -l app.kubernetes.io/component=node --field-selector spec.nodeName=node-2 -o name | head -n1)" || true
}

# The seed's StatefulSet, changed as described above.
seed_manifest() {
    local class=$1 replicas=$2
    # busybox httpd in the background and a shell that exits on SIGTERM: as PID 1, `httpd -f`
    # would ignore SIGTERM and every pod would take its full 30 s grace period to stop.
    local cmd="httpd -p 80 -h /usr/share/nginx/html; trap 'exit 0' TERM; while :; do sleep 1; done"
    sed -e "s|^\( *\)image: nginx:1.27\$|\1image: $BUSYBOX_IMAGE\n\1imagePullPolicy: Never\n\1command: [sh, -c, \"$cmd\"]|" \
        -e "s|^\( *\)containers:\$|\1nodeSelector:\n\1  kubernetes.io/hostname: $NODE_NAME\n&|" \
        -e "s|^\( *\)storageClassName: pvdir-nfs\$|\1storageClassName: $class|" \
        -e "s|^\( *\)replicas: 3\$|\1replicas: $replicas|" \
        "$TOP/deploy/examples/seed-web-nfs.yaml"
}

# The NFS classes of deploy/base/storageclasses.yaml, with the guest's server and share.
storage_classes() {
    awk 'BEGIN { RS = "\n---\n"; ORS = "\n---\n" } /provisioner: nfs\.pvdir\.io/' \
        "$TOP/deploy/base/storageclasses.yaml" \
        | sed -e "s|^\( *\)server: .*|\1server: \"$NFS_SERVER\"|" -e "s|^\( *\)share: .*|\1share: $NFS_SHARE|"
}

pv_of() { kubectl -n "$1" get pvc "$2" -o 'jsonpath={.spec.volumeName}' 2>/dev/null; }
pvc_bound() { [ "$(kubectl -n "$1" get pvc "$2" -o 'jsonpath={.status.phase}' 2>/dev/null)" = Bound ]; }
pv_gone() { ! kubectl get pv "$1" >/dev/null 2>&1 && kubectl get pv >/dev/null; }
pv_phase_is() { [ "$(kubectl get pv "$1" -o 'jsonpath={.status.phase}' 2>/dev/null)" = "$2" ]; }
no_pods() { [ -z "$(kubectl -n "$1" get pods -l app=nginx -o name 2>/dev/null)" ] && kubectl -n "$1" get pods >/dev/null; }
pod_uid() { kubectl -n "$1" get pod "$2" -o 'jsonpath={.metadata.uid}' 2>/dev/null; }
pod_ready_other_uid() {
    local uid
    uid=$(pod_uid "$1" "$2")
    [ -n "$uid" ] && [ "$uid" != "$3" ] \
        && kubectl -n "$1" wait pod "$2" --for=condition=Ready --timeout=1s
}

# Removes what an earlier run left: workloads, claims, their PVs, then the export's contents.
scenario_cleanup() {
    local ns pv
    kubectl delete namespace seed-retain seed-archive --ignore-not-found --wait=false
    kubectl -n default delete statefulset web --ignore-not-found --wait=false
    kubectl -n default delete service nginx --ignore-not-found
    for ns in "${SCEN_NAMESPACES[@]}"; do
        kubectl -n "$ns" delete pvc -l app=nginx --ignore-not-found --wait=false 2>/dev/null || true
        for pv in $(kubectl -n "$ns" get pvc -o name 2>/dev/null | grep 'www-web-' || true); do
            kubectl -n "$ns" delete "$pv" --wait=false
        done
    done
    wait_for 180 "earlier namespaces seed-retain and seed-archive gone" \
        eval '! kubectl get namespace seed-retain seed-archive -o name 2>/dev/null | grep -q .' || return 1
    wait_for 120 "earlier pods of default/web gone" no_pods default || return 1
    # Retained PVs of the classes (and any other of ours still there).
    for pv in $(kubectl get pv -o 'jsonpath={range .items[*]}{.metadata.name} {.spec.storageClassName}{"\n"}{end}' \
        | awk '$2 ~ /^pvdir-nfs(-retain|-archive)?$/ { print $1 }'); do
        kubectl delete pv "$pv" --wait=false
    done
    wait_for 120 "earlier PVs of the NFS classes gone" \
        eval '! kubectl get pv -o jsonpath="{.items[*].spec.storageClassName}" | grep -qE "pvdir-nfs"' || return 1
    guest -t 30 "if grep -q ' $EXPORT_DIR' /proc/mounts; then echo 'still mounted under the export'; exit 1; fi
        rm -rf $EXPORT_DIR/* $EXPORT_DIR/.[!.]* 2>/dev/null; mkdir -p $EXPORT_DIR
        [ -z \"\$(ls -A $EXPORT_DIR)\" ] && echo 'ok: export $EXPORT_DIR emptied'" || return 1
}

scenario() {
    cluster_env
    qemu_pid >/dev/null || die "node-2 is not running: tests/k8s/node2.sh up"
    local log=$N2/scenario.log
    exec > >(tee "$log") 2>&1
    SCEN_T0=$SECONDS
    local ns i pv want got uid class

    step "node-2 and its NFS driver"
    run kubectl get nodes -o wide
    node_ready || abort "node $NODE_NAME is not Ready"
    csinode_has_driver || abort "CSINode $NODE_NAME does not list $DRIVER"
    ok "node $NODE_NAME Ready, CSINode lists $DRIVER"

    step "no way out of node-2: only the apiserver forward is reachable"
    if guest -t 20 "ip route get 192.0.2.1 2>&1; ! ip route get 192.0.2.1 >/dev/null 2>&1"; then ok "guest: no route off its own networks"; else bad "guest has a route to 192.0.2.1"; fi
    if guest -t 20 "! timeout 3 bash -c '</dev/tcp/10.0.2.2/$APISERVER_PORT' 2>/dev/null"; then ok "guest: slirp's host address 10.0.2.2 unreachable (restrict=on)"; else bad "guest reached 10.0.2.2:$APISERVER_PORT"; fi
    if guest -t 20 "timeout 5 bash -c '</dev/tcp/$APISERVER_GUEST_IP/$APISERVER_PORT'"; then ok "guest: apiserver reachable at $APISERVER_GUEST_IP:$APISERVER_PORT"; else bad "guest cannot reach the apiserver forward"; fi
    got=$(guest -t 20 "tr '\\0' '\\n' </proc/\$(pgrep -x containerd)/environ | grep -i '^https_proxy='") || true
    if [ "$got" = "HTTPS_PROXY=http://127.0.0.1:9" ]; then ok "guest containerd pulls through a dead proxy ($got)"; else bad "guest containerd's proxy: '$got'"; fi

    step "clean up after an earlier run"
    scenario_cleanup || abort "could not clean up after an earlier run"

    step "StorageClasses from deploy/base/storageclasses.yaml, server: \"$NFS_SERVER\", share: $NFS_SHARE"
    storage_classes >"$N2/storageclasses.yaml"
    if ! run kubectl apply -f "$N2/storageclasses.yaml"; then
        # Parameters are immutable: classes of another export are replaced.
        run kubectl delete -f "$N2/storageclasses.yaml" --ignore-not-found
        run kubectl apply -f "$N2/storageclasses.yaml" || abort "cannot apply the StorageClasses"
    fi
    run kubectl get storageclass
    run kubectl get storageclass pvdir-nfs -o 'jsonpath={.parameters}{"\n"}'

    step "the seed's StatefulSet on node-2, once per NFS class"
    for ns in "${SCEN_NAMESPACES[@]}"; do
        [ "$ns" = default ] || run kubectl create namespace "$ns"
        seed_manifest "${SCEN_CLASS[$ns]}" "${SCEN_REPLICAS[$ns]}" >"$N2/seed-$ns.yaml"
        run kubectl -n "$ns" apply -f "$N2/seed-$ns.yaml" || abort "apply in $ns"
    done
    echo "(the seed as applied in default:)"
    cat "$N2/seed-default.yaml"
    for ns in "${SCEN_NAMESPACES[@]}"; do
        run kubectl -n "$ns" rollout status statefulset web --timeout=300s \
            || abort "StatefulSet $ns/web not rolled out in 300s"
    done
    for ns in "${SCEN_NAMESPACES[@]}"; do
        run kubectl -n "$ns" get pods -o wide
        run kubectl -n "$ns" get pvc
    done
    run kubectl get pv
    for ns in "${SCEN_NAMESPACES[@]}"; do
        for ((i = 0; i < SCEN_REPLICAS[$ns]; i++)); do
            if pvc_bound "$ns" "www-web-$i"; then ok "$ns/www-web-$i Bound to $(pv_of "$ns" "www-web-$i") (${SCEN_CLASS[$ns]})"; else bad "$ns/www-web-$i not Bound"; fi
            got=$(kubectl -n "$ns" get pod "web-$i" -o 'jsonpath={.spec.nodeName} {.status.phase}')
            if [ "$got" = "$NODE_NAME Running" ]; then ok "$ns/web-$i Running on $NODE_NAME"; else bad "$ns/web-$i: $got"; fi
        done
    done
    [ "$FAILED_CHECKS" = 0 ] || abort "claims or pods not as expected"
    run kubectl get pv "$(pv_of default www-web-0)" -o 'jsonpath={.spec.csi.volumeHandle}{"\n"}'

    step "each pod writes a file; it is on the guest's export"
    for ns in "${SCEN_NAMESPACES[@]}"; do
        for ((i = 0; i < SCEN_REPLICAS[$ns]; i++)); do
            want="hello from $ns/web-$i at $(date +%s)"
            run kubectl -n "$ns" exec "web-$i" -- sh -c "echo '$want' >/usr/share/nginx/html/index.html" \
                || bad "write in $ns/web-$i"
            got=$(guest -t 20 "cat $EXPORT_DIR/$ns/www-web-$i/index.html") || true
            if [ "$got" = "$want" ]; then ok "export: $EXPORT_DIR/$ns/www-web-$i/index.html: $got"; else bad "export has '$got' for $ns/web-$i, want '$want'"; fi
            eval "WANT_${ns//-/_}_$i=\$want"
        done
    done
    echo "+ kubectl -n default exec web-0 -- wget -qO- http://127.0.0.1/index.html"
    got=$(kubectl -n default exec web-0 -- wget -qO- http://127.0.0.1/index.html) || true
    echo "$got"
    if [ "$got" = "$WANT_default_0" ]; then ok "web-0's httpd serves the file from its volume"; else bad "web-0's httpd served '$got'"; fi
    echo "--- in the guest: the NFS mounts and the export"
    guest -t 20 "grep -E ' nfs4? ' /proc/mounts; find $EXPORT_DIR -maxdepth 2 | sort" || bad "guest: listing"
    [ "$FAILED_CHECKS" = 0 ] || abort "files not as expected"

    step "delete pod web-1; it comes back with its data"
    uid=$(pod_uid default web-1)
    run kubectl -n default delete pod web-1 --timeout=120s || bad "delete pod web-1"
    wait_for 180 "web-1 recreated and Ready" pod_ready_other_uid default web-1 "$uid" || abort "web-1 did not come back"
    run kubectl -n default get pod web-1 -o wide
    echo "+ kubectl -n default exec web-1 -- cat /usr/share/nginx/html/index.html"
    got=$(kubectl -n default exec web-1 -- cat /usr/share/nginx/html/index.html) || true
    echo "before: $WANT_default_1"
    echo "after:  $got"
    if [ "$got" = "$WANT_default_1" ]; then ok "web-1 has its data"; else bad "web-1 lost its data"; fi

    step "reclaim: scale each StatefulSet to 0, delete the claim www-web-0"
    declare -A PV0
    for ns in "${SCEN_NAMESPACES[@]}"; do
        PV0[$ns]=$(pv_of "$ns" www-web-0)
        run kubectl -n "$ns" scale statefulset web --replicas=0
    done
    for ns in "${SCEN_NAMESPACES[@]}"; do
        wait_for 180 "pods of $ns/web gone" no_pods "$ns" || abort "pods of $ns stay"
    done
    for ns in "${SCEN_NAMESPACES[@]}"; do
        run kubectl -n "$ns" delete pvc www-web-0 --wait=false
    done

    step "reclaim pvdir-nfs (onDelete: delete): PV and directory gone, nothing else touched"
    pv=${PV0[default]}
    if wait_for 120 "PV $pv deleted" pv_gone "$pv"; then
        if guest -t 20 "test ! -e $EXPORT_DIR/default/www-web-0"; then ok "directory $EXPORT_DIR/default/www-web-0 is gone"; else bad "directory $EXPORT_DIR/default/www-web-0 still there"; fi
    fi
    for i in 1 2; do
        want=WANT_default_$i
        got=$(guest -t 20 "cat $EXPORT_DIR/default/www-web-$i/index.html") || true
        if [ "$got" = "${!want}" ]; then ok "www-web-$i untouched"; else bad "www-web-$i changed: '$got'"; fi
    done

    step "reclaim pvdir-nfs-retain (onDelete: retain): PV Released, directory stays"
    pv=${PV0[seed-retain]}
    wait_for 120 "PV $pv Released" pv_phase_is "$pv" Released || true
    run kubectl get pv "$pv"
    got=$(guest -t 20 "cat $EXPORT_DIR/seed-retain/www-web-0/index.html") || true
    if [ "$got" = "$WANT_seed_retain_0" ]; then ok "directory $EXPORT_DIR/seed-retain/www-web-0 kept with its data"; else bad "retained directory has '$got'"; fi

    step "reclaim pvdir-nfs-archive (onDelete: archive): directory renamed to archived-www-web-0"
    pv=${PV0[seed-archive]}
    wait_for 120 "PV $pv deleted" pv_gone "$pv" || true
    guest -t 20 "ls -la $EXPORT_DIR/seed-archive" || true
    if guest -t 20 "test ! -e $EXPORT_DIR/seed-archive/www-web-0"; then ok "www-web-0 is gone"; else bad "$EXPORT_DIR/seed-archive/www-web-0 still there"; fi
    got=$(guest -t 20 "cat $EXPORT_DIR/seed-archive/archived-www-web-0/index.html") || true
    if [ "$got" = "$WANT_seed_archive_0" ]; then ok "$EXPORT_DIR/seed-archive/archived-www-web-0 holds the data"; else bad "archived directory has '$got'"; fi

    echo "--- memory: QEMU RSS $(awk '/^VmRSS/ { printf "%d MiB", $2 / 1024 }' "/proc/$(qemu_pid)/status"); in the guest:"
    guest -t 20 "free -m; ps -eo rss=RSS_KiB,comm --sort=-rss | head -n 12" || true
    echo "--- the export at the end"
    guest -t 20 "find $EXPORT_DIR | sort" || true
    run kubectl get pv
    if [ "$FAILED_CHECKS" -ne 0 ]; then
        diagnostics
        step "SCENARIO FAILED ($FAILED_CHECKS failed checks); objects left for inspection, log $log"
        exit 1
    fi
    step "clean up"
    scenario_cleanup || warn "clean-up after the scenario was incomplete"
    step "SCENARIO PASSED in $((SECONDS - SCEN_T0))s; log $log"
}
