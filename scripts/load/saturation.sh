#!/usr/bin/env bash
# saturation.sh: the highest REGISTER rate a relay answers, at least 99.9 % within 1 s, over
# UDP on loopback, for sipadmit with 1 and 2 workers and for a Kamailio stateless relay
# (kamailio_relay.cfg: Max-Forwards, the User-Agent check, Path) with 1 and 2 children.
#
# Behind each relay: examples/register_responder (200 OK to everything, nothing stored), so
# the registrar is not the bottleneck. SIPp sends RATE REGISTERs per second for --seconds
# seconds (distinct users, Lync 2013 User-Agent, scripts/load/register_within_1s.xml, no
# retransmissions); a call counts when its 200 comes back within 1 s. Rates are tried in
# the order given; the first that falls below 99.9 % ends that relay's run.
#
# Usage
#   cargo build --release --examples --bins
#   scripts/load/saturation.sh [--rates "2000 4000 ..."] [--seconds S] [--only NAME]
#     NAME: sipadmit-1, sipadmit-2, kamailio-1, kamailio-2
# Output: one line per rate tried, then per relay
#   RESULT relay=<name> saturation_per_s=<highest rate at >= 99.9 %> cpu_us_per_reg=<at that rate>
# Requires kamailio, sipp, ss and the release build of sipadmit and its examples.
# Bounded: every SIPp run has -timeout; every process started is stopped on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MPATH=${SIPADMIT_KAMAILIO_MODULES:-/usr/lib/x86_64-linux-gnu/kamailio/modules}
BIN="$ROOT/target/release"
RATES="2000 4000 6000 8000 10000 12000 14000 16000"
SECONDS_PER_RATE=5
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rates) RATES=${2:?}; shift 2 ;;
    --seconds) SECONDS_PER_RATE=${2:?}; shift 2 ;;
    --only) ONLY=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "saturation: unknown option $1" >&2; exit 2 ;;
  esac
done
KAMAILIO=$(command -v kamailio || echo /usr/sbin/kamailio)
[ -x "$KAMAILIO" ] || { echo "saturation: kamailio not installed" >&2; exit 2; }
SIPP=$(command -v sipp) || { echo "saturation: sipp not installed" >&2; exit 2; }
for b in sipadmit examples/register_responder; do
  [ -x "$BIN/$b" ] || { echo "saturation: $BIN/$b missing: cargo build --release --examples --bins" >&2; exit 2; }
done

WORK=$(mktemp -d /tmp/sipadmit-saturation.XXXXXX)
GROUPS_STARTED=()
stop_group() {
  kill -TERM -- "-$1" 2>/dev/null || return 0
  for _ in $(seq 1 30); do kill -0 -- "-$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL -- "-$1" 2>/dev/null || true
}
cleanup() { for g in "${GROUPS_STARTED[@]}"; do stop_group "$g"; done; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 40000 ))
    [ -z "$(ss -Hlun "( sport = :$p )")$(ss -Hltn "( sport = :$p )")" ] && { echo "$p"; return; }
  done
  echo "saturation: no free port" >&2; exit 2
}
start_group() { # log cmd... -> pgid
  local log=$1; shift
  setsid "$@" >"$log" 2>&1 </dev/null &
  # setsid does not fork here (a background job is no group leader): the
  # pid is the new group's id.
  echo "$!"
}
cpu_ticks_group() {
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v g="$1" '{ sub(/^[0-9]+ \(.*\) /, ""); if ($3 == g) t += $12 + $13 } END { print t + 0 }'
}
CLK_TCK=$(getconf CLK_TCK)
wait_answering() { # port log
  for _ in $(seq 1 40); do
    "$SIPP" "127.0.0.1:$1" -sf "$HERE/options_probe.xml" -key target "127.0.0.1:$1" -m 1 \
      -i 127.0.0.1 -p "$(free_port)" -t u1 -nostdin -timeout 2s -timeout_error \
      -recv_timeout 1500 >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  echo "saturation: nothing answers on $1; log:" >&2; tail -20 "$2" >&2; exit 1
}

