# `cluster.sh down`: puts the host back as it was before `up`, whatever state an earlier run was
# left in (finished, failed half-way, killed). Every step tolerates finding nothing. Processes are
# found by recorded PID, or by a command line pointing into $STATE (which only ours have); never
# by name alone. Sourced by cluster.sh.
# shellcheck shell=bash

DOWN_DID=()    # what was found and undone, for the report
DOWN_FORCED=() # what needed force (SIGKILL, lazy unmount): worth a look
DOWN_FAILED=() # what could not be undone: down fails

did() { DOWN_DID+=("$*"); }
forced() { DOWN_FORCED+=("$*"); }
failed() { DOWN_FAILED+=("$*"); }

# kill_pid PID EXE WHAT GRACE: SIGTERM, then SIGKILL after GRACE seconds.
kill_pid() {
    local pid=$1 exe=$2 what=$3 grace=$4 i
    pid_is "$pid" "$exe" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        pid_is "$pid" "$exe" || break
        sleep 0.1
    done
    if pid_is "$pid" "$exe"; then
        kill -KILL "$pid" 2>/dev/null || true
        forced "$what (pid $pid) ignored SIGTERM for ${grace}s: killed"
        for ((i = 0; i < 50; i++)); do
            pid_is "$pid" "$exe" || break
            sleep 0.1
        done
        pid_is "$pid" "$exe" && failed "$what (pid $pid) survived SIGKILL"
    fi
    did "stopped $what (pid $pid)"
}

stop_recorded() {
    local name=$1 grace=${2:-10} pid exe
    [ -s "$PIDS/$name.pid" ] || return 0
    read -r pid exe <"$PIDS/$name.pid"
    kill_pid "$pid" "$exe" "$name" "$grace"
    rm -f "$PIDS/$name.pid"
}

# Processes of this cluster whose PID file is lost (a killed `up`, a deleted pids dir): the
# cluster's own programs whose command line names a path in $STATE.
state_procs() {
    local p exe cmd
    for p in /proc/[0-9]*; do
        exe=$(readlink "$p/exe" 2>/dev/null) || continue
        case "${exe##*/}" in
        etcd | kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | containerd | containerd-shim*) ;;
        *) continue ;;
        esac
        cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
        case "$cmd" in *"$STATE/"*) echo "${p#/proc/} ${exe% (deleted)}" ;; esac
    done
}

# kubepods cgroups in every hierarchy (v1 controllers and the unified v2 mount), deepest first.
kubepods_cgroups() {
    local top
    for top in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
        [ -d "$top" ] && find "$top" -depth -type d
    done
    return 0
}

stop_pods() {
    local ids id n i cg
    # Through containerd, while it still answers: tasks are killed and their containers deleted,
    # so that the shims exit on their own and unmount the container root filesystems.
    if proc_alive containerd && [ -S "$CTRD_SOCK" ]; then
        ids=$(ctr_k8s tasks ls -q 2>/dev/null || true)
        if [ -n "$ids" ]; then
            for id in $ids; do ctr_k8s tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true; done
            for id in $ids; do ctr_k8s tasks rm -f "$id" >/dev/null 2>&1 || true; done
            did "killed $(wc -w <<<"$ids") container tasks"
        fi
        ids=$(ctr_k8s containers ls -q 2>/dev/null || true)
        for id in $ids; do ctr_k8s containers rm "$id" >/dev/null 2>&1 || true; done
        CONTAINER_IDS+=" $ids"
    fi
    # Containers whose shim is gone (containerd or the shims were killed): runc still knows them.
    if [ -d "$RUNC_ROOT" ]; then
        ids=$(runc --root "$RUNC_ROOT/k8s.io" list -q 2>/dev/null || true)
        for id in $ids; do
            runc --root "$RUNC_ROOT/k8s.io" kill -a "$id" KILL >/dev/null 2>&1 || true
            runc --root "$RUNC_ROOT/k8s.io" delete -f "$id" >/dev/null 2>&1 || true
            forced "runc container $id outlived containerd: killed and deleted with runc"
        done
    fi
    # Last resort, whatever still runs in the pods' cgroups.
    for ((i = 0; i < 50; i++)); do
        n=0
        while read -r cg; do
            for id in $(cat "$cg/cgroup.procs" 2>/dev/null); do
                kill -KILL "$id" 2>/dev/null && n=$((n + 1))
            done
        done < <(kubepods_cgroups)
        [ "$n" -eq 0 ] && break
        [ "$i" -eq 0 ] && forced "$n processes left in kubepods cgroups: killed"
        sleep 0.1
    done
}

