# ReadWriteOncePod: a second pod on the claim does not start, and says why.
# shellcheck shell=bash

step "rwop: a second pod on a ReadWriteOncePod claim stays Pending"
claim single-writer pvdir-local ReadWriteOncePod | k apply -f -
pod writer-1 single-writer 'date >> /data/log && exec sleep 100000' | k apply -f -
wait_until 90 "writer-1 Running" pod_running writer-1
pod writer-2 single-writer 'date >> /data/log && exec sleep 100000' | k apply -f -
rwop_refused() {
    kubectl get events --field-selector involvedObject.name=writer-2 \
        -o jsonpath='{range .items[*]}{.reason}: {.message}{"\n"}{end}' | grep -q ReadWriteOncePod
}
wait_until 60 "an event on writer-2 names ReadWriteOncePod" rwop_refused
k get events --field-selector involvedObject.name=writer-2 -o custom-columns=REASON:.reason,MESSAGE:.message
sleep 3
check "writer-2 is still Pending" [ "$(jsonpath pod writer-2 '{.status.phase}')" = Pending ]
check "writer-1 wrote once" [ "$(k exec writer-1 -- cat /data/log | wc -l)" = 1 ]
k delete pod writer-1 writer-2 --wait=true --timeout=60s
k delete pvc single-writer --wait=true --timeout=60s
