# With node-2 up: its node plugin is deploy/'s DaemonSet pod, and a pvdir-local claim's pod
# always lands on the node that holds its volume.
# shellcheck shell=bash

step "two nodes: node-2 runs deploy/'s node plugin, registered by pvdir itself"
k -n pvdir rollout status daemonset/pvdir-node --timeout=180s
k -n pvdir get pods -o wide
wait_until 60 "CSINode node-2 lists local.pvdir.io and nfs.pvdir.io" both_registered node-2
wait_until 90 "CSIStorageCapacity for pvdir-local on node-2" capacity_for node-2

# placed_pod NAME CLAIM [NODE]: a busybox pod on the claim, pinned to NODE if given.
placed_pod() {
    pod "$1" "$2" 'exec sleep 100000' | python3 -c '
import sys
text = sys.stdin.read()
node = sys.argv[1]
if node:
    text = text.replace("spec:\n", "spec:\n  nodeSelector: {kubernetes.io/hostname: %s}\n" % node, 1)
print(text)' "${3:-}"
}

step "two nodes: the scheduler keeps a claim off a node whose disk cannot hold it"
# node-2's local root is a tmpfs of about 1 GiB; its CSIStorageCapacity says so.
claim too-big pvdir-local ReadWriteOnce 4Gi | k apply -f -
placed_pod too-big too-big node-2 | k apply -f -
too_big_refused() {
    kubectl get events --field-selector involvedObject.name=too-big,reason=FailedScheduling \
        -o jsonpath='{.items[*].message}' | grep -q 'did not have enough free storage'
}
wait_until 60 "too-big is refused for lack of storage" too_big_refused
k get events --field-selector involvedObject.name=too-big -o custom-columns=REASON:.reason,MESSAGE:.message
k delete pod too-big --wait=true --timeout=60s
k delete pvc too-big --wait=true --timeout=60s

for node in node-1 node-2; do
    step "two nodes: a pvdir-local claim made on $node keeps its pods on $node"
    placed_pod "first-on-$node" "local-on-$node" "$node" >"$LOG_DIR/first-on-$node.yaml"
    claim "local-on-$node" pvdir-local ReadWriteOnce 100Mi | k apply -f -
    k apply -f "$LOG_DIR/first-on-$node.yaml"
    wait_until 120 "first-on-$node Running" pod_running "first-on-$node"
    pv=$(pv_of "local-on-$node")
    check "$pv is on $node" [ "$(jsonpath pv "$pv" '{.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}')" = "$node" ]
    k delete pod "first-on-$node" --wait=true --timeout=90s
    for round in 1 2; do
        name="free-$round-on-$node"
        placed_pod "$name" "local-on-$node" | k apply -f -
        wait_until 120 "$name Running" pod_running "$name"
        check "$name, placed by the scheduler alone, is on $node" \
            [ "$(jsonpath pod "$name" '{.spec.nodeName}')" = "$node" ]
        k delete pod "$name" --wait=true --timeout=90s
    done
    k delete pvc "local-on-$node" --wait=true --timeout=90s
    wait_gone 90 pv "$pv"
done
