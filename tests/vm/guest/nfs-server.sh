# Sourced by guest scripts: start the kernel NFS server exporting a tmpfs at /srv/export to
# 127.0.0.1, over NFSv4 as the pseudo root (fsid=0: v4 clients mount 127.0.0.1:/) and over
# NFSv3 by its path (127.0.0.1:/srv/export). The overlay root itself cannot be exported.
nfs_server_start() {
    ip link set lo up
    modprobe nfsd
    modprobe nfsv4
    modprobe nfsv3
    mkdir -p /srv/export /var/lib/nfs/v4recovery
    mountpoint -q /srv/export || mount -t tmpfs -o size=512m tmpfs /srv/export
    mountpoint -q /proc/fs/nfsd || mount -t nfsd nfsd /proc/fs/nfsd
    # The default 90 s grace period would stall every first OPEN of the run.
    echo 10 >/proc/fs/nfsd/nfsv4gracetime
    echo 10 >/proc/fs/nfsd/nfsv4leasetime
    echo "/srv/export 127.0.0.1(rw,sync,no_subtree_check,no_root_squash,fsid=0)" >/etc/exports
    exportfs -ra
    # NFSv3 needs rpcbind (clients find mountd and nfsd through it); v4 does not.
    pgrep -x rpcbind >/dev/null || rpcbind -w
    pgrep -x rpc.mountd >/dev/null || rpc.mountd --no-udp
    rpc.nfsd 4
    nfs_end_grace
}

# A fresh server holds every new OPEN for its grace period (letting old clients reclaim
# state); there are none to wait for here.
nfs_end_grace() {
    echo Y >/proc/fs/nfsd/v4_end_grace
}

# Two more exports inside the first, reached as 127.0.0.1:/squash and 127.0.0.1:/volatile:
# - squash has root_squash: root on the client becomes nobody, as on many real NFS servers;
# - volatile is a plain directory that tests may recreate (restore from backup), which makes
#   every client file handle on it stale.
nfs_server_add_sub_exports() {
    mkdir -p /srv/export/squash /srv/export/volatile
    mountpoint -q /srv/export/squash || mount -t tmpfs -o size=64m,mode=0755 tmpfs /srv/export/squash
    cat >/etc/exports <<EXPORTS
/srv/export 127.0.0.1(rw,sync,no_subtree_check,no_root_squash,fsid=0,crossmnt)
/srv/export/squash 127.0.0.1(rw,sync,no_subtree_check,root_squash,fsid=2)
/srv/export/volatile 127.0.0.1(rw,sync,no_subtree_check,no_root_squash,fsid=3)
EXPORTS
    exportfs -ra
}

nfs_server_stop() {
    rpc.nfsd 0
}
