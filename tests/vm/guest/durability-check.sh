# Boot 2 of tests/vm/durability.sh: after the reset, the restarted driver's view of the disk.
set -euo pipefail
source "$(dirname "$(realpath "$0")")/durability-lib.sh"
mount_disk
echo "CONTROLS-LEFT $(find /mnt/disk -maxdepth 1 -name 'control-*' | wc -l)"
start_driver
"$pvdir" list --endpoint "$endpoint" | awk 'NR > 1 { print "LISTED " $1 }'
for d in /mnt/disk/pvdir/volumes/*; do [ -d "$d" ] && echo "DIR $(basename "$d")"; done
for r in /mnt/disk/pvdir/meta/*.json; do [ -s "$r" ] && echo "RECORD $(basename "$r" .json)"; done
kill %1
wait %1 || true
umount /mnt/disk
