#!/usr/bin/env bash
# Runs the same workload through fio and through `actorblk bench`, alternating, and prints
# each side's median IOPS and p50/p99 latency and the ratio actorblk/fio.
#
#   compare-fio.sh null        null device vs fio's null engine (framework overhead)
#   compare-fio.sh file        file device vs fio's io_uring engine on the same file
#
# Knobs (environment): RW=randread BS=4k QD=32 JOBS=1 RUNTIME=5 ROUNDS=3 DIRECT=1
#                      FILE=/var/tmp/actorblk-bench.img SIZE=1G EXTRA="--dispatch ring"
#                      PAIRS=1 also prints each round's pair (fio, actorblk, ratio)
# Run from the project root. Needs fio (apt-get install fio) and python3.
# This is the project's shared comparison script (README, "Benchmarking"), kept in the repository
# so that a clone can reproduce README's figures; PAIRS is the one addition.
set -euo pipefail
kind=${1:?usage: compare-fio.sh null|file}
RW=${RW:-randread} BS=${BS:-4k} QD=${QD:-32} JOBS=${JOBS:-1} RUNTIME=${RUNTIME:-5}
ROUNDS=${ROUNDS:-3} DIRECT=${DIRECT:-1} SIZE=${SIZE:-1G} EXTRA=${EXTRA:-} PAIRS=${PAIRS:-0}
FILE=${FILE:-/var/tmp/actorblk-bench.img}
command -v fio >/dev/null || { echo "fio is missing: apt-get install -y fio" >&2; exit 2; }

dotnet build Host -c Release -v q -nologo >/dev/null
actorblk=(dotnet run --project Host -c Release --no-build --)

common=(--rw="$RW" --bs="$BS" --iodepth="$QD" --numjobs="$JOBS" --runtime="$RUNTIME" --size="$SIZE")
case "$kind" in
  null)
    fio_cmd=(fio --name=cmp --ioengine=null --time_based --group_reporting --lat_percentiles=1 "${common[@]}" --output-format=json)
    blk_cmd=("${actorblk[@]}" bench --device null --irqmode=0 "${common[@]}" --output-format=json $EXTRA) ;;
  file)
    [ -f "$FILE" ] || fio --name=prep --filename="$FILE" --size="$SIZE" --rw=write --bs=1M --direct=1 --ioengine=psync >/dev/null
    fio_cmd=(fio --name=cmp --filename="$FILE" --ioengine=io_uring --direct="$DIRECT" --time_based --group_reporting --lat_percentiles=1 "${common[@]}" --output-format=json)
    blk_cmd=("${actorblk[@]}" bench --device "file:$FILE" --direct="$DIRECT" "${common[@]}" --output-format=json $EXTRA) ;;
  *) echo "unknown kind: $kind" >&2; exit 2 ;;
esac

out=$(mktemp -d)
for i in $(seq 1 "$ROUNDS"); do
  "${fio_cmd[@]}" > "$out/fio.$i.json" 2>/dev/null
  "${blk_cmd[@]}" > "$out/blk.$i.json" 2>"$out/blk.$i.err" || { cat "$out/blk.$i.err" >&2; exit 1; }
done

python3 - "$out" "$ROUNDS" "$RW" "$PAIRS" <<'EOF'
import json, statistics, sys
d, rounds, rw, pairs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
side = "write" if "write" in rw and "read" not in rw else "read"
def load(p):
    j = json.load(open(p))["jobs"][0][side]
    pct = j["lat_ns"].get("percentile") or j.get("clat_ns", {}).get("percentile", {})
    return j["iops"], pct.get("50.000000"), pct.get("99.000000")
rows = {k: [load(f"{d}/{k}.{i}.json") for i in range(1, rounds + 1)] for k in ("fio", "blk")}
med = {k: [statistics.median(x[n] for x in v if x[n] is not None) if any(x[n] is not None for x in v) else None for n in range(3)] for k, v in rows.items()}
for k, name in (("fio", "fio"), ("blk", "actorblk")):
    iops, p50, p99 = med[k]
    print(f"{name:9s} iops={iops:,.0f} p50_ns={p50} p99_ns={p99}")
ratios = [b[0] / f[0] for f, b in zip(rows["fio"], rows["blk"])]
if pairs:
    for i, (f, b) in enumerate(zip(rows["fio"], rows["blk"]), 1):
        print(f"pair {i}: fio iops={f[0]:,.0f} actorblk iops={b[0]:,.0f} ratio={b[0] / f[0]:.3f}")
print(f"ratio actorblk/fio iops (median of {rounds} paired runs): {statistics.median(ratios):.3f}")
EOF
