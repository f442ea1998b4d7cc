#!/usr/bin/env bash
# csi-sanity against the real pvdir binary on the local backend (real bind mounts: run as root).
#
# Starts the driver on a private socket and root, runs every csi-sanity spec that the driver's
# capabilities enable (no skip flags), prints the summary, then checks what csi-sanity cannot:
# nothing is left mounted, no volume is left behind, and SIGTERM shuts the driver down cleanly
# (exit 0, socket removed).
#
# Environment: PVDIR_BIN (default target/release/pvdir), CSI_SANITY (default: csi-sanity on
# PATH, else $(go env GOPATH)/bin/csi-sanity).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
bin=${PVDIR_BIN:-$top/target/release/pvdir}
sanity=${CSI_SANITY:-$(command -v csi-sanity || echo "$(go env GOPATH)/bin/csi-sanity")}
work=$(mktemp -d "${TMPDIR:-/tmp}/pvdir-sanity.XXXXXX")
driver_pid=

cleanup() {
    if [ -n "$driver_pid" ] && kill -0 "$driver_pid" 2>/dev/null; then
        kill -KILL "$driver_pid" 2>/dev/null || true
    fi
    # Unmount anything a failed run left, deepest first, before deleting the work dir.
    awk -v w="$work" '$5 ~ "^"w {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
        umount -l "$m" || true
    done
    [ -n "${KEEP_SANITY_OUT:-}" ] && cp "$work/sanity.out" "$KEEP_SANITY_OUT"
    rm -rf "$work"
}
trap cleanup EXIT

[ -x "$bin" ] || { echo "pvdir binary not found at $bin (cargo build --release first)"; exit 1; }
[ -x "$sanity" ] || { echo "csi-sanity not found (go install github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@v5.5.0)"; exit 1; }

"$bin" serve --mode all --local-endpoint "unix://$work/csi.sock" --local-root "$work/root" \
    --mount-staging-dir "$work/mounts" \
    --node-id sanity-node --log-format json 2>"$work/driver.log" &
driver_pid=$!
for _ in $(seq 100); do [ -S "$work/csi.sock" ] && break; sleep 0.1; done
[ -S "$work/csi.sock" ] || { echo "driver did not start:"; cat "$work/driver.log"; exit 1; }

status=0
"$sanity" --ginkgo.no-color --ginkgo.timeout=10m \
    --csi.endpoint "$work/csi.sock" \
    --csi.mountdir "$work/mnt" --csi.stagingdir "$work/stage" \
    --csi.testvolumesize 1073741824 --csi.testvolumeexpandsize 2147483648 ${SANITY_EXTRA:-} >"$work/sanity.out" 2>&1 || status=$?

grep -E '^\s*\[FAIL\]' "$work/sanity.out" || true
summary=$(grep -E '^(SUCCESS|FAIL)!' "$work/sanity.out" | tail -1)
ran=$(grep -E '^Ran [0-9]+ of [0-9]+ Specs' "$work/sanity.out" | tail -1)
echo "csi-sanity (local backend): $ran"
echo "csi-sanity (local backend): $summary"
if [ "$status" != 0 ]; then
    tail -n 80 "$work/sanity.out"
    echo "--- driver log (tail)"; tail -n 40 "$work/driver.log"
    exit "$status"
fi

# What csi-sanity does not check.
left=$(awk -v w="$work" '$5 ~ "^"w' /proc/self/mountinfo | wc -l)
[ "$left" = 0 ] || { echo "FAIL: $left mounts left behind under $work"; exit 1; }
vols=$(find "$work/root/volumes" "$work/root/meta" "$work/root/snapshots" "$work/root/snapmeta" "$work/root/groups" "$work/root/work" -mindepth 1 | wc -l)
[ "$vols" = 0 ] || { echo "FAIL: $vols volume files left behind"; find "$work/root"; exit 1; }

kill -TERM "$driver_pid"
rc=0
for _ in $(seq 100); do kill -0 "$driver_pid" 2>/dev/null || break; sleep 0.1; done
wait "$driver_pid" || rc=$?
driver_pid=
[ "$rc" = 0 ] || { echo "FAIL: driver exited $rc on SIGTERM"; exit 1; }
[ ! -e "$work/csi.sock" ] || { echo "FAIL: socket not removed on shutdown"; exit 1; }
echo "csi-sanity (local backend): no mounts or volumes left; SIGTERM shutdown clean"
passed=$(sed -nE 's/.* ([0-9]+) Passed.*/\1/p' <<<"$summary")
failed=$(sed -nE 's/.* ([0-9]+) Failed.*/\1/p' <<<"$summary")
echo "csi-sanity: ${passed:-0} passed, ${failed:-0} failed"
