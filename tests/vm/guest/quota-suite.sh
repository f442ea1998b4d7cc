# In the VM: local volumes on filesystems with project quotas, which this machine's kernel
# lacks. Makes three loop-mounted filesystems on the guest's tmpfs and runs tests/vm_quota.rs
# (built on the host; its path is in target/vm/quota-test) with TMPDIR on each, so every
# driver's root is on it; then csi-sanity on the local backend with its root on XFS.
#   xfs          mkfs.xfs, mounted -o prjquota
#   ext4         mkfs.ext4 -O project,quota, mounted -o prjquota
#   xfs-noquota  mkfs.xfs, mounted without quota options
#   xfs-noreflink  mkfs.xfs -m reflink=0, without quota options
# tests/vm_copy.rs (snapshots and restores; its path is in target/vm/copy-test) runs on xfs
# (reflink: blocks shared), xfs-noreflink and ext4 (blocks copied).
set -euo pipefail
here=$(dirname "$(realpath "$0")")
top=$(cd "$here/../../.." && pwd)
cd "$top"
modprobe loop
modprobe xfs
modprobe ext4 2>/dev/null || true
# ext4 keeps its quota files in the QFMT_VFS_V1 format: without it a prjquota mount is ESRCH.
modprobe quota_v2
mkdir -p /fs
# The images are sparse, so only what is written takes the guest's memory. csi-sanity asks
# for 1 GiB volumes grown to 2 GiB, and pvdir promises no more than the disk holds: XFS gets
# 16 GiB. XFS needs at least 300 MiB.
make_fs() {
    local name=$1 img=/fs/$1.img size=$2
    truncate -s "$size" "$img"
    case $name in
        xfs | xfs-noquota) mkfs.xfs -q -f -m reflink=1 "$img" ;;
        xfs-noreflink) mkfs.xfs -q -f -m reflink=0 "$img" ;;
        ext4) mkfs.ext4 -q -F -O project,quota -I 256 "$img" ;;
    esac
    mkdir -p "/mnt/$name"
    case $name in
        xfs-noquota | xfs-noreflink) mount -o loop "$img" "/mnt/$name" ;;
        *) mount -o loop,prjquota "$img" "/mnt/$name" ;;
    esac
    echo "== $name: $(grep " /mnt/$name " /proc/mounts)"
}
make_fs xfs 16G
make_fs ext4 4G
make_fs xfs-noquota 320M
make_fs xfs-noreflink 6G

bin=$(cat target/vm/quota-test)
status=0
for fs in xfs ext4; do
    echo "== vm_quota on $fs"
    TMPDIR=/mnt/$fs PVDIR_VM_QUOTA_FS=$fs "$bin" --ignored --test-threads=1 --nocapture || status=1
done
echo "== vm_quota on xfs-noquota"
TMPDIR=/mnt/xfs-noquota PVDIR_VM_QUOTA_FS=xfs-noquota "$bin" --ignored --test-threads=1 \
    --nocapture without_prjquota || status=1

copy=$(cat target/vm/copy-test)
for fs in xfs xfs-noreflink ext4; do
    echo "== vm_copy on $fs"
    TMPDIR=/mnt/$fs PVDIR_VM_COPY_FS=$fs "$copy" --ignored --test-threads=1 --nocapture || status=1
done

echo "== csi-sanity, local backend on XFS with prjquota"
TMPDIR=/mnt/xfs CSI_SANITY=${CSI_SANITY:-/root/go/bin/csi-sanity} bash tests/csi-sanity.sh || status=1
exit "$status"
