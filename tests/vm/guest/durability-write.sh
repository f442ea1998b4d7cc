# Boot 1 of tests/vm/durability.sh: creates and deletes through the real driver on a fresh ext4
# disk, each acknowledgement printed as it arrives, then a reset with nothing synced.
set -euo pipefail
source "$(dirname "$(realpath "$0")")/durability-lib.sh"
mount_disk
# No background writeback: what is not synced explicitly is lost by the reset.
sysctl -qw vm.dirty_writeback_centisecs=0 vm.dirty_expire_centisecs=360000
start_driver
ids=()
for i in $(seq 1 40); do
    id=$("$pvdir" create "pvc-durable-$i" --endpoint "$endpoint" --size 1Mi --node vm | tail -n1)
    echo "ACK-CREATE $id"
    ids+=("$id")
done
for i in $(seq 0 2 29); do
    "$pvdir" delete "${ids[$i]}" --endpoint "$endpoint" >/dev/null
    echo "ACK-DELETE ${ids[$i]}"
done
# The control: directories made after the last acknowledgement and never synced. If they
# survive the reset, it lost nothing, and the test proves nothing.
for i in $(seq 1 20); do mkdir "/mnt/disk/control-$i"; done
echo "PVDIR-VM-EXIT=0"
sleep 2 # the console drains; nothing is written back (see above)
echo b >/proc/sysrq-trigger
