# In the VM: what quotas cost local volumes, on XFS with and without prjquota (loop devices
# on the guest's memory; software emulation, so absolute figures are several times the
# host's: compare the rows with each other). Not part of the test suite; run it with
#   cargo bench --bench scale --no-run && cargo build --release --bin pvdir
#   tests/vm/run.sh tests/vm/guest/quota-bench.sh 3600
# 1. benches/scale.rs (create, publish, unpublish, delete at 10, 1,000 and 10,000 volumes);
# 2. 500 volumes provisioned by 8 clients through the real binary (`pvdir load`, creates
#    only, `quota: required` where the filesystem has quotas).
set -euo pipefail
here=$(dirname "$(realpath "$0")")
top=$(cd "$here/../../.." && pwd)
cd "$top"
modprobe loop
modprobe xfs
mkdir -p /fs
bench=$(ls -t target/release/deps/scale-* | grep -v '\.d$' | head -1)
sizes=${PVDIR_BENCH_SIZES:-10,1000,10000}
for fs in xfs xfs-noquota; do
    truncate -s 16G "/fs/$fs.img"
    mkfs.xfs -q -f "/fs/$fs.img"
    mkdir -p "/mnt/$fs"
    case $fs in
        xfs) mount -o loop,prjquota "/fs/$fs.img" "/mnt/$fs"; quota=required ;;
        *) mount -o loop "/fs/$fs.img" "/mnt/$fs"; quota=off ;;
    esac
    echo "== $fs: benches/scale.rs"
    mkdir -p "/mnt/$fs/scale"
    PVDIR_BENCH_DIR=/mnt/$fs/scale PVDIR_BENCH_SIZES=$sizes PVDIR_BENCH_ROUNDS=200 \
        PVDIR_BENCH_LOADED=1000 "$bench" --bench
    echo "== $fs: 500 volumes, 8 clients, quota: $quota"
    work=/mnt/$fs/load
    mkdir -p "$work"
    target/release/pvdir serve --mode all --local-endpoint "unix://$work/csi.sock" \
        --local-root "$work/root" --mount-staging-dir "$work/mounts" --node-id vm \
        --log-format json 2>"$work/driver.log" &
    driver=$!
    started=$(date +%s.%N)
    target/release/pvdir load --endpoint "unix://$work/csi.sock" --clients 8 \
        --mix create=1 --operations 500 --volumes-per-client 100 --size 64Mi \
        --param "quota=$quota" --progress off --json "$work/report.json"
    ended=$(date +%s.%N)
    echo "500 creates and their teardown: $(echo "$ended - $started" | bc) s wall"
    kill -TERM "$driver"; wait "$driver" || true
done
