#!/usr/bin/env bash
# edge_abuse.sh: legitimate REGISTER load through sipadmit while it is attacked
# (issue 8), on loopback only. Every process it starts is stopped on exit (by
# process group id); every load is bounded in time.
#
# What runs at the same time, for --secs seconds:
#   - the registrar: SIPp as a UAS answering every REGISTER 200 (register_uas.xml),
#     on 127.0.0.1;
#   - legitimate clients: SIPp (register_load.xml, a Lync 2013 User-Agent, distinct
#     users) at --rate REGISTERs/s from 127.0.0.1, listed in [rate_limit] trusted as a
#     NAT of many clients would be;
#   - a malformed flood: random-binary datagrams at --flood per second, half from
#     127.0.0.1 (trusted: every one parsed, dropped, summarised) and half from 64
#     untrusted sources 127.0.1.1-64 (rate-limited, then banned);
#   - slowloris: --slowloris TCP connections from 127.0.2.1-20, each trickling one
#     byte every 2 s and reconnecting when closed;
#   - a scanner: svmap and svwar from 127.0.0.3, over and over.
# Then it prints SIPp's counts (every REGISTER must be answered 200), sipadmit's peak
# RSS (sampled every 200 ms from /proc), and the counters sipadmit logs when it stops.
#
# Usage
#   cargo build --release
#   scripts/load/edge_abuse.sh [--sipadmit target/release/sipadmit] [--rate 2000]
#       [--secs 30] [--flood 20000] [--slowloris 200] [--rss-bound-mb 200] [--keep]
# Exit code: 0 when every REGISTER was answered and the peak RSS is under the bound.
# Requires sipp, svmap, svwar, python3.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN="$ROOT/target/release/sipadmit"
RATE=2000
SECS=30
FLOOD=20000
SLOWLORIS=200
RSS_BOUND_MB=200
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --sipadmit) BIN=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --secs) SECS=$2; shift 2 ;;
    --flood) FLOOD=$2; shift 2 ;;
    --slowloris) SLOWLORIS=$2; shift 2 ;;
    --rss-bound-mb) RSS_BOUND_MB=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
for tool in sipp svmap svwar python3; do
  command -v "$tool" >/dev/null || { echo "$tool not installed" >&2; exit 2; }
