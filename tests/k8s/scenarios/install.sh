# The install, as README gives it: `kubectl apply -k deploy/`, then both drivers up,
# registered with kubelet by pvdir itself, and the node's capacity published. Through
# tests/k8s/offline, which leaves out the csi-resizer sidecars (their image can be neither
# pulled nor built offline) and the NFS controller's csi-snapshotter (see its
# kustomization.yaml).
# shellcheck shell=bash

step "install: the VolumeSnapshot CRDs and the snapshot-controller (a cluster add-on, README)"
# Built from external-snapshotter's release by build.sh: its CRDs and its own manifests, with
# distributed snapshotting on as README says (local snapshots are taken on their node, and the
# controller must read nodes for it), one replica, and pinned to node-1 (node-2 joins later and does not carry its image).
k apply -f "$PVDIR_K8S_BIN/snapshot-crds.yaml"
k wait --for condition=established --timeout=60s \
    crd/volumesnapshotclasses.snapshot.storage.k8s.io \
    crd/volumesnapshotcontents.snapshot.storage.k8s.io crd/volumesnapshots.snapshot.storage.k8s.io
k create --dry-run=client -o json -f "$PVDIR_K8S_BIN/snapshot-controller.yaml" | python3 -c '
import json, sys
# kubectl prints one JSON document per object.
text, items, dec, at = sys.stdin.read(), [], json.JSONDecoder(), 0
while text[at:].strip():
    at += len(text[at:]) - len(text[at:].lstrip())
    doc, at = dec.raw_decode(text, at)
    items.extend(doc["items"] if doc.get("kind") == "List" else [doc])
for o in items:
    if o["kind"] == "Deployment" and o["metadata"]["name"] == "snapshot-controller":
        o["spec"]["replicas"] = 1
        spec = o["spec"]["template"]["spec"]
        spec["nodeSelector"] = {"kubernetes.io/hostname": "node-1"}
        c = spec["containers"][0]
        c["args"].append("--enable-distributed-snapshotting")
        c["imagePullPolicy"] = "IfNotPresent"
    # The rule the RBAC file of the release leaves commented out, for distributed snapshotting.
    if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "snapshot-controller-runner":
        o["rules"].append({"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]})
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))' | k apply -f -
k -n kube-system rollout status deployment/snapshot-controller --timeout=120s

step "install: kubectl apply -k deploy/ (less the resizer sidecars)"
"$CLUSTER" require-images "$ROOT/tests/k8s/offline"
k apply -k "$ROOT/tests/k8s/offline" 2>&1 | tee "$LOG_DIR/apply.log"
# kubectl prints API warnings (duplicate port names, deprecated fields) on stderr as
# "Warning: ..."; a user must see none.
if grep -i 'warning' "$LOG_DIR/apply.log"; then
    fail "kubectl apply -k deploy/ printed warnings"
fi
ok "no warnings"

step "install: every pvdir pod Ready"
k -n pvdir rollout status daemonset/pvdir-node --timeout=120s
k -n pvdir rollout status statefulset/pvdir-controller --timeout=120s
k -n pvdir get pods -o wide
node_pod_containers=$(jsonpath pod "$(k -n pvdir get pod -l app.kubernetes.io/component=node -o name | head -n1 | cut -d/ -f2)" '{.spec.containers[*].name}' pvdir)
echo "node pod containers: $node_pod_containers"
check "the node pod is pvdir, csi-provisioner and csi-snapshotter" \
    [ "$node_pod_containers" = "pvdir csi-provisioner csi-snapshotter" ]

step "install: kubelet lists both drivers, registered by pvdir itself"
wait_until 60 "CSINode node-1 lists local.pvdir.io and nfs.pvdir.io" both_registered node-1
k get csinode node-1 -o jsonpath='{range .spec.drivers[*]}{.name}{"\t"}{.nodeID}{"\t"}{.topologyKeys}{"\n"}{end}'
check "the registration sockets are pvdir's" \
    test -S /var/lib/kubelet/plugins_registry/local.pvdir.io-reg.sock -a \
    -S /var/lib/kubelet/plugins_registry/nfs.pvdir.io-reg.sock
check "node-1 carries the topology label" \
    [ "$(jsonpath node node-1 '{.metadata.labels.topology\.pvdir\.io/node}')" = node-1 ]

step "install: a CSIStorageCapacity for pvdir-local with node-1's topology"
wait_until 60 "CSIStorageCapacity for pvdir-local on node-1" capacity_for node-1
k -n pvdir get csistoragecapacities -o custom-columns=NAME:.metadata.name,CLASS:.storageClassName,CAPACITY:.capacity,TOPOLOGY:.nodeTopology.matchLabels

step "install: /healthz answers on the node's port"
check "GET :29741/healthz is 200" curl -fsS --max-time 5 http://10.250.0.1:29741/healthz