stop_processes() {
    stop_recorded kubelet 15
    stop_pods
    stop_recorded containerd 10
    # Shims exit by themselves once their tasks are deleted; stragglers are the strays below.
    local name pid exe
    for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do
        stop_recorded "$name" 15
    done
    while read -r pid exe; do
        [ -n "$pid" ] || continue
        kill_pid "$pid" "$exe" "stray ${exe##*/} of $STATE" 5
    done < <(state_procs)
    # A second round catches pods whose shims only just went.
    stop_pods
    remove_shim_sockets
}

# containerd 1.6 puts each shim's socket in /run/containerd/s/ whatever its own state directory,
# named by the sha256 of "ADDRESS/NAMESPACE/ID". A shim that exits cleanly removes it; one that
# was killed leaves it behind.
# The IDs come from containerd while it answered, or else from its directories.
CONTAINER_IDS=
remove_shim_sockets() {
    local id sock n=0
    for id in $({
        echo "$CONTAINER_IDS" | tr ' ' '\n'
        find "$CTRD_DIR"/state/io.containerd.runtime.v2.task/k8s.io \
            "$CTRD_DIR"/{root,state}/io.containerd.grpc.v1.cri/{sandboxes,containers} \
            -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null
    } | sort -u); do
        sock=/run/containerd/s/$(printf '%s' "$CTRD_SOCK/k8s.io/$id" | sha256sum | cut -c1-64)
        if [ -e "$sock" ]; then
            rm -f "$sock"
            n=$((n + 1))
        fi
    done
    [ "$n" -eq 0 ] || did "removed $n sockets of killed shims"
}

# Network namespaces of this cluster's pods. Every CRI runtime on the machine keeps its pods'
# namespaces in /run/netns/cni-*; ours are those that our containerd's metadata names (the specs
# are stored as JSON, so the paths are there verbatim, whether or not containerd still runs).
our_netns() {
    grep -aoE '/var/run/netns/cni-[0-9a-f-]{36}' "$CTRD_DIR/root/io.containerd.metadata.v1.bolt/meta.db" \
        2>/dev/null | sed 's|^/var/run/|/run/|' | sort -u || true
}
OUR_NETNS=

