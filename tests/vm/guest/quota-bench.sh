# In the VM: what quotas cost local volumes, on XFS with and without prjquota (loop devices
# on the guest's memory; software emulation, so absolute figures are several times the
# host's: compare the rows with each other). Not part of the test suite; run it with
#   cargo bench --bench scale --no-run && cargo build --release --bin pvdir
#   tests/vm/run.sh tests/vm/guest/quota-bench.sh 3600
# 1. benches/scale.rs (create, publish, unpublish, delete at 10, 1,000 and 10,000 volumes);
# 2. 500 volumes provisioned by 8 clients through the real binary (`pvdir load --prefill`,
#    `quota: required` where the filesystem has quotas), then deleted.
# PVDIR_BENCH_SCALE=0 (in target/vm/bench-env) skips the first.
set -euo pipefail
here=$(dirname "$(realpath "$0")")
top=$(cd "$here/../../.." && pwd)
cd "$top"
modprobe loop
modprobe xfs
mkdir -p /fs
bench=$(ls -t target/release/deps/scale-* | grep -v '\.d$' | head -1)
sizes=${PVDIR_BENCH_SIZES:-10,1000,10000}
# The guest gets no environment from the host: settings come through a file.
[ -f target/vm/bench-env ] && source target/vm/bench-env
for fs in xfs xfs-noquota; do
    truncate -s 16G "/fs/$fs.img"
    mkfs.xfs -q -f "/fs/$fs.img"
    mkdir -p "/mnt/$fs"
    case $fs in
        xfs) mount -o loop,prjquota "/fs/$fs.img" "/mnt/$fs"; quota=required ;;
        *) mount -o loop "/fs/$fs.img" "/mnt/$fs"; quota=off ;;
    esac
    if [ "${PVDIR_BENCH_SCALE:-1}" != 0 ]; then
        echo "== $fs: benches/scale.rs"
        mkdir -p "/mnt/$fs/scale"
        PVDIR_BENCH_DIR=/mnt/$fs/scale PVDIR_BENCH_SIZES=$sizes PVDIR_BENCH_ROUNDS=200 \
            PVDIR_BENCH_LOADED=1000 "$bench" --bench
    fi
    echo "== $fs: 500 volumes, 8 clients, quota: $quota"
    work=/mnt/$fs/load
    mkdir -p "$work"
    target/release/pvdir serve --mode all --local-endpoint "unix://$work/csi.sock" \
        --local-root "$work/root" --mount-staging-dir "$work/mounts" --node-id vm \
        --log-format json 2>"$work/driver.log" &
    driver=$!
    target/release/pvdir probe --wait --endpoint "unix://$work/csi.sock" >/dev/null
    started=$(date +%s.%N)
    target/release/pvdir load --endpoint "unix://$work/csi.sock" --clients 8 --prefill 500 \
        --mix create=1,delete=1 --operations 8 --size 16Mi --param "quota=$quota" \
        --progress off --json "$work/report.json" >"$work/load.out"
    ended=$(date +%s.%N)
    grep -i "prefilled\|error\|lost" "$work/load.out" || true
    echo "500 volumes made, 8 more operations, all deleted: $(echo "$ended - $started" | bc) s wall"
    kill -TERM "$driver"; wait "$driver" || true
done
