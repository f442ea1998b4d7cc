# The node plugin replaced while volumes are published: pods keep their mounts, the new plugin
# registers again with kubelet, provisions, and unpublishes cleanly.
# shellcheck shell=bash

step "node restart: delete the pvdir node pod while web is running"
old=$(k -n pvdir get pod -l app.kubernetes.io/component=node -o jsonpath='{.items[0].metadata.name}')
registered_local=$(registrations local.pvdir.io)
registered_nfs=$(registrations nfs.pvdir.io)
dropped_before=$(deregistrations local.pvdir.io)
k -n pvdir delete pod "$old" --wait=true --timeout=60s
# On SIGTERM pvdir removes its registration sockets, and kubelet drops the drivers. (The
# DaemonSet's next pod may already have made new sockets: kubelet's log tells.)
dropped() { [ "$(deregistrations local.pvdir.io)" -gt "$dropped_before" ]; }
wait_until 30 "kubelet deregistered the drivers when the pod stopped (its log)" dropped
# While no plugin runs: the pods' mounts are theirs, not the plugin's.
for i in 0 1 2; do
    check "web-$i reads and writes with no plugin running" \
        k exec "web-$i" -- sh -c 'echo during-restart > /usr/share/nginx/html/during && cat /usr/share/nginx/html/hello'
done
k -n pvdir rollout status daemonset/pvdir-node --timeout=120s
new=$(k -n pvdir get pod -l app.kubernetes.io/component=node -o jsonpath='{.items[0].metadata.name}')
check "a new node pod ($new replaces $old)" [ "$new" != "$old" ]
registered_again() {
    [ "$(registrations local.pvdir.io)" -gt "$registered_local" ] &&
        [ "$(registrations nfs.pvdir.io)" -gt "$registered_nfs" ]
}
wait_until 60 "kubelet registered both drivers again (its log)" registered_again
wait_until 60 "CSINode node-1 lists both drivers again" both_registered node-1
for i in 0 1 2; do
    pv=$(pv_of "www-web-$i")
    check "web-$i's write during the restart is on the host" \
        grep -qx during-restart "/var/lib/pvdir/volumes/$pv/during"
done

step "node restart: a new claim provisions and publishes through the new plugin"
claim after-restart pvdir-local | k apply -f -
pod after-restart after-restart 'echo fresh > /data/fresh && exec sleep 100000' | k apply -f -
wait_until 90 "after-restart Running" pod_running after-restart
check "its claim is Bound" pvc_bound after-restart
pv=$(pv_of after-restart)
wait_until 10 "its file is on the host" test -s "/var/lib/pvdir/volumes/$pv/fresh"

step "node restart: deleting a pod unpublishes cleanly"
for name in after-restart web-2; do
    uid=$(jsonpath pod "$name" '{.metadata.uid}')
    check "$name has its mount on the host" [ "$(host_mounts_of_pod "$uid")" -ge 1 ]
    k delete pod "$name" --wait=true --timeout=60s
    wait_until 30 "no mount of $name left on the host" sh -c "! grep -q '/var/lib/kubelet/pods/$uid/' /proc/self/mountinfo"
done
k delete pvc after-restart --wait=true --timeout=60s
wait_until 60 "after-restart's directory is gone" sh -c "! test -e /var/lib/pvdir/volumes/$pv"
k rollout status statefulset/web --timeout=90s
