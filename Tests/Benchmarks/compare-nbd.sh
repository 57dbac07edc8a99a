#!/usr/bin/env bash
# Side-by-side NBD figures (README, "NBD"):
#   1. our export (`actorblk serve`, a memory-backed null device) vs `nbdkit memory` of the same
#      size, both driven by fio's nbd engine: 4k randread QD32, randwrite QD32, randread QD1;
#   2. our NBD client driver (`actorblk bench --device nbd://...`) vs fio's nbd engine, both
#      against our export: 4k randread QD32.
# Usage: Tests/Benchmarks/compare-nbd.sh   (from the repository root, after a Release build)
# Environment: RUNTIME (s, 10), SIZE (1g), PORT (ours, 10820), KITPORT (nbdkit, 10821),
#   WARMUP (s, 3): each workload first runs this long against both servers, unmeasured, so the
#   figures are steady state (our export's first seconds are spent in the JIT's tiering).
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNTIME=${RUNTIME:-10}
WARMUP=${WARMUP:-3}
SIZE=${SIZE:-1g}
PORT=${PORT:-10820}
KITPORT=${KITPORT:-10821}
ACTORBLK=${ACTORBLK:-Host/bin/Release/net10.0/actorblk}
for tool in fio nbdkit nbdinfo python3; do
  command -v "$tool" >/dev/null || { echo "compare-nbd.sh: $tool is missing (apt-get install fio nbdkit libnbd-bin)" >&2; exit 1; }
done

work=$(mktemp -d)
cleanup() {
  [[ -n "${serve_pid:-}" ]] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null || true
  [[ -n "${kit_pid:-}" ]] && kill "$kit_pid" 2>/dev/null && wait "$kit_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Our node: the repository's hocon.conf with one memory-backed null device completing inline.
cat hocon.conf > "$work/node.conf"
cat >> "$work/node.conf" <<CONF
actorblk.devices = [
  { name = nbd0, driver = "null", size = $SIZE, memory_backed = on, irqmode = 0, hw_queue_depth = 128, submit_queues = 2 }
]
CONF
"$ACTORBLK" serve --config "$work/node.conf" --port 0 --nbd-listen "127.0.0.1:$PORT" > "$work/serve.log" 2>&1 &
serve_pid=$!
nbdkit -f -i 127.0.0.1 -p "$KITPORT" memory "$SIZE" &
kit_pid=$!
for _ in $(seq 1 300); do
  nbdinfo --size "nbd://127.0.0.1:$PORT/nbd0" >/dev/null 2>&1 && nbdinfo --size "nbd://127.0.0.1:$KITPORT/" >/dev/null 2>&1 && break
  sleep 0.2
done

# fio prints "connected to NBD server" before its JSON.
iops() { python3 -c 'import json,sys; t=sys.stdin.read(); j=json.loads(t[t.index("{"):])["jobs"][0]; print(int(j["read"]["iops"]+j["write"]["iops"]))'; }
fio_nbd() { # uri rw qd [runtime]
  fio --name=nbd --ioengine=nbd --uri="$1" --rw="$2" --bs=4k --iodepth="$3" --size="$SIZE" \
      --runtime="${4:-$RUNTIME}" --time_based --output-format=json 2>/dev/null | iops
}
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

if [[ "$WARMUP" != 0 ]]; then
  for spec in "randread 32" "randwrite 32" "randread 1"; do
    set -- $spec
    fio_nbd "nbd://127.0.0.1:$PORT/nbd0" "$1" "$2" "$WARMUP" >/dev/null
    fio_nbd "nbd://127.0.0.1:$KITPORT/" "$1" "$2" "$WARMUP" >/dev/null
  done
fi

echo "load before: $(uptime)"
printf '%-20s %14s %14s %8s\n' workload "actorblk IOPS" "nbdkit IOPS" ratio
for spec in "randread 32" "randwrite 32" "randread 1"; do
  set -- $spec
  ours=$(fio_nbd "nbd://127.0.0.1:$PORT/nbd0" "$1" "$2")
  kit=$(fio_nbd "nbd://127.0.0.1:$KITPORT/" "$1" "$2")
  printf '%-20s %14s %14s %8s\n' "$1 QD$2" "$ours" "$kit" "$(ratio "$ours" "$kit")"
done

# Client side: our nbd driver vs fio's nbd engine against the same export (one connection each).
fio_side=$(fio_nbd "nbd://127.0.0.1:$PORT/nbd0" randread 32)
bench_out=$("$ACTORBLK" bench --device "nbd://127.0.0.1:$PORT/nbd0" --rw=randread --bs=4k --iodepth=32 \
            --runtime="$RUNTIME" --size="$SIZE" --submit-queues=1 --hw-queue-depth=32 2>&1)
driver_side=$(echo "$bench_out" | python3 -c '
import re,sys
t=sys.stdin.read()
m=re.search(r"IOPS=([0-9.]+)([kM]?)", t)
print(int(float(m.group(1))*{"":1,"k":1e3,"M":1e6}[m.group(2)]) if m else 0)')
printf '%-20s %14s %14s %8s\n' "client randread QD32" "$driver_side" "$fio_side" "$(ratio "$driver_side" "$fio_side")"
echo "(client row: actorblk nbd driver IOPS, fio nbd engine IOPS)"
echo "load after: $(uptime)"
