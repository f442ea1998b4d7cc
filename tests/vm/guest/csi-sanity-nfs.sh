# In the VM: csi-sanity against the real pvdir binary on the NFS backend, with the kernel NFS
# server exporting 127.0.0.1:/ and the kernel NFS client doing every mount.
set -euo pipefail
here=$(dirname "$(realpath "$0")")
top=$(cd "$here/../../.." && pwd)
source "$here/nfs-server.sh"
nfs_server_start

bin=${PVDIR_BIN:-$top/target/release/pvdir}
sanity=${CSI_SANITY:-$(command -v csi-sanity || echo /root/go/bin/csi-sanity)}
work=$(mktemp -d /tmp/sanity-nfs.XXXXXX)
cat >"$work/params.yaml" <<PARAMS
server: 127.0.0.1
share: /
mountPermissions: "0777"
PARAMS
# A VolumeAttributesClass's parameters: CreateVolume applies them, ControllerModifyVolume
# changes them (csi-sanity's ModifyVolume specs run only with some).
cat >"$work/mutable.yaml" <<PARAMS
mountPermissions: "0775"
PARAMS

"$bin" serve --mode all --nfs-endpoint "unix://$work/csi.sock" --nfs-staging-dir "$work/staging" \
    --mount-staging-dir "$work/mounts" --nfs-export "server=127.0.0.1;share=/" \
    --node-id vm-node --nfs-timeout-secs 30 --log-format json 2>"$work/driver.log" &
driver=$!
for _ in $(seq 100); do [ -S "$work/csi.sock" ] && break; sleep 0.1; done

status=0
"$sanity" --ginkgo.no-color --ginkgo.timeout=20m \
    --csi.endpoint "$work/csi.sock" \
    --csi.mountdir "$work/mnt" --csi.stagingdir "$work/stage" \
    --csi.testvolumeparameters "$work/params.yaml" \
    --csi.testvolumemutableparameters "$work/mutable.yaml" \
    --csi.testvolumesize 1073741824 --csi.testvolumeexpandsize 2147483648 >"$work/sanity.out" 2>&1 || status=$?
grep -E '^\s*\[FAIL\]' "$work/sanity.out" || true
summary=$(grep -E '^(SUCCESS|FAIL)!' "$work/sanity.out" | tail -1)
echo "csi-sanity (NFS backend, in VM): $(grep -E '^Ran [0-9]+ of' "$work/sanity.out" | tail -1)"
echo "csi-sanity (NFS backend, in VM): $summary"
if [ "$status" != 0 ]; then
    grep -B2 -A25 '\[FAILED\]' "$work/sanity.out" | head -150
    echo "--- driver log (tail)"; tail -n 30 "$work/driver.log"
fi
# What csi-sanity does not check: nothing left mounted, no volume, snapshot or record left on
# the export.
left=$(awk -v w="$work/mnt" '$5 ~ "^"w' /proc/self/mountinfo | wc -l)
[ "$left" = 0 ] || { echo "FAIL: $left mounts left behind"; status=1; }
# pvdir's own directories may stay, holding nothing but the markers of directories it made.
vols=$(find /srv/export -mindepth 1 -not -path '/srv/export/.pvdir' \
    -not -path '/srv/export/.pvdir/snapshots' -not -path '/srv/export/.pvdir/snapmeta' \
    -not -path '/srv/export/.pvdir/work' -not -name .pvdir-owned | wc -l)
[ "$vols" = 0 ] || { echo "FAIL: volumes left on the export:"; find /srv/export -mindepth 1; status=1; }
kill -TERM "$driver"; wait "$driver" || { echo "FAIL: driver did not stop cleanly"; status=1; }
passed=$(sed -nE 's/.* ([0-9]+) Passed.*/\1/p' <<<"$summary")
failed=$(sed -nE 's/.* ([0-9]+) Failed.*/\1/p' <<<"$summary")
echo "csi-sanity NFS: ${passed:-0} passed, ${failed:-0} failed"
exit "$status"
