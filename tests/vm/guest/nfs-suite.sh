# In the VM: the NFS integration tests (tests/vm_nfs*.rs, built on the host; their paths are in
# target/vm/tests) against kernel nfsd on 127.0.0.1, run one at a time since some stop and
# restart the server.
set -euo pipefail
here=$(dirname "$(realpath "$0")")
top=$(cd "$here/../../.." && pwd)
source "$here/nfs-server.sh"
nfs_server_start
nfs_server_add_sub_exports
cd "$top"
# tests/vm_nfs_chaos.rs's long mode, as suite.sh was given it.
kills=$(cat target/vm/soak-kills 2>/dev/null || true)
[ -z "$kills" ] || export PVDIR_SOAK_KILLS="$kills"
[ -s target/vm/tests ] || { echo "no tests listed in target/vm/tests: run tests/vm/suite.sh"; exit 1; }
while read -r bin; do
    echo "== $(basename "$bin")"
    PVDIR_VM_EXPORT=/srv/export "$bin" --ignored --test-threads=1 --nocapture
done <target/vm/tests
