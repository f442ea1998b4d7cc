# VolumeSnapshots on pvdir-local, as README shows them: a snapshot of a web claim, a claim
# restored from it and a clone of the claim, each read from a pod. The sidecars are the real
# csi-snapshotter (in the node DaemonSet, --node-deployment) and snapshot-controller, built
# from their release by build.sh.
# shellcheck shell=bash

snapshot_ready() { [ "$(jsonpath volumesnapshot "$1" '{.status.readyToUse}')" = true ]; }
logs_say() { k logs "$1" 2>/dev/null | grep -qx "$2"; }

step "snapshots: the VolumeSnapshotClass from deploy/examples"
k apply -f "$ROOT/deploy/examples/snapshot-class-local.yaml"

step "snapshots: a VolumeSnapshot of www-web-0"
k exec web-0 -- sh -c 'echo before-snapshot > /usr/share/nginx/html/snap'
cat <<YAML | k apply -f -
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: www-web-0-monday}
spec:
  volumeSnapshotClassName: pvdir-local
  source: {persistentVolumeClaimName: www-web-0}
YAML
wait_until 120 "www-web-0-monday readyToUse" snapshot_ready www-web-0-monday
k get volumesnapshot,volumesnapshotcontent -o wide
content=$(jsonpath volumesnapshot www-web-0-monday '{.status.boundVolumeSnapshotContentName}')
handle=$(jsonpath volumesnapshotcontent "$content" '{.status.snapshotHandle}')
echo "snapshot handle: $handle"
check "the handle is a pvdir snapshot on node-1" [ "${handle#v1#snap#local#node-1#}" != "$handle" ]
key=${handle##*#}
check "its copy is in pvdir's area on node-1" grep -qx before-snapshot "/var/lib/pvdir/snapshots/$key/data/snap"
k exec web-0 -- sh -c 'echo after-snapshot > /usr/share/nginx/html/snap'

step "snapshots: a claim restored from the snapshot, read from a pod"
cat <<YAML | k apply -f -
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: www-restored}
spec:
  storageClassName: pvdir-local
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: www-web-0-monday}
YAML
pod restored-reader www-restored 'cat /data/snap; cat /data/hello; exec sleep 100000' | k apply -f -
wait_until 120 "restored-reader Running" pod_running restored-reader
wait_until 30 "the restore holds the content at snapshot time" logs_say restored-reader before-snapshot
check "and web-0's older file" sh -c "kubectl logs restored-reader | grep -q 'hello from web-0 '"

step "snapshots: a clone of www-web-0, read from a pod"
cat <<YAML | k apply -f -
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: www-copy}
spec:
  storageClassName: pvdir-local
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
  dataSource: {kind: PersistentVolumeClaim, name: www-web-0}
YAML
pod copy-reader www-copy 'cat /data/snap; exec sleep 100000' | k apply -f -
wait_until 120 "copy-reader Running" pod_running copy-reader
wait_until 30 "the clone holds the claim's current content" logs_say copy-reader after-snapshot
k get pvc www-restored www-copy -o wide

step "snapshots: deleting the snapshot leaves the restore; the copies are independent"
k delete volumesnapshot www-web-0-monday --wait=true --timeout=60s
wait_gone 60 volumesnapshotcontent "$content"
wait_until 30 "the snapshot's copy is gone from node-1" sh -c "! test -e /var/lib/pvdir/snapshots/$key"
check "the restore still reads" sh -c "kubectl exec restored-reader -- cat /data/snap | grep -qx before-snapshot"
k exec copy-reader -- sh -c 'echo changed-in-copy > /data/snap'
check "a write to the clone leaves the source" \
    sh -c "kubectl exec web-0 -- cat /usr/share/nginx/html/snap | grep -qx after-snapshot"
for p in restored-reader copy-reader; do k delete pod "$p" --wait=true --timeout=60s; done
for c in www-restored www-copy; do
    pv=$(pv_of "$c")
    k delete pvc "$c" --wait=true --timeout=60s
    wait_gone 60 pv "$pv"
done
ok "snapshots, restores and clones through the real sidecars"
