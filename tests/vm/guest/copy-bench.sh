# In the VM: benches/copy.rs on the NFS backend (its path in target/vm/copy-bench, built by
# tests/vm/copy-bench.sh), with kernel nfsd exporting an XFS made with reflink as
# 127.0.0.1:/, so pvdir's copies are NFS 4.2 clones or COPYs that the server turns into
# reflinks, and csi-driver-nfs's tar runs through the controller's NFS mount. The tree is the
# host rows' (1 GiB in 10,000 files); the export's image lives in a tmpfs of the guest, which
# tests/vm/copy-bench.sh boots with the memory that takes. Every CPU cycle is emulated, so
# times here compare with each other, not with the host's.
set -euo pipefail
here=$(dirname "$(realpath "$0")")
top=$(cd "$here/../../.." && pwd)
modprobe loop
modprobe xfs
mkdir -p /fs /srv/export
# The tree, the tar.gz and its unpacking (the copies share the tree's blocks): about 3.2 GiB.
mount -t tmpfs -o size=6g tmpfs /fs
# Sparse: only what is written takes the guest's memory.
truncate -s 5G /fs/export.img
mkfs.xfs -q -f -m reflink=1 /fs/export.img
mount -o loop /fs/export.img /srv/export
source "$here/nfs-server.sh"
nfs_server_start
cd "$top"
PVDIR_BENCH_NFS_EXPORT=/srv/export PVDIR_BENCH_LABEL="NFS 4.2 on XFS reflink (VM)" \
    PVDIR_BENCH_FILES=10000 PVDIR_BENCH_BYTES=$((1 << 30)) \
    PVDIR_BENCH_BINARY="$top/target/release/pvdir" "$(cat target/vm/copy-bench)"
