#!/usr/bin/env bash
# The copy benchmark's NFS row (benches/copy.rs in the VM, see guest/copy-bench.sh): builds the
# bench and the driver on the host, then boots the guest once. Not part of .ci/run (a
# benchmark, not a test); its table is in README, "Snapshot and restore beside tar.gz".
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
cargo build --release --bin pvdir
mkdir -p target/vm
cargo bench --bench copy --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*\/copy-[^"]*\)".*/\1/p' >target/vm/copy-bench
[ -s target/vm/copy-bench ] || { echo "could not build the copy benchmark"; exit 1; }
# The guest holds the export's 3.2 GiB in memory (see the guest script).
PVDIR_VM_MEMORY_MIB=10240 tests/vm/run.sh tests/vm/guest/copy-bench.sh 3000
