#!/usr/bin/env bash
# The whole VM suite: build what the guest runs (it sees this machine's root), then boot once
# per guest script. Each boot is bounded; the first failure stops the suite.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
cargo build --release --bin pvdir
# The NFS integration tests are built here; the guest only runs them.
mkdir -p target/vm
cargo test --release --test vm_nfs --test vm_nfs_faults --test vm_nfs_crashes --test vm_nfs_chaos \
    --test vm_nfs_snapshot --no-run \
    --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*\/vm_nfs[a-z_]*-[^"]*\)".*/\1/p' >target/vm/tests
[ "$(wc -l <target/vm/tests)" -eq 5 ] || { echo "could not build the vm_nfs tests"; exit 1; }
# Local volumes' quotas on XFS and ext4 (tests/vm_quota.rs, run by quota-suite.sh).
cargo test --release --test vm_quota --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*\/vm_quota-[^"]*\)".*/\1/p' >target/vm/quota-test
[ -s target/vm/quota-test ] || { echo "could not build the vm_quota tests"; exit 1; }
# Snapshots and restores on XFS with and without reflink and on ext4 (tests/vm_copy.rs, run
# by quota-suite.sh too).
cargo test --release --test vm_copy --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*\/vm_copy-[^"]*\)".*/\1/p' >target/vm/copy-test
[ -s target/vm/copy-test ] || { echo "could not build the vm_copy tests"; exit 1; }
# The guest gets no environment from here: the chaos soak's long mode (PVDIR_SOAK_KILLS)
# reaches it through a file beside the test list.
echo "${PVDIR_SOAK_KILLS:-}" >target/vm/soak-kills
started=$(date +%s)
tests/vm/run.sh tests/vm/guest/csi-sanity-nfs.sh 1200
tests/vm/run.sh tests/vm/guest/nfs-suite.sh 900
tests/vm/run.sh tests/vm/guest/quota-suite.sh 900
# Two boots on a virtual ext4 disk, with a hard reset between them.
tests/vm/durability.sh
echo "vm suite: wall time $(( $(date +%s) - started ))s"
