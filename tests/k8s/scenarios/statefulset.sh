# The seed's story on pvdir-local: StatefulSet web x 3, volumeClaimTemplates www.
# shellcheck shell=bash

step "statefulset: web x 3 on pvdir-local"
web_statefulset pvdir-local 3 | k apply -f -
k rollout status statefulset/web --timeout=180s
k get pods -l app=nginx -o wide
k get pvc -o wide
for i in 0 1 2; do
    check "www-web-$i is Bound" pvc_bound "www-web-$i"
    pv=$(pv_of "www-web-$i")
    affinity=$(jsonpath pv "$pv" '{.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].key}={.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}')
    check "$pv has node affinity topology.pvdir.io/node=node-1 ($affinity)" \
        [ "$affinity" = "topology.pvdir.io/node=node-1" ]
    handle=$(jsonpath pv "$pv" '{.spec.csi.volumeHandle}')
    echo "$pv: $handle"
done

step "statefulset: each replica's file is in its volume directory on the host"
for i in 0 1 2; do
    pv=$(pv_of "www-web-$i")
    in_pod=$(k exec "web-$i" -- cat /usr/share/nginx/html/hello)
    on_host=$(cat "/var/lib/pvdir/volumes/$pv/hello")
    echo "web-$i: $in_pod | /var/lib/pvdir/volumes/$pv/hello: $on_host"
    check "web-$i's file is on the host" [ -n "$in_pod" -a "$in_pod" = "$on_host" ]
    check "and says it is web-$i's" grep -q "hello from web-$i " "/var/lib/pvdir/volumes/$pv/hello"
done

step "statefulset: a deleted pod comes back with its data"
before=$(k exec web-1 -- cat /usr/share/nginx/html/hello)
old_uid=$(jsonpath pod web-1 '{.metadata.uid}')
k delete pod web-1 --wait=true --timeout=60s
replaced() {
    local now
    now=$(kubectl get pod "$1" -o jsonpath='{.metadata.uid} {.status.phase}' 2>/dev/null) || return 1
    [ "${now% *}" != "$2" ] && [ "${now#* }" = Running ]
}
wait_until 90 "web-1 recreated and Running" replaced web-1 "$old_uid"
after=$(k exec web-1 -- cat /usr/share/nginx/html/hello)
echo "before: $before"
echo "after:  $after"
check "web-1 has its old data" [ "$before" = "$after" ]
check "the old pod's mount is gone from the host" [ "$(host_mounts_of_pod "$old_uid")" = 0 ]

step "cli: pvdir list on the node's socket shows the cluster's volumes"
"$PVDIR" list --endpoint "unix://$LOCAL_SOCKET" | tee "$LOG_DIR/pvdir-list.txt"
for i in 0 1 2; do
    pv=$(pv_of "www-web-$i")
    check "pvdir list shows $pv" grep -q "$pv" "$LOG_DIR/pvdir-list.txt"
done
