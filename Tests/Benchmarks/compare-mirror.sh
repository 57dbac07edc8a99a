#!/usr/bin/env bash
# Mirror figures (README, "Mirrors"; issue 13 item 7). Two nodes on this machine:
#   B: `actorblk serve` with one memory-backed null device, legb (the remote leg);
#   A: `actorblk bench --join=B --config=...`, which creates a local leg (lega, the same kind of
#      device) and md0, a mirror over lega and legb@B, in its own process and drives md0.
# Measured, 4k QD32 each: randwrite and randread on md0 against the same on legb alone, opened from
# a client node (`bench --join --device=legb`: the remote device alone, over NBD as the mirror's
# leg is). Then the resync: a new mirror over a blank legb is copied whole from lega (a `serve`
# node holding md0, polled with `actorblk sysfs`), against legb's sequential write rate at the
# resync's chunk size (64k) at QD1 (the resync copies one chunk at a time) and at QD32.
# Usage: Tests/Benchmarks/compare-mirror.sh   (from the repository root, after a Release build)
# Environment: RUNTIME (s, 10), RAMP (s, 10: --ramp_time, left out of the measured window: a fresh
# bench process pays a page fault per first write to a memory-backed leg, and .NET's tiered JIT
# recompiles the hot path for about 10 s; a profile with a 3 s ramp showed the JIT thread on 10-30%
# of a core inside the window), LEGSIZE (MiB, 256), PORT (B's Akka port, 4080; A's resync node
# uses PORT+1), NBDPORT (B's NBD port, 10840), SYNCMAX (the resync's sync-speed-max, KiB/s, 4000000).
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNTIME=${RUNTIME:-10}
LEGSIZE=${LEGSIZE:-256}
RAMP=${RAMP:-10}
PORT=${PORT:-4080}
NBDPORT=${NBDPORT:-10840}
SYNCMAX=${SYNCMAX:-4000000}
OUT=$PWD/Host/bin/Release/net10.0
for tool in python3; do
  command -v "$tool" >/dev/null || { echo "compare-mirror.sh: $tool is missing" >&2; exit 1; }
done
[[ -f "$OUT/actorblk.dll" ]] || { echo "compare-mirror.sh: no $OUT/actorblk.dll (dotnet build -c Release first)" >&2; exit 1; }