RESPONDER_PORT=$(free_port)
GROUPS_STARTED+=("$(start_group "$WORK/responder.log" "$BIN/examples/register_responder" "127.0.0.1:$RESPONDER_PORT")")

start_relay() { # name port -> pgid
  local name=$1 port=$2
  case "$name" in
    sipadmit-*)
      sed -e "s/^\[proxy\]$/[proxy]\nworkers = ${name#sipadmit-}/" -e "s/^drain_secs = .*/drain_secs = 0/" "$ROOT/config/sipadmit.toml" > "$WORK/$name.toml"
      start_group "$WORK/$name.log" "$BIN/sipadmit" run --config "$WORK/$name.toml" \
        --listen "udp:127.0.0.1:$port" --upstream "udp:127.0.0.1:$RESPONDER_PORT" \
        --decision-log "$WORK/$name.decisions" ;;
    kamailio-*)
      sed -e "s#@LISTEN_UDP@#udp:127.0.0.1:$port#" -e "s#@UPSTREAM_PORT@#$RESPONDER_PORT#" \
          -e "s#@MPATH@#$MPATH#" -e "s#@CHILDREN@#${name#kamailio-}#g" \
          "$HERE/kamailio_relay.cfg" > "$WORK/$name.cfg"
      mkdir -p "$WORK/$name-run"
      start_group "$WORK/$name.log" "$KAMAILIO" -DD -E -f "$WORK/$name.cfg" \
        -Y "$WORK/$name-run" -w "$WORK" -m 64 -M 8 ;;
  esac
}

one_rate() { # name port rate pgid -> "ok total cpu_us"
  local name=$1 port=$2 rate=$3 g=$4 d="$WORK/$1-$3"
  local calls=$(( rate * SECONDS_PER_RATE ))
  mkdir -p "$d"
  awk -v n="$calls" -v p="$name$rate" 'BEGIN { print "SEQUENTIAL"; for (i = 1; i <= n; i++) printf "%s-%07d;%012d;\n", p, i, i }' > "$d/users.csv"
  local c0 c1
  c0=$(cpu_ticks_group "$g")
  ( cd "$d" && timeout -s KILL "$(( SECONDS_PER_RATE + 30 ))" "$SIPP" "127.0.0.1:$port" -sf "$HERE/register_within_1s.xml" -inf "$d/users.csv" \
      -m "$calls" -r "$rate" -rp 1000 -l "$(( rate * 2 ))" -nr \
      -i 127.0.0.1 -p "$(free_port)" -t u1 -nostdin -timeout "$(( SECONDS_PER_RATE + 20 ))s" \
      -trace_stat -stf "$d/stat.csv" -fd 1 >"$d/sipp.out" 2>&1 ) || true
  c1=$(cpu_ticks_group "$g")
  local ok
  ok=$(awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next } { last = $0 }
      END { split(last, f, ";"); print f[c["SuccessfulCall(C)"]] + 0 }' "$d/stat.csv" 2>/dev/null || echo 0)
  echo "$ok $calls $(awk -v a="$c0" -v b="$c1" -v n="$calls" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (b - a) * 1e6 / hz / n }')"
}

for name in sipadmit-1 sipadmit-2 kamailio-1 kamailio-2; do
  [ -z "$ONLY" ] || [ "$ONLY" = "$name" ] || continue
  port=$(free_port)
  g=$(start_relay "$name" "$port")
  GROUPS_STARTED+=("$g")
  wait_answering "$port" "$WORK/$name.log"
  best=0; best_cpu="-"
  for rate in $RATES; do
    read -r ok calls cpu <<< "$(one_rate "$name" "$port" "$rate" "$g")"
    pct=$(awk -v o="$ok" -v c="$calls" 'BEGIN { printf "%.2f", 100 * o / c }')
    echo "$name rate=$rate answered_within_1s=$ok/$calls ($pct %) cpu_us_per_reg=$cpu" >&2
    if awk -v o="$ok" -v c="$calls" 'BEGIN { exit !(o >= 0.999 * c) }'; then best=$rate; best_cpu=$cpu; else break; fi
  done
  echo "RESULT relay=$name saturation_per_s=$best cpu_us_per_reg=$best_cpu"
  stop_group "$g"
done
