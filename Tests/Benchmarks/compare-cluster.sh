#!/usr/bin/env bash
# Cluster figures (README, "Cluster"): one device, 4k randread QD32, driven three ways:
#   1. remote: `actorblk bench --join` on a client node, through a local queue on the NBD client
#      driver connected to the owner's export (one connection);
#   2. local: `actorblk bench` on the same kind of device created in its own process;
#   3. fio's nbd engine against the owner's export (one connection).
# Usage: Tests/Benchmarks/compare-cluster.sh   (from the repository root, after a Release build)
# Environment: RUNTIME (s, 10), SIZE (1g), PORT (owner's Akka port, 4070), NBDPORT (10830).
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNTIME=${RUNTIME:-10}
SIZE=${SIZE:-1g}
PORT=${PORT:-4070}
NBDPORT=${NBDPORT:-10830}
OUT=Host/bin/Release/net10.0
for tool in fio nbdinfo python3; do
  command -v "$tool" >/dev/null || { echo "compare-cluster.sh: $tool is missing (apt-get install fio libnbd-bin)" >&2; exit 1; }
done

work=$(mktemp -d)
cleanup() {
  [[ -n "${serve_pid:-}" ]] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The owner: the repository's hocon.conf with one memory-backed null device completing inline.
device="name = nbd0, driver = \"null\", size = $SIZE, memory_backed = on, irqmode = 0, hw_queue_depth = 128, submit_queues = 1"
{ cat hocon.conf; echo "actorblk.devices = [ { $device } ]"; } > "$work/owner.conf"
cp "$work/owner.conf" "$work/hocon.conf"
dotnet "$OUT/actorblk.dll" serve --config "$work/owner.conf" --port "$PORT" --nbd-listen "127.0.0.1:$NBDPORT" > "$work/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 1 300); do
  nbdinfo --size "nbd://127.0.0.1:$NBDPORT/nbd0" >/dev/null 2>&1 && break
  sleep 0.2
done

iops() { python3 -c 'import json,sys; t=sys.stdin.read(); j=json.loads(t[t.index("{"):])["jobs"][0]; print(int(j["read"]["iops"]+j["write"]["iops"]))'; }
owner() { python3 -c 'import json,sys; t=sys.stdin.read(); print(json.loads(t[t.index("{"):])["actorblk"]["cluster"]["owner"])'; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
workload=(--rw=randread --bs=4k --iodepth=32 --size="$SIZE" --runtime="$RUNTIME" --output-format=json)

echo "load before: $(uptime)"
# The client finds hocon.conf in its working directory: the owner's, so it speaks the same remoting.
(cd "$work" && dotnet "$OLDPWD/$OUT/actorblk.dll" bench --join="127.0.0.1:$PORT" --device=nbd0 "${workload[@]}") > "$work/remote.json" 2> "$work/remote.err"
remote=$(iops < "$work/remote.json")
echo "remote device owned by $(owner < "$work/remote.json")"
local_iops=$(dotnet "$OUT/actorblk.dll" bench --device=null --memory-backed=1 --irqmode=0 --hw-queue-depth=128 "${workload[@]}" 2>/dev/null | iops)
fio_iops=$(fio --name=nbd --ioengine=nbd --uri="nbd://127.0.0.1:$NBDPORT/nbd0" --rw=randread --bs=4k --iodepth=32 --size="$SIZE" \
  --runtime="$RUNTIME" --time_based --output-format=json 2>/dev/null | iops)
echo "load after: $(uptime)"
printf '%-34s %10s\n' "randread 4k QD32" IOPS
printf '%-34s %10s\n' "remote (bench --join, NBD)" "$remote"
printf '%-34s %10s\n' "local (bench, same device kind)" "$local_iops"
printf '%-34s %10s\n' "fio nbd engine, owner's export" "$fio_iops"
echo "remote / fio nbd: $(ratio "$remote" "$fio_iops") (goal >= 0.9); remote / local: $(ratio "$remote" "$local_iops")"