work=$(mktemp -d)
cleanup() {
  [[ -n "${sync_pid:-}" ]] && kill "$sync_pid" 2>/dev/null && wait "$sync_pid" 2>/dev/null || true
  [[ -n "${serve_pid:-}" ]] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

actorblk() { (cd "$work" && dotnet "$OUT/actorblk.dll" "$@"); }
leg="driver = \"null\", size = ${LEGSIZE}m, memory_backed = on, irqmode = 0, hw_queue_depth = 128, submit_queues = 1"

# B: the remote leg's node (the seed: the bench nodes join it and leave again).
{ cat hocon.conf; echo "actorblk.devices = [ { name = legb, $leg } ]"; } > "$work/b.conf"
cp "$work/b.conf" "$work/hocon.conf"   # the clients' remoting settings: the same as B's
dotnet "$OUT/actorblk.dll" serve --config "$work/b.conf" --port "$PORT" --nbd-listen "127.0.0.1:$NBDPORT" > "$work/b.log" 2>&1 &
serve_pid=$!
for _ in $(seq 1 600); do
  grep -q "Cluster device legb@127.0.0.1:$PORT: live" "$work/b.log" 2>/dev/null && break
  kill -0 "$serve_pid" 2>/dev/null || { cat "$work/b.log" >&2; exit 1; }
  sleep 0.2
done

# A's mirror, created by the bench in its own process: a local leg of the same kind and legb@B.
# assume-clean: both legs start blank (legb's metadata is wiped before each run), so no resync runs.
{ cat hocon.conf; echo "actorblk.devices = [ { name = lega, $leg } ]"
  echo "actorblk.stacked-devices = [ { name = md0, type = mirror, members = [lega, \"legb@127.0.0.1:$PORT\"], assume-clean = on } ]"; } > "$work/a.conf"

iops() { python3 -c 'import json,sys; t=sys.stdin.read(); j=json.JSONDecoder().raw_decode(t[t.index("{"):])[0]["jobs"][0]; print(int(j["read"]["iops"]+j["write"]["iops"]))'; }
kibs() { python3 -c 'import json,sys; t=sys.stdin.read(); j=json.JSONDecoder().raw_decode(t[t.index("{"):])[0]["jobs"][0]; print(int((j["read"]["bw_bytes"]+j["write"]["bw_bytes"])/1024))'; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
size=$((LEGSIZE - 1))m   # within the mirror's capacity (the leg less its 64 KiB metadata area)
workload() { echo --rw="$1" --bs=4k --iodepth=32 --size="$size" --runtime="$RUNTIME" --ramp_time="$RAMP" --output-format=json; }
# The mirror's metadata on legb (its first 64 KiB) overwritten, so the next mirror finds it blank.
wipe() { actorblk bench --join="127.0.0.1:$PORT" --device=legb --rw=write --bs=64k --iodepth=1 --size=64k --output-format=json > /dev/null 2> "$work/wipe.err" || { cat "$work/wipe.err" >&2; exit 1; }; }
run() {  # run NAME ARGS...: the bench's JSON in $work/NAME.json, its stderr in $work/NAME.err
  local name=$1; shift
  actorblk bench --join="127.0.0.1:$PORT" "$@" > "$work/$name.json" 2> "$work/$name.err" || { echo "bench $name failed:" >&2; cat "$work/$name.err" >&2; exit 1; }
}

echo "load before: $(uptime)"
run single-randwrite --device=legb $(workload randwrite)
run single-randread --device=legb $(workload randread)
wipe
run mirror-randwrite --config="$work/a.conf" --device=md0 $(workload randwrite)
wipe
run mirror-randread --config="$work/a.conf" --device=md0 $(workload randread)
grep -h "actorblk bench: md0" "$work/mirror-randread.err" || true

# Resync: a `serve` node holding a new mirror (not assume-clean) over a blank local leg and the
# wiped legb copies lega onto legb whole, at up to SYNCMAX KiB/s. md/sync_speed (the rate averaged
# over the pass so far, on the mirror's clock) is read until the pass ends; the last reading counts.
wipe
apport=$((PORT + 1))
{ cat hocon.conf; echo "actorblk.devices = [ { name = lega, $leg } ]"
  echo "actorblk.stacked-devices = [ { name = md0, type = mirror, members = [lega, \"legb@127.0.0.1:$PORT\"], sync-speed-max = $SYNCMAX } ]"; } > "$work/sync.conf"
dotnet "$OUT/actorblk.dll" serve --config "$work/sync.conf" --port "$apport" --seed "127.0.0.1:$PORT" --nbd-listen off > "$work/sync.log" 2>&1 &
sync_pid=$!
node="akka.tcp://actorblk@127.0.0.1:$apport"
md_speed=0; polls=0
for _ in $(seq 1 3000); do
  kill -0 "$sync_pid" 2>/dev/null || { cat "$work/sync.log" >&2; exit 1; }
  speed=$(actorblk sysfs --node "$node" cat block/md0/md/sync_speed 2>/dev/null || true)
  speed=${speed//[[:space:]]/}
  if [[ "$speed" =~ ^[0-9]+$ ]]; then
    md_speed=$speed; polls=$((polls + 1))
  elif [[ "$speed" == none ]] && grep -q "Serving md0" "$work/sync.log"; then
    break   # the resync is over (or never ran: see the readings' count)
  fi
done
kill "$sync_pid"; wait "$sync_pid" 2>/dev/null || true; sync_pid=

run seqwrite-qd1 --device=legb --rw=write --bs=64k --iodepth=1 --size="$size" --runtime="$RUNTIME" --output-format=json
run seqwrite-qd32 --device=legb --rw=write --bs=64k --iodepth=32 --size="$size" --runtime="$RUNTIME" --output-format=json
echo "load after: $(uptime)"

single_w=$(iops < "$work/single-randwrite.json"); single_r=$(iops < "$work/single-randread.json")
mirror_w=$(iops < "$work/mirror-randwrite.json"); mirror_r=$(iops < "$work/mirror-randread.json")
seq1=$(kibs < "$work/seqwrite-qd1.json"); seq32=$(kibs < "$work/seqwrite-qd32.json")
printf '%-48s %12s %12s %8s\n' "4k QD32" "remote alone" "mirror" "ratio"
printf '%-48s %12s %12s %8s\n' "randwrite IOPS (goal >= 0.8)" "$single_w" "$mirror_w" "$(ratio "$mirror_w" "$single_w")"
printf '%-48s %12s %12s %8s\n' "randread IOPS (goal >= 1.5)" "$single_r" "$mirror_r" "$(ratio "$mirror_r" "$single_r")"
echo "resync of ${LEGSIZE} MiB onto the remote leg: md/sync_speed ${md_speed} KiB/s (last of ${polls} readings)"
echo "remote leg's sequential write, 64k: QD1 ${seq1} KiB/s, QD32 ${seq32} KiB/s"
if [[ "$md_speed" -gt 0 ]]; then
  echo "resync / sequential write: $(ratio "$md_speed" "$seq1") of QD1, $(ratio "$md_speed" "$seq32") of QD32"
else
  echo "resync: over before the first reading (raise LEGSIZE)"
fi
