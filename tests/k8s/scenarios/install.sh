# The install, as README gives it: `kubectl apply -k deploy/`, then both drivers up,
# registered with kubelet by pvdir itself, and the node's capacity published. Through
# tests/k8s/offline, which leaves out only the csi-resizer sidecars: their image can be
# neither pulled nor built offline (see its kustomization.yaml).
# shellcheck shell=bash

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
check "the node pod is pvdir and csi-provisioner only" [ "$node_pod_containers" = "pvdir csi-provisioner" ]

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
