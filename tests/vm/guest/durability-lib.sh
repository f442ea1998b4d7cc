# Shared by the two boots of tests/vm/durability.sh: the disk, and a local-backend driver on it.
here=$(dirname "$(realpath "$0")")
top=$(cd "$here/../../.." && pwd)
pvdir="$top/target/release/pvdir"
sock=/run/pvdir-durability.sock
endpoint="unix://$sock"

mount_disk() {
    modprobe virtio_blk
    modprobe ext4 2>/dev/null || true # built in, on some kernels
    for _ in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done
    mkdir -p /mnt/disk
    # commit=3600: ext4 commits its own journal only when something syncs, so what pvdir does
    # not sync stays in memory until the reset, as at the worst moment of a power cut.
    mount -t ext4 -o commit=3600 /dev/vda /mnt/disk
}

start_driver() {
    "$pvdir" serve --mode controller --local-endpoint "$endpoint" \
        --local-root /mnt/disk/pvdir --mount-staging-dir /run/pvdir-mounts \
        --node-id vm --log warn &
    for _ in $(seq 300); do
        "$pvdir" probe --endpoint "$endpoint" --timeout-secs 5 >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "the driver did not start"
    return 1
}