done
[ -x "$BIN" ] || { echo "$BIN not built (cargo build --release)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/sipadmit-edge.XXXXXX)
GROUPS_STARTED=()
cleanup() {
  for g in "${GROUPS_STARTED[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  sleep 0.5
  for g in "${GROUPS_STARTED[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
  if [ "$KEEP" = 1 ]; then echo "work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
# Start a command in its own process group; prints the group id.
start() { local log=$1; shift; setsid "$@" > "$log" 2>&1 < /dev/null & echo $!; }
free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); t=socket.socket(); t.bind(("127.0.0.1", s.getsockname()[1])); print(s.getsockname()[1])'; }

RPORT=$(free_port)
PPORT=$(free_port)
CALLS=$(( RATE * SECS ))

g=$(start "$WORK/registrar.log" sipp -sf "$HERE/register_uas.xml" -i 127.0.0.1 -p "$RPORT" \
  -t u1 -nostdin -bg -timeout "$(( SECS + 60 ))s" -timeout_error); GROUPS_STARTED+=("$g")
sleep 0.5

cat > "$WORK/sipadmit.toml" <<TOML
[proxy]
flow_secret = "edge-abuse-load-run-secret-0123"
[rate_limit]
# The legitimate load comes from one address, as a NAT of many clients would.
trusted = ["127.0.0.1"]
[response_group]
workflows = ["sip:helpdesk@contoso.com"]
TOML
g=$(start "$WORK/sipadmit.log" env RUST_LOG=info "$BIN" run --config "$WORK/sipadmit.toml" \
  --listen "udp:127.0.0.1:$PPORT" --listen "tcp:127.0.0.1:$PPORT" \
  --upstream "udp:127.0.0.1:$RPORT" --decision-log "$WORK/decisions.jsonl")
GROUPS_STARTED+=("$g"); SIPADMIT_PID=$g
sleep 0.5
kill -0 "$SIPADMIT_PID" || { cat "$WORK/sipadmit.log" >&2; exit 1; }

# RSS sampler
( peak=0; while kill -0 "$SIPADMIT_PID" 2>/dev/null; do
    rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$SIPADMIT_PID/status" 2>/dev/null || echo 0)
    [ "${rss:-0}" -gt "$peak" ] && peak=$rss && echo "$peak" > "$WORK/rss_peak_kb"
    sleep 0.2
  done ) &
SAMPLER=$!

# Abuse generators (bounded by SECS)
cat > "$WORK/abuse.py" <<'PY'
import os, random, socket, sys, time
kind, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.time() + secs
if kind == "flood":
    rate = int(sys.argv[4])
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(65)]
    socks[0].bind(("127.0.0.1", 0))
    for i, s in enumerate(socks[1:], 1):
        s.bind((f"127.0.1.{i}", 0))
    sent, start = 0, time.time()
    while time.time() < end:
        s = socks[0] if sent % 2 == 0 else socks[1 + (sent // 2) % 64]
        s.sendto(os.urandom(random.randint(20, 1200)), ("127.0.0.1", port))
        sent += 1
        ahead = sent / rate - (time.time() - start)
        if ahead > 0:
            time.sleep(ahead)
    print(f"flood sent={sent}")
elif kind == "slowloris":
    n = int(sys.argv[4])
    conns, opened = {}, 0
    def connect(i):
        global opened
        s = socket.socket()
        s.bind((f"127.0.2.{1 + i % 20}", 0))
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        opened += 1
        return s
    for i in range(n):
        conns[i] = connect(i)
    time.sleep(0.2)
    while time.time() < end:
        for i, s in list(conns.items()):
            try:
                s.send(b"R")
            except OSError:
                s.close()
                conns[i] = connect(i)
        time.sleep(2)
    print(f"slowloris connections_opened={opened}")
PY
g=$(start "$WORK/flood.log" python3 "$WORK/abuse.py" flood "$PPORT" "$SECS" "$FLOOD"); GROUPS_STARTED+=("$g")
g=$(start "$WORK/slowloris.log" python3 "$WORK/abuse.py" slowloris "$PPORT" "$SECS" "$SLOWLORIS"); GROUPS_STARTED+=("$g")
g=$(start "$WORK/scanner.log" bash -c "end=\$((SECONDS + $SECS)); while [ \$SECONDS -lt \$end ]; do
    timeout 20 svmap -b 127.0.0.3 -p $PPORT -t 0.01 127.0.0.1; timeout 20 svwar -b 127.0.0.3 -p $PPORT -e 100-400 -t 0.01 --force 127.0.0.1; done")
GROUPS_STARTED+=("$g")

awk -v n="$CALLS" 'BEGIN { print "SEQUENTIAL"; for (i = 1; i <= n; i++) printf "load%07d;%012d;\n", i, i }' > "$WORK/users.csv"
echo "load: $CALLS REGISTERs at $RATE/s through sipadmit (udp:127.0.0.1:$PPORT), flood $FLOOD/s, $SLOWLORIS slowloris, scanner; work dir $WORK" >&2
rc=0
( cd "$WORK" && sipp "127.0.0.1:$PPORT" -sf "$HERE/register_load.xml" -inf "$WORK/users.csv" \
    -m "$CALLS" -r "$RATE" -rp 1000 -l "$(( RATE * 2 ))" -i 127.0.0.1 -p "$(free_port)" -t u1 -nostdin \
    -timeout "$(( SECS + 60 ))s" -timeout_error -recv_timeout 10000 -default_behaviors "all,-bye" \
    -trace_stat -stf "$WORK/stat.csv" -fd 1 > "$WORK/sipp.out" 2>&1 ) || rc=$?
counters=$(awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next } { last = $0 } END { split(last, f, ";");
    printf "%s %s %s\n", f[c["SuccessfulCall(C)"]] + 0, f[c["FailedCall(C)"]] + 0, f[c["Retransmissions(C)"]] + 0 }' "$WORK/stat.csv")
read -r ok failed retrans <<< "$counters"

sleep 1
kill -TERM "$SIPADMIT_PID" 2>/dev/null || true
for _ in $(seq 50); do kill -0 "$SIPADMIT_PID" 2>/dev/null || break; sleep 0.1; done
wait "$SAMPLER" 2>/dev/null || true
peak_kb=$(cat "$WORK/rss_peak_kb" 2>/dev/null || echo 0)
peak_mb=$(( peak_kb / 1024 ))

echo "RESULT registers=$CALLS ok=$ok failed=$failed retransmissions=$retrans sipp_exit=$rc"
echo "RESULT rss_peak_mb=$peak_mb bound_mb=$RSS_BOUND_MB"
cat "$WORK/flood.log" "$WORK/slowloris.log" | sed 's/^/RESULT /'
echo "RESULT warn_lines=$(grep -c ' WARN ' "$WORK/sipadmit.log" || true) log_bytes=$(wc -c < "$WORK/sipadmit.log")"
grep -o 'source banned source=[0-9.]*' "$WORK/sipadmit.log" | sort | uniq -c | sed 's/^/RESULT ban /' | head -5
# Ban lines, not bans: the lines of datagram-only bans are held back to one per 10 s (the
# counters below give sipadmit_bans_total).
echo "RESULT ban_lines_logged=$(grep -c 'source banned' "$WORK/sipadmit.log" || true)"
grep 'counters=' "$WORK/sipadmit.log" | tail -1 | tr ';' '\n' | grep -E 'dropped_total|faults_total\{kind="(message_deadline|connection_limit)|rate_limited|bans|banned|kernel_drops|received_total|requests_relayed' | grep -v ' 0$' | sed 's/^ */RESULT counter /'
[ "$ok" = "$CALLS" ] && [ "$failed" = 0 ] && [ "$peak_mb" -lt "$RSS_BOUND_MB" ]
