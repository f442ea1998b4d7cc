#!/usr/bin/env bash
# Durability across a power cut: boot 1 creates and deletes volumes through the real driver on
# a virtual ext4 disk and then hard-resets the guest (sysrq b: no sync, no unmount), with
# writeback and ext4's own journal commits held back so that anything pvdir did not make
# durable is lost; boot 2 restarts the driver on the same disk. The restarted driver must show
# exactly the acknowledged state: every acknowledged create, none of the acknowledged deletes,
# a directory and a record for each volume and nothing else. A control (directories made after
# the last acknowledgement, never synced) must be gone, or the reset lost nothing.
# What the reset models is the loss of the guest's page cache. The virtual disk itself keeps
# whatever reached it (QEMU writes through to this machine), so a disk's own volatile cache is
# not modelled; pvdir's flushes are what such a disk needs anyway.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
work=target/vm/durability
rm -rf "$work"
mkdir -p "$work"
truncate -s 256M "$work/disk.img"
mkfs.ext4 -q -F "$work/disk.img"
PVDIR_VM_DISK="$work/disk.img" tests/vm/run.sh tests/vm/guest/durability-write.sh 600 | tee "$work/write.out"
PVDIR_VM_DISK="$work/disk.img" tests/vm/run.sh tests/vm/guest/durability-check.sh 600 | tee "$work/check.out"

field() { sed -n "s/^$1 //p" "$2" | sort; }
field ACK-CREATE "$work/write.out" >"$work/created"
field ACK-DELETE "$work/write.out" >"$work/deleted"
comm -23 "$work/created" "$work/deleted" >"$work/expected"
field LISTED "$work/check.out" >"$work/listed"
# Directories and records are named by the key, the ID's last field.
sed 's/.*#//' "$work/expected" >"$work/expected-keys"
field DIR "$work/check.out" >"$work/dirs"
field RECORD "$work/check.out" >"$work/records"
controls=$(field CONTROLS-LEFT "$work/check.out")

fail=0
[ "$(wc -l <"$work/created")" = 40 ] && [ "$(wc -l <"$work/deleted")" = 15 ] \
    || { echo "durability: boot 1 did not acknowledge 40 creates and 15 deletes"; fail=1; }
[ "$controls" = 0 ] || { echo "durability: $controls of 20 unsynced control directories survived: the reset lost nothing, so this proves nothing"; fail=1; }
for what in listed:expected dirs:expected-keys records:expected-keys; do
    got=${what%%:*} want=${what#*:}
    if ! diff -u "$work/$want" "$work/$got" >"$work/$got.diff"; then
        echo "durability: $got after the reset differ from the acknowledged state:"
        cat "$work/$got.diff"
        fail=1
    fi
done
[ "$fail" = 0 ] && echo "durability: $(wc -l <"$work/expected") volumes as acknowledged after the reset (40 created, 15 deleted; 20 unsynced controls lost)"
exit "$fail"