# Mount points of the cluster, children before parents (reverse mount order). mountinfo escapes
# blanks as octal (\040).
cluster_mounts() {
    local m
    awk '{ print $5 }' /proc/self/mountinfo | tac | while read -r m; do
        m=$(printf '%b' "$m")
        case "$m" in
        "$KUBELET_DIR" | "$KUBELET_DIR"/* | "$PVDIR_DIR" | "$PVDIR_DIR"/* | "$STATE"/*) echo "$m" ;;
        /run/netns/cni-*) if grep -qxF "$m" <<<"$OUR_NETNS"; then echo "$m"; fi ;;
        esac
    done
}

unmount_all() {
    local pass m left
    for pass in 1 2 3 4 5; do
        mapfile -t left < <(cluster_mounts)
        [ "${#left[@]}" -eq 0 ] && break
        for m in "${left[@]}"; do
            umount "$m" 2>/dev/null && did "unmounted $m"
        done
        [ "$pass" -gt 1 ] && sleep 0.5
    done
    mapfile -t left < <(cluster_mounts)
    # Still busy: detached lazily (it stays alive for whoever holds it) and reported. A parent
    # that was only busy because of such a child comes off normally once the child is detached.
    local users
    for m in "${left[@]}"; do
        if umount "$m" 2>/dev/null; then
            did "unmounted $m"
            continue
        fi
        users=$(fuser -m "$m" 2>/dev/null | tr -s ' ' | head -c 200 || true)
        if umount -l "$m" 2>/dev/null; then
            forced "lazy unmount of $m (busy; used by PIDs:${users:- unknown})"
        fi
    done
    mapfile -t left < <(cluster_mounts)
    [ "${#left[@]}" -eq 0 ] || failed "still mounted: ${left[*]}"
    # The network namespace files are bind mounts (now gone) over empty files.
    for m in $OUR_NETNS; do
        if ! mountpoint -q "$m"; then rm -f "$m"; fi
    done
}

remove_cgroups() {
    local cg n=0
    while read -r cg; do
        rmdir "$cg" 2>/dev/null && n=$((n + 1))
    done < <(kubepods_cgroups)
    [ "$n" -eq 0 ] || did "removed $n kubepods cgroups"
    [ -z "$(kubepods_cgroups)" ] || failed "kubepods cgroups left: $(kubepods_cgroups | head -3 | tr '\n' ' ')"
}

# Deletes, in one iptables-restore per table, every rule jumping to one of our chains and then
# the chains: $NAT_CHAIN, and KUBE-* chains (kubelet's canaries and firewall) that were not
# there before up. Without that record (an up interrupted before it was written), kubelet's
# chains count as ours when no kubelet runs on the machine any more.
remove_iptables() {
    local tool table before kube=0 p
    if [ -s "$IPTABLES_BEFORE" ]; then
        kube=1
    else
        kube=1
        for p in /proc/[0-9]*; do
            case "$(readlink "$p/exe" 2>/dev/null)" in */kubelet | */kubelet" (deleted)") kube=0 ;; esac
        done
    fi
    for tool in iptables ip6tables; do
        command -v "$tool-save" >/dev/null || continue
        before=
        [ -s "$IPTABLES_BEFORE" ] && before=$(grep "^$tool " "$IPTABLES_BEFORE" | cut -d' ' -f2- | tr '\n' ' ' || true)
        for table in filter nat mangle; do
            local script
            script=$("$tool-save" -t "$table" 2>/dev/null | awk -v ours="$NAT_CHAIN" -v before=" $before " \
                -v kube="$kube" '
                function mine(c) { return c == ours || (kube && c ~ /^KUBE-/ && index(before, " " c " ") == 0) }
                /^:/ { c = substr($1, 2); if (mine(c)) chains[++n] = c; next }
                /^-A / {
                    for (i = 1; i < NF; i++) if (($i == "-j" || $i == "-g") && mine($(i + 1)) && !mine($2)) {
                        sub(/^-A /, "-D "); dels[++m] = $0; break
                    }
                }
                END {
                    if (n + m == 0) exit
                    print "*" TABLE
                    for (i = 1; i <= m; i++) print dels[i]
                    for (i = 1; i <= n; i++) print "-F " chains[i]
                    for (i = 1; i <= n; i++) print "-X " chains[i]
                    print "COMMIT"
                }' TABLE="$table")
            [ -n "$script" ] || continue
            if "$tool-restore" --noflush <<<"$script"; then
                did "removed $tool $table chains $(grep '^-X' <<<"$script" | cut -d' ' -f2 | tr '\n' ' ')"
            else
                failed "$tool-restore failed on: $script"
            fi
        done
    done
    rm -f "$IPTABLES_BEFORE"
}

remove_network() {
    local v
    # Pod veths vanish with their network namespaces; any still attached to the bridge go now.
    if ip link show "$POD_BRIDGE" >/dev/null 2>&1; then
        for v in $(ip -o link show master "$POD_BRIDGE" 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }'); do
            ip link del "$v" 2>/dev/null && did "deleted veth $v"
        done
    fi
    for v in "$POD_BRIDGE" "$NODE_BRIDGE"; do
        if ip link show "$v" >/dev/null 2>&1; then
            ip link del "$v" && did "deleted bridge $v"
        fi
    done
    remove_iptables
    conntrack -D -d "$KUBERNETES_SVC_IP" >/dev/null 2>&1 || true
}

