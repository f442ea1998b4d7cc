# In the VM: benches/copy.rs on the NFS backend (its path in target/vm/copy-bench, built by
# tests/vm/copy-bench.sh), with kernel nfsd exporting an XFS made with reflink as
# 127.0.0.1:/, so pvdir's copies are NFS 4.2 COPYs that the server turns into reflinks, and
# csi-driver-nfs's tar runs through the controller's NFS mount. The tree is smaller than the
# host rows' (200 MiB in 2,000 files): the guest has 2 GiB of memory, its disk lives in it, and
# every CPU cycle is emulated, so times here compare with each other, not with the host's.
set -euo pipefail
here=$(dirname "$(realpath "$0")")
top=$(cd "$here/../../.." && pwd)
modprobe loop
modprobe xfs
mkdir -p /fs /srv/export
# Sparse: only what is written takes the guest's memory.
truncate -s 2G /fs/export.img
mkfs.xfs -q -f -m reflink=1 /fs/export.img
mount -o loop /fs/export.img /srv/export
source "$here/nfs-server.sh"
nfs_server_start
cd "$top"
PVDIR_BENCH_NFS_EXPORT=/srv/export PVDIR_BENCH_LABEL="NFS 4.2 on XFS reflink (VM)" \
    PVDIR_BENCH_FILES=2000 PVDIR_BENCH_BYTES=$((200 << 20)) \
    PVDIR_BENCH_BINARY="$top/target/release/pvdir" "$(cat target/vm/copy-bench)"
