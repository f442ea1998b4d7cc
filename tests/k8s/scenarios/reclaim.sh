# Reclaim as the classes say, and README's two ways out of a Released PV.
# shellcheck shell=bash

step "reclaim (Delete): scale web to 2 and delete www-web-2"
pv=$(pv_of www-web-2)
k scale statefulset web --replicas=2
wait_gone 60 pod web-2
k delete pvc www-web-2 --wait=true --timeout=60s
wait_gone 60 pv "$pv"
wait_until 30 "directory /var/lib/pvdir/volumes/$pv is gone" sh -c "! test -e /var/lib/pvdir/volumes/$pv"
check "the other replicas' directories stay" test -s "/var/lib/pvdir/volumes/$(pv_of www-web-0)/hello"

step "reclaim (Retain): the PV becomes Released and the directory stays"
# A local class with Retain, as a user would write it: pvdir-local's parameters, another
# policy.
k get storageclass pvdir-local -o json | python3 -c '
import json, sys
sc = json.load(sys.stdin)
for key in ("uid", "resourceVersion", "creationTimestamp", "managedFields", "annotations"):
    sc["metadata"].pop(key, None)
sc["metadata"]["name"] = "pvdir-local-retain"
sc["reclaimPolicy"] = "Retain"
print(json.dumps(sc))' | k apply -f -
claim keep-me pvdir-local-retain | k apply -f -
pod keeper keep-me 'echo precious > /data/precious && exec sleep 100000' | k apply -f -
wait_until 90 "keeper Running" pod_running keeper
pv=$(pv_of keep-me)
wait_until 10 "the file is on the host" test -s "/var/lib/pvdir/volumes/$pv/precious"
k delete pod keeper --wait=true --timeout=60s
k delete pvc keep-me --wait=true --timeout=60s
wait_until 60 "PV $pv is Released" sh -c "[ \"\$(kubectl get pv $pv -o jsonpath='{.status.phase}')\" = Released ]"
k get pv "$pv"
check "its directory and data stay" grep -qx precious "/var/lib/pvdir/volumes/$pv/precious"

step "Released PV, README way 1: clear the old claim's UID and claim it again by name"
k patch pv "$pv" --type json -p '[{"op":"remove","path":"/spec/claimRef/uid"}]'
claim keep-me pvdir-local-retain | k apply -f -
pod keeper keep-me 'cat /data/precious && exec sleep 100000' | k apply -f -
wait_until 90 "keeper Running again" pod_running keeper
check "keep-me is bound to the same PV" [ "$(pv_of keep-me)" = "$pv" ]
check "the pod reads the kept data" [ "$(k exec keeper -- cat /data/precious)" = precious ]

step "Released PV, README way 2: set the policy to Delete and let pvdir remove it"
k delete pod keeper --wait=true --timeout=60s
k delete pvc keep-me --wait=true --timeout=60s
wait_until 60 "PV $pv is Released again" sh -c "[ \"\$(kubectl get pv $pv -o jsonpath='{.status.phase}')\" = Released ]"
k patch pv "$pv" -p '{"spec":{"persistentVolumeReclaimPolicy":"Delete"}}'
wait_gone 90 pv "$pv"
wait_until 30 "directory /var/lib/pvdir/volumes/$pv is gone" sh -c "! test -e /var/lib/pvdir/volumes/$pv"
