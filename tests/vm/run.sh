#!/usr/bin/env bash
# Boot Debian's kernel under qemu (software emulation) with this machine's root shared read-only
# over 9p and a tmpfs overlay on top, run one guest script in it, and exit with its status.
#
#   tests/vm/run.sh GUEST_SCRIPT [TIMEOUT_SECONDS]
#
# PVDIR_VM_DISK names a raw image to attach as the guest's /dev/vda; PVDIR_VM_MEMORY_MIB the
# guest's memory (default 2048). A guest script may end the boot itself with a hard reset
# after printing its PVDIR-VM-EXIT status.
#
# The guest sees the very binaries just built (target/release/pvdir, csi-sanity, nfs-utils),
# because it runs on the host's own root. It has the kernel NFS client and server, which the
# host kernel lacks. A guest that overruns TIMEOUT_SECONDS (default 900) is killed.
# Needs: qemu-system-x86, linux-image-amd64, busybox-static (see tests/setup.sh).
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
script=$(realpath "$1")
limit=${2:-900}
work="$top/target/vm"
mkdir -p "$work"

kernel=$(ls -1 /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -1)
[ -n "$kernel" ] || { echo "no /boot/vmlinuz-*-amd64: apt-get install linux-image-amd64"; exit 1; }
kver=${kernel#/boot/vmlinuz-}
command -v qemu-system-x86_64 >/dev/null || { echo "apt-get install qemu-system-x86"; exit 1; }
[ -x /bin/busybox ] || { echo "apt-get install busybox-static"; exit 1; }

# The initramfs: busybox, and the modules needed to mount the 9p root and the overlay (in
# dependency order, as modprobe resolves them). Everything else the guest loads from the
# shared root with modprobe.
initrd="$work/initrd-$kver.gz"
if [ ! -s "$initrd" ] || [ "$0" -nt "$initrd" ] || [ "$top/tests/vm/init" -nt "$initrd" ]; then
    stage=$(mktemp -d)
    mkdir -p "$stage"/{bin,modules,proc,sys,dev,host,rw,newroot}
    cp /bin/busybox "$stage/bin/busybox"
    cp "$top/tests/vm/init" "$stage/init"
    chmod +x "$stage/init"
    for m in virtio_pci 9pnet_virtio 9p overlay; do
        modprobe -S "$kver" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
    done | awk '!seen[$0]++' | while read -r ko; do
        cp "$ko" "$stage/modules/"
        basename "$ko" >>"$stage/modules/order"
    done
    (cd "$stage" && find . | cpio -o -H newc 2>/dev/null | gzip -1 >"$initrd")
    rm -rf "$stage"
fi

log="$work/$(basename "$script" .sh).console.log"
# Boots take about 5 s; under TCG one in a few dozen hangs in the firmware with no output.
# Such a boot is killed after boot_limit and retried once, so it cannot cost the whole bound.
boot_limit=90
disk=()
if [ -n "${PVDIR_VM_DISK:-}" ]; then
    disk=(-drive "file=$PVDIR_VM_DISK,format=raw,if=virtio,cache=writeback")
fi
echo "vm: booting $kver for $(basename "$script") (bound ${limit}s, console in $log)"
started=$(date +%s)
boot() {
    # KVM exists on these machines but guests hang under it: software emulation only.
    timeout --kill-after=10 "$limit" qemu-system-x86_64 -accel tcg -m "${PVDIR_VM_MEMORY_MIB:-2048}" -smp 2 \
        -nographic -no-reboot -nic none ${disk[@]+"${disk[@]}"} \
        -kernel "$kernel" -initrd "$initrd" \
        -append "console=ttyS0 quiet panic=-1 pvdir.script=$script" \
        -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
        </dev/null >"$log" 2>&1 &
    pid=$!
    for _ in $(seq "$boot_limit"); do
        grep -q 'VM: running' "$log" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    if ! grep -q 'VM: running' "$log" && kill -0 "$pid" 2>/dev/null; then
        echo "vm: no guest after ${boot_limit}s; killing this boot"
        kill "$pid"
        wait "$pid"
        return 200
    fi
    wait "$pid"
}
set +e
boot
qemu=$?
if [ "$qemu" = 200 ]; then
    boot
    qemu=$?
fi
set -e
took=$(( $(date +%s) - started ))
# The guest's own output, without the firmware's screen noise.
tr -d '\r' <"$log" | sed -n '/VM: running/,$p' | sed 's/^.*VM: running/VM: running/' \
    | grep -v '^\[ *[0-9.]*\] \(sysrq\|reboot\)' || true
status=$(tr -d '\r' <"$log" | sed -n 's/^PVDIR-VM-EXIT=\([0-9]*\)$/\1/p' | tail -1)
if [ "$qemu" = 200 ]; then
    echo "vm: the guest did not boot twice in a row"
    exit 1
fi
if [ "$qemu" = 124 ] || [ "$qemu" = 137 ]; then
    echo "vm: guest killed after ${limit}s"
    exit 124
fi
if [ -z "$status" ]; then
    echo "vm: guest ended without a status (qemu exit $qemu); console tail:"
    tail -n 40 "$log"
    exit 1
fi
echo "vm: $(basename "$script") exited $status after ${took}s"
exit "$status"
