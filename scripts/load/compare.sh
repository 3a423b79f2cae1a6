#!/usr/bin/env bash
# compare.sh: CPU per relayed call (loopback, Kamailio 5.6 as the registrar) of
# sipadmit, of a Kamailio stateless relay doing the same job (kamailio_relay.cfg: Max-Forwards,
# the User-Agent check, Path, Record-Route) and of the floor (examples/floor_relay.rs: one Via
# spliced in, no parsing), side by side, with the ratios the performance targets name; for
# each scenario of register_latency.sh: a Lync 2013 REGISTER (register), and the 7.6 KB Lync
# 2013 INVITE answered 486 by the registrar, then its ACK (invite).
#
# Each round runs register_latency.sh twice per scenario (sipadmit and the Kamailio relay in
# one run, the floor in another, against the same registrar config); --rounds rounds,
# medians printed.
#
# Usage
#   cargo build --release --bins --examples
#   scripts/load/compare.sh [--calls N] [--rate R] [--rounds K] [--workers W]
#                           [--scenarios "register invite"] [--transports "udp tcp"]
#                           [--pin-relay CPU] [--sipadmit BIN]
#     defaults: 20000 calls at 2000/s, 3 rounds, sipadmit with 1 worker, both scenarios,
#     clients over UDP and over TCP (one SIPp connection; the relays reach the registrar
#     over UDP; the floor frames TCP by Content-Length, a thread per connection);
#     --pin-relay CPU runs each relay on that CPU and SIPp and the registrar on the others
#     (register_latency.sh --pin-relay); --sipadmit BIN measures that sipadmit binary
#     (default target/release/sipadmit; target/pgo/use/release/sipadmit for the build of
#     scripts/pgo-build.sh)
# Output: per round one line, then per transport and scenario
#   RESULT transport=.. scenario=.. sipadmit_us=.. kamailio_relay_us=.. floor_us=.. sipadmit_over_kamailio=.. sipadmit_over_floor=..
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN="$ROOT/target/release"
CALLS=20000; RATE=2000; ROUNDS=3; WORKERS=1; SCENARIOS="register invite"; TRANSPORTS="udp tcp"
PIN=()
SIPADMIT="$BIN/sipadmit"
while [ $# -gt 0 ]; do
  case "$1" in
    --calls) CALLS=${2:?}; shift 2 ;;
    --rate) RATE=${2:?}; shift 2 ;;
    --rounds) ROUNDS=${2:?}; shift 2 ;;
    --workers) WORKERS=${2:?}; shift 2 ;;
    --scenarios) SCENARIOS=${2:?}; shift 2 ;;
    --transports) TRANSPORTS=${2:?}; shift 2 ;;
    --pin-relay) PIN=(--pin-relay "${2:?}"); shift 2 ;;
    --sipadmit) SIPADMIT=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare: unknown option $1" >&2; exit 2 ;;
  esac
done
for b in "$SIPADMIT" "$BIN/examples/floor_relay"; do
  [ -x "$b" ] || { echo "compare: $b missing: cargo build --release --bins --examples" >&2; exit 2; }
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/compare-run.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

relay_cpu() { # file phase: the relay's CPU per call, only from a phase where every call succeeded
  awk -v p="$2" '$1 == "RESULT" && $2 == "phase=" p && / failed=0 / { for (i = 3; i <= NF; i++) if ($i ~ /^relay_cpu_us_per_reg=/) { sub(/.*=/, "", $i); print $i } }' "$1"
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

for transport in $TRANSPORTS; do
floor_tcp=""; [ "$transport" = tcp ] && floor_tcp="--tcp"
for scenario in $SCENARIOS; do
  rm -f "$WORK/s" "$WORK/k" "$WORK/f"
  for round in $(seq 1 "$ROUNDS"); do
    "$HERE/register_latency.sh" "${PIN[@]}" --transport "$transport" --scenario "$scenario" --sipadmit "$SIPADMIT" \
      --workers "$WORKERS" --with-kamailio-relay --calls "$CALLS" --rate "$RATE" \
      > "$WORK/sipadmit-$round.txt" 2>&1 || true
    "$HERE/register_latency.sh" "${PIN[@]}" --transport "$transport" --scenario "$scenario" \
      --proxy-cmd "$BIN/examples/floor_relay $floor_tcp 127.0.0.1:@PROXY_PORT@ 127.0.0.1:@KAMAILIO_PORT@" \
      --calls "$CALLS" --rate "$RATE" > "$WORK/floor-$round.txt" 2>&1 || true
    s=$(relay_cpu "$WORK/sipadmit-$round.txt" proxy); k=$(relay_cpu "$WORK/sipadmit-$round.txt" kamrelay)
    f=$(relay_cpu "$WORK/floor-$round.txt" proxy)
    if [ -z "$s" ] || [ -z "$k" ] || [ -z "$f" ]; then
      echo "compare: $transport $scenario round $round incomplete:" >&2
      grep -h -e '^RESULT phase=' -e 'register_latency:' "$WORK/sipadmit-$round.txt" "$WORK/floor-$round.txt" >&2; exit 1
    fi
    echo "$transport $scenario round $round: sipadmit $s us, kamailio relay $k us, floor $f us per call" >&2
    echo "$s" >> "$WORK/s"; echo "$k" >> "$WORK/k"; echo "$f" >> "$WORK/f"
  done
  S=$(median < "$WORK/s"); K=$(median < "$WORK/k"); F=$(median < "$WORK/f")
  awk -v t="$transport" -v sc="$scenario" -v s="$S" -v k="$K" -v f="$F" 'BEGIN { printf "RESULT transport=%s scenario=%s sipadmit_us=%s kamailio_relay_us=%s floor_us=%s sipadmit_over_kamailio=%.2f sipadmit_over_floor=%.2f\n", t, sc, s, k, f, s / k, s / f }'
done
done