restore_sysctls() {
    [ -s "$SYSCTL_SAVED" ] || return 0
    local line ok=1 changed=()
    while read -r line; do
        [ -n "$line" ] || continue
        if [ "$(sysctl -n "${line%%=*}")" != "${line#*=}" ]; then
            sysctl -qw "$line" && changed+=("$line") || ok=0
        fi
    done <"$SYSCTL_SAVED"
    [ "${#changed[@]}" -eq 0 ] || did "restored sysctls ${changed[*]}"
    if [ "$ok" = 1 ]; then rm -f "$SYSCTL_SAVED"; else failed "could not restore every sysctl of $SYSCTL_SAVED"; fi
}

# Paths that did not exist before up. Removed only when nothing is mounted below them, and
# without crossing into another filesystem even so.
remove_created_paths() {
    # libcni caches each attachment's result in /var/lib/cni/results/NETWORK-SANDBOX-IFNAME,
    # also for the loopback network containerd sets up itself ("cni-loopback").
    local id
    for id in $(find "$CTRD_DIR"/{root,state}/io.containerd.grpc.v1.cri/sandboxes -mindepth 1 -maxdepth 1 \
        -printf '%f\n' 2>/dev/null | sort -u); do
        rm -f /var/lib/cni/results/*-"$id"-*
    done
    rm -f /var/lib/cni/results/"$CNI_NETWORK"-* 2>/dev/null || true
    [ -s "$CREATED_LIST" ] || return 0
    local kind p
    while read -r kind p; do
        [ -e "$p" ] || continue
        if awk -v p="$p" '$5 == p || index($5, p "/") == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
            failed "kept $p: something is still mounted there"
            continue
        fi
        if [ "$kind" = own ]; then
            rm -rf --one-file-system "$p" && did "removed $p"
        else
            find "$p" -depth -type d -empty -delete 2>/dev/null || true
            if [ -e "$p" ]; then warn "kept $p: something else put files there"; else did "removed $p"; fi
        fi
    done <"$CREATED_LIST"
    rm -f "$CREATED_LIST"
}

down() {
    local started=$SECONDS
    DOWN_DID=()
    DOWN_FORCED=()
    DOWN_FAILED=()
    OUR_NETNS=$(our_netns)
    stop_processes
    unmount_all
    remove_cgroups
    remove_network
    restore_sysctls
    remove_created_paths
    # Cluster data that only this run could use; logs and image archives stay. After a failure
    # it is kept: the next down needs containerd's metadata and the PID files to finish the job.
    if [ "${#DOWN_FAILED[@]}" -eq 0 ]; then
        rm -rf --one-file-system "$CTRD_DIR" "$ETCD_DIR" "$CNI_DIR" "$PKI" "$STATE"/tmp-* "$PIDS" \
            "$STATE/env" "$STATE/kubelet-config.yaml" "$STATE/containerd.toml" 2>/dev/null \
            || failed "could not remove all of $STATE"
    fi
    local d
    if [ $((${#DOWN_DID[@]} + ${#DOWN_FORCED[@]} + ${#DOWN_FAILED[@]})) -eq 0 ]; then
        say "down: nothing was up"
    else
        for d in "${DOWN_DID[@]}"; do say "down: $d"; done
        for d in "${DOWN_FORCED[@]}"; do warn "down: $d"; done
        for d in "${DOWN_FAILED[@]}"; do echo "cluster: ERROR: down: $d" >&2; done
        say "down: done in $((SECONDS - started))s"
    fi
    if [ "$(sysctl -n net.ipv4.ip_forward)" != 0 ]; then warn "net.ipv4.ip_forward is $(sysctl -n net.ipv4.ip_forward)"; fi
    [ "${#DOWN_FAILED[@]}" -eq 0 ]
}
