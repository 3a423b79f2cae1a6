#!/usr/bin/env bash
# register_latency.sh: response time and CPU cost of a call (a REGISTER, or with
# --scenario invite a 7.6 KB INVITE and its ACK), straight to Kamailio and through a relay,
# on loopback only (127.0.0.1). "reg" in the output names means one such call.
#
# What it does
#   1. Renders tests/e2e/kamailio.cfg (usrloc in memory, Path support, no per-request
#      logging) and starts Kamailio 5.6 in the foreground on 127.0.0.1:<kamailio port>
#      (UDP+TCP), in its own process group, with its own runtime dir.
#   2. Phase "direct": SIPp sends N REGISTERs (distinct users from a generated injection
#      CSV, Lync 2013 User-Agent, scripts/load/register_load.xml) at R per second
#      straight to Kamailio.
#   3. Phase "kamrelay" (only with --with-kamailio-relay): the same load through a second
#      Kamailio doing the proxy's job (stateless relay adding Path, kamailio_relay.cfg), the
#      baseline for "CPU per relayed REGISTER" comparisons.
#   4. Phase "proxy" (only with --via / --proxy-cmd / --sipadmit): the same load, with other
#      users, to the proxy, which relays to the same Kamailio.
#   5. Prints, per phase: calls OK/failed, retransmissions, p50/p90/p99/max response time
#      (microseconds, from SIPp's -trace_shortmsg timestamps; SIPp's own rtd counters only
#      have 1 ms resolution), and CPU time per REGISTER of Kamailio (all its processes) and
#      of the relay (sipadmit or the Kamailio relay; utime+stime from /proc/<pid>/stat before/after the phase); then the
#      relay-minus-direct differences and the sipadmit/Kamailio-relay CPU ratio.
#
# Usage
#   scripts/load/register_latency.sh [options]
#     --calls N            calls (REGISTERs, or INVITEs) per phase (default 10000)
#     --rate R             calls per second (default 1000)
#     --scenario register|invite
#                          what each call is (default register):
#                            register  one REGISTER (register_load.xml), answered 200
#                            invite    the 7.6 KB Lync 2013 INVITE of
#                                      tests/fixtures/lync2013-invite-6k-multipart.sip (only
#                                      Via, From tag, Call-ID, Contact and Content-Length
#                                      made SIPp's) to the Response Group workflow, which
#                                      Kamailio answers "486 Workflow Reached", then the ACK:
#                                      three messages relayed per call
#     --transport udp|tcp  how SIPp reaches the relay (default udp; tcp: one connection,
#                          SIPp -t t1); the relay reaches Kamailio over UDP either way
#     --kamailio-port K    Kamailio port on 127.0.0.1 (default: a free port)
#     --children C         Kamailio UDP receivers / TCP workers (default 4)
#     --via udp:127.0.0.1:P
#                          a proxy ALREADY RUNNING on P that relays to Kamailio; start it
#                          with --upstream udp:127.0.0.1:K and pass --kamailio-port K here
#     --proxy-pid PID      with --via: the proxy's pid, to measure its CPU time
#     --proxy-cmd "CMD"    start the proxy with this command line (run in its own process
#                          group, stopped at the end); placeholders substituted first:
#                            @PROXY_PORT@    port the proxy must listen on (UDP, and with
#                                            --transport tcp also TCP; 127.0.0.1)
#                            @KAMAILIO_PORT@ Kamailio's port
#                            @DECISION_LOG@  a decision log path in the work dir
#                            @WORKDIR@       the work dir
#     --sipadmit BIN [--proxy-config FILE | --workers W]
#                          shorthand for
#                          --proxy-cmd "BIN run --config FILE --listen udp:127.0.0.1:@PROXY_PORT@
#                                       --upstream udp:127.0.0.1:@KAMAILIO_PORT@
#                                       --decision-log @DECISION_LOG@"
#                          (and --listen tcp:127.0.0.1:@PROXY_PORT@ with --transport tcp);
#                          without --proxy-config, FILE is config/sipadmit.toml with
#                          [proxy] workers = W (default 1) and drain_secs = 0
#     --decision-log FILE  what @DECISION_LOG@ stands for (default: decisions.jsonl in the
#                          work dir, gone after the run); records are appended to FILE and
#                          outlive the run (scripts/pgo-build.sh reports over them)
#     --proxy-port P       port for --proxy-cmd / --sipadmit (default: a free port)
#     --with-kamailio-relay
#                          also run the "kamrelay" phase (Kamailio as the relay)
#     --pin-relay CPU      run the relay (sipadmit, the Kamailio relay, the --proxy-cmd) on CPU
#                          only, and SIPp and the Kamailio registrar on every other CPU
#                          (taskset): the relay keeps its core's caches, as it would on a
#                          machine where it does not share cores with the load generator
#     --keep               keep the work dir (configs, logs, SIPp traces) and print its path
#   Example (proxy part, once the binary exists):
#     cargo build --release
#     scripts/load/register_latency.sh --sipadmit target/release/sipadmit
#
# Output: a table, plus machine-readable lines
#   RESULT phase=<direct|kamrelay|proxy> calls=.. ok=.. failed=.. retrans=.. p50_us=..
#          p90_us=.. p99_us=.. max_us=.. kamailio_cpu_us_per_reg=.. relay_cpu_us_per_reg=..
#   RESULT diff phase=<kamrelay|proxy> p50_us=.. p99_us=.. kamailio_cpu_us_per_reg=..
#   RESULT cpu_ratio kamrelay_over_proxy=..   (with both relay phases; the bar is >= 2)
#   (kamailio_cpu is the registrar's CPU; relay_cpu the relay's, "-" when unknown)
# Exit code: 0 when every phase ran with no failed REGISTER, 1 otherwise, 2 on usage errors.
#
# Bounded: each SIPp phase has -timeout (N/R + 30 s); every process started here is
# stopped on exit (by process group id). Requires kamailio, sipp, ss, awk, sort.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TEMPLATE="$ROOT/tests/e2e/kamailio.cfg"
MPATH=${SIPADMIT_KAMAILIO_MODULES:-/usr/lib/x86_64-linux-gnu/kamailio/modules}

CALLS=10000
SCENARIO=register
TRANSPORT=udp
RATE=1000
KPORT=""
CHILDREN=4
VIA=""
PROXY_PID=""
PROXY_CMD=""
PROXY_PORT=""
SIPADMIT_BIN=""
PROXY_CONFIG=""
WORKERS=""
DECISION_LOG=""
KEEP=0
KRELAY=0
PIN_RELAY=""

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "register_latency: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --calls) CALLS=${2:?}; shift 2 ;;
    --scenario) SCENARIO=${2:?}; shift 2 ;;
    --transport) TRANSPORT=${2:?}; shift 2 ;;
    --rate) RATE=${2:?}; shift 2 ;;
    --kamailio-port) KPORT=${2:?}; shift 2 ;;
    --children) CHILDREN=${2:?}; shift 2 ;;
    --via) VIA=${2:?}; shift 2 ;;
    --proxy-pid) PROXY_PID=${2:?}; shift 2 ;;
    --proxy-cmd) PROXY_CMD=${2:?}; shift 2 ;;
    --proxy-port) PROXY_PORT=${2:?}; shift 2 ;;
    --sipadmit) SIPADMIT_BIN=${2:?}; shift 2 ;;
    --proxy-config) PROXY_CONFIG=${2:?}; shift 2 ;;
    --workers) WORKERS=${2:?}; shift 2 ;;
    --decision-log) DECISION_LOG=${2:?}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --with-kamailio-relay) KRELAY=1; shift ;;
    --pin-relay) PIN_RELAY=${2:?}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[[ "$CALLS" =~ ^[0-9]+$ && "$CALLS" -gt 0 ]] || die "--calls must be a positive integer"
[[ "$RATE" =~ ^[0-9]+$ && "$RATE" -gt 0 ]] || die "--rate must be a positive integer"
case "$TRANSPORT" in
  udp) SIPP_TRANSPORT=u1 ;;
  tcp) SIPP_TRANSPORT=t1 ;;
  *) die "--transport must be udp or tcp" ;;
esac
case "$SCENARIO" in
  register) SCENARIO_FILE="$HERE/register_load.xml"; FINAL=200 ;;
  invite) SCENARIO_FILE=""; FINAL=486 ;;
  *) die "--scenario must be register or invite" ;;
esac
[ -z "$WORKERS" ] || [[ "$WORKERS" =~ ^[0-9]+$ && "$WORKERS" -gt 0 ]] || die "--workers must be a positive integer"
if [ -n "$SIPADMIT_BIN" ]; then
  [ -z "$PROXY_CMD" ] || die "--sipadmit and --proxy-cmd are exclusive"
  [ -z "$PROXY_CONFIG" ] || [ -z "$WORKERS" ] || die "--proxy-config and --workers are exclusive"
  PROXY_CMD="$SIPADMIT_BIN run --config ${PROXY_CONFIG:-@WORKDIR@/sipadmit.toml} --listen udp:127.0.0.1:@PROXY_PORT@ --upstream udp:127.0.0.1:@KAMAILIO_PORT@ --decision-log @DECISION_LOG@"
  [ "$TRANSPORT" = udp ] || PROXY_CMD="$PROXY_CMD --listen $TRANSPORT:127.0.0.1:@PROXY_PORT@"
else
  [ -z "$PROXY_CONFIG$WORKERS" ] || die "--proxy-config and --workers go with --sipadmit"
fi
if [ -n "$VIA" ]; then
  [ -z "$PROXY_CMD" ] || die "--via and --proxy-cmd/--sipadmit are exclusive"
  [[ "$VIA" =~ ^udp:(127\.0\.0\.1):([0-9]+)$ ]] || die "--via must be udp:127.0.0.1:PORT (loopback, UDP)"
  [ "$TRANSPORT" = udp ] || die "--via is for a proxy SIPp reaches over UDP: not with --transport $TRANSPORT"
  [ -n "$KPORT" ] || die "--via needs --kamailio-port (the port the running proxy relays to)"
fi

KAMAILIO=$(command -v kamailio || true)
[ -n "$KAMAILIO" ] || for d in /usr/sbin /sbin; do [ -x "$d/kamailio" ] && KAMAILIO="$d/kamailio" && break; done
[ -n "$KAMAILIO" ] || die "kamailio not installed"
SIPP=$(command -v sipp || true)
[ -n "$SIPP" ] || die "sipp not installed"
# --pin-relay: the relay on one CPU, the rest of the rig on the others
RELAY_ON=(); RIG_ON=()
if [ -n "$PIN_RELAY" ]; then
  command -v taskset > /dev/null || die "--pin-relay needs taskset (util-linux)"
  CPUS=$(nproc)
  [[ "$PIN_RELAY" =~ ^[0-9]+$ ]] && [ "$PIN_RELAY" -lt "$CPUS" ] \
    || die "--pin-relay $PIN_RELAY: not a CPU of this machine (0..$(( CPUS - 1 )))"
  [ "$CPUS" -ge 2 ] || die "--pin-relay needs at least 2 CPUs"
  OTHERS=$(seq 0 $(( CPUS - 1 )) | grep -vx "$PIN_RELAY" | paste -sd, -)
  RELAY_ON=(taskset -c "$PIN_RELAY"); RIG_ON=(taskset -c "$OTHERS")
  echo "pinned: the relay on CPU $PIN_RELAY, SIPp and the registrar on CPU $OTHERS" >&2
fi
command -v ss >/dev/null || die "ss (iproute2) not installed"

WORK=$(mktemp -d /tmp/sipadmit-load.XXXXXX)
if [ -n "$SIPADMIT_BIN" ] && [ -z "$PROXY_CONFIG" ]; then
  # The shipped config, one event loop per --workers, no drain wait when stopped.
  sed -e "s/^\[proxy\]$/[proxy]\nworkers = ${WORKERS:-1}/" -e "s/^drain_secs = .*/drain_secs = 0/" \
    "$ROOT/config/sipadmit.toml" > "$WORK/sipadmit.toml"
fi
KPGID=""
PPGID=""
RPGID=""

stop_group() { # pgid
  local g=$1 i
  [ -n "$g" ] || return 0
  kill -TERM -- "-$g" 2>/dev/null || return 0
  for i in $(seq 1 30); do
    kill -0 -- "-$g" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL -- "-$g" 2>/dev/null || true
}
cleanup() {
  stop_group "$PPGID"
  stop_group "$RPGID"
  stop_group "$KPGID"
  if [ "$KEEP" = 1 ]; then echo "work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_busy() { # port
  [ -n "$(ss -Hlun "( sport = :$1 )" 2>/dev/null)$(ss -Hltn "( sport = :$1 )" 2>/dev/null)" ]
}
free_port() {
  local p i
  for i in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 40000 ))
    port_busy "$p" || { echo "$p"; return 0; }
  done
  die "no free port found"
}

# start a command in its own process group; prints the pgid
start_group() { # logfile cmd...
  local log=$1; shift
  setsid "$@" >"$log" 2>&1 < /dev/null &
  local pid=$!
  sleep 0.05
  local g
  g=$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')
  echo "${g:-$pid}"
}

# utime+stime (clock ticks) summed over the processes of a group / of one pid
cpu_ticks_group() { # pgid
  local g=$1
  [ -n "$g" ] || { echo ""; return; }
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v g="$g" '{
      sub(/^[0-9]+ \(.*\) /, "");   # drop "pid (comm) "
      if ($3 == g) t += $12 + $13    # pgrp, utime, stime
    } END { print t + 0 }'
}
cpu_ticks_pid() { # pid
  [ -n "$1" ] && [ -r "/proc/$1/stat" ] || { echo ""; return; }
  sed 's/^[0-9]* (.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}
CLK_TCK=$(getconf CLK_TCK)

probe() { # target_addr ruri_hostport -> 0 when a 200 came back
  "$SIPP" "$1" -sf "$HERE/options_probe.xml" -key target "$2" -m 1 \
    -i 127.0.0.1 -ci 127.0.0.1 -mi 127.0.0.1 -p "$(free_port)" -t u1 -nostdin \
    -timeout 2s -timeout_error -recv_timeout 1500 >/dev/null 2>&1
}
wait_ready() { # name target ruri pgid log
  local i
  for i in $(seq 1 20); do
    if [ -n "$4" ] && ! kill -0 -- "-$4" 2>/dev/null; then
      echo "$1 exited; log:" >&2; tail -30 "$5" >&2; exit 1
    fi
    probe "$2" "$3" && return 0
    sleep 0.25
  done
  echo "$1 did not answer OPTIONS at $2; log tail:" >&2; tail -30 "$5" >&2; exit 1
}

# The INVITE scenario, made from the fixture: SIPp's own Via, From tag, Call-ID, Contact
# and Content-Length; every other header and the multipart body as they are.
if [ "$SCENARIO" = invite ]; then
  SCENARIO_FILE="$WORK/invite_load.xml"
  {
    printf '%s\n' '<?xml version="1.0" encoding="ISO-8859-1" ?>' '<!DOCTYPE scenario SYSTEM "sipp.dtd">' \
      '<scenario name="invite_load">' '  <send retrans="500" start_rtd="1">' '    <![CDATA['
    tr -d '\r' < "$ROOT/tests/fixtures/lync2013-invite-6k-multipart.sip" | awk '
      /^Via:/ { print "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport"; next }
      /^From:/ { print "From: \"Alice\" <sip:[field0]@contoso.com>;tag=[pid]l[call_number];epid=8d7f6e5a4b"; next }
      /^Call-ID:/ { print "Call-ID: [call_id]"; next }
      /^Contact:/ { print "Contact: <sip:[field0]@[local_ip]:[local_port];transport=[transport]>"; next }
      /^Content-Length:/ { print "Content-Length: [len]"; next }
      { print }'
    printf '%s\n' '    ]]>' '  </send>' '  <recv response="100" optional="true" />' \
      '  <recv response="486" rtd="1" />' '  <send>' '    <![CDATA[' '' \
      'ACK sip:helpdesk@contoso.com SIP/2.0' '[last_Via:]' 'Max-Forwards: 70' \
      'From: "Alice" <sip:[field0]@contoso.com>;tag=[pid]l[call_number];epid=8d7f6e5a4b' \
      '[last_To:]' 'Call-ID: [call_id]' 'CSeq: 1 ACK' 'Content-Length: 0' '' '    ]]>' '  </send>' \
      '</scenario>'
  } > "$SCENARIO_FILE"
fi

# ---- Kamailio ------------------------------------------------------------------------
[ -n "$KPORT" ] || KPORT=$(free_port)
mkdir -p "$WORK/run"
sed -e "s#@LISTEN_UDP@#udp:127.0.0.1:$KPORT#" \
    -e "s#@LISTEN_TCP@#tcp:127.0.0.1:$KPORT#" \
    -e "s#@LISTEN_EXTRA@##" \
    -e "s#@WORKFLOW@#helpdesk#" \
    -e "s#@MPATH@#$MPATH#" \
    -e "s#@CHILDREN@#$CHILDREN#g" \
    "$TEMPLATE" > "$WORK/kamailio.cfg"
KPGID=$(start_group "$WORK/kamailio.log" "${RIG_ON[@]}" "$KAMAILIO" -DD -E -f "$WORK/kamailio.cfg" \
  -Y "$WORK/run" -w "$WORK" -m 256 -M 8)
wait_ready kamailio "127.0.0.1:$KPORT" "127.0.0.1:$KPORT" "$KPGID" "$WORK/kamailio.log"
echo "kamailio: 127.0.0.1:$KPORT (pgid $KPGID, $CHILDREN children), work dir $WORK" >&2

# ---- one load phase --------------------------------------------------------------------
declare -A R
run_phase() { # name target_addr user_prefix
  local name=$1 target=$2 prefix=$3 d="$WORK/$1"
  mkdir -p "$d"
  awk -v p="$prefix" -v n="$CALLS" 'BEGIN {
      print "SEQUENTIAL"
      for (i = 1; i <= n; i++) printf "%s%06d;%012d;\n", p, i, i
    }' > "$d/users.csv"
  local limit=$(( CALLS / RATE + 30 ))
  local k0 k1 p0 p1 rc=0
  k0=$(cpu_ticks_group "$KPGID")
  if [ -n "$RELAY_G" ]; then p0=$(cpu_ticks_group "$RELAY_G"); else p0=$(cpu_ticks_pid "$RELAY_PID"); fi
  echo "phase $name: $CALLS ${SCENARIO}s at $RATE/s to $target ..." >&2
  ( cd "$d" && "${RIG_ON[@]}" "$SIPP" "$target" -sf "$SCENARIO_FILE" -inf "$d/users.csv" \
      -m "$CALLS" -r "$RATE" -rp 1000 -l "$(( RATE * 2 ))" \
      -i 127.0.0.1 -ci 127.0.0.1 -mi 127.0.0.1 -p "$(free_port)" -t "$SIPP_TRANSPORT" -nostdin \
      -timeout "${limit}s" -timeout_error -recv_timeout 5000 \
      -default_behaviors "all,-bye" \
      -trace_shortmsg -shortmessage_file "$d/shortmsg.tsv" \
      -trace_stat -stf "$d/stat.csv" -fd 1 \
      -trace_err -error_file "$d/errors.log" > "$d/sipp.out" 2>&1 ) || rc=$?
  k1=$(cpu_ticks_group "$KPGID")
  if [ -n "$RELAY_G" ]; then p1=$(cpu_ticks_group "$RELAY_G"); else p1=$(cpu_ticks_pid "$RELAY_PID"); fi

  # response time per Call-ID: first request sent -> first final response received
  # (200 to a REGISTER, 486 to an INVITE), microseconds
  awk -F'\t' -v final="$FINAL" '
      $4 == "S" && !($5 in s) { s[$5] = $3 }
      $4 == "R" && index($7, "SIP/2.0 " final) == 1 && ($5 in s) && !($5 in r) {
        r[$5] = 1; printf "%.1f\n", ($3 - s[$5]) * 1e6 }' "$d/shortmsg.tsv" \
    | sort -n > "$d/latency_us.txt"
  local stats
  stats=$(awk '{ v[NR] = $1 } END {
      n = NR; if (n == 0) { print "0 - - - -"; exit }
      i50 = int(0.50 * n); if (i50 < 0.50 * n) i50++
      i90 = int(0.90 * n); if (i90 < 0.90 * n) i90++
      i99 = int(0.99 * n); if (i99 < 0.99 * n) i99++
      printf "%d %.0f %.0f %.0f %.0f\n", n, v[i50], v[i90], v[i99], v[n] }' "$d/latency_us.txt")
  local n p50 p90 p99 max
  read -r n p50 p90 p99 max <<< "$stats"
  # cumulative counters from the last line of SIPp's statistics file
  local counters
  counters=$(awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
      { last = $0 } END { split(last, f, ";");
        printf "%s %s %s\n", f[c["SuccessfulCall(C)"]] + 0, f[c["FailedCall(C)"]] + 0, f[c["Retransmissions(C)"]] + 0 }' \
      "$d/stat.csv" 2>/dev/null || echo "0 0 0")
  local ok failed retrans
  read -r ok failed retrans <<< "$counters"
  local kcpu="-" pcpu="-"
  kcpu=$(awk -v a="$k0" -v b="$k1" -v n="$CALLS" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (b - a) * 1e6 / hz / n }')
  if [ -n "$p0" ] && [ -n "$p1" ]; then
    pcpu=$(awk -v a="$p0" -v b="$p1" -v n="$CALLS" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (b - a) * 1e6 / hz / n }')
  fi
  R[$name.n]=$n; R[$name.ok]=$ok; R[$name.failed]=$failed; R[$name.retrans]=$retrans
  R[$name.p50]=$p50; R[$name.p90]=$p90; R[$name.p99]=$p99; R[$name.max]=$max
  R[$name.kcpu]=$kcpu; R[$name.pcpu]=$pcpu; R[$name.rc]=$rc
  if [ "$rc" != 0 ] || [ "$failed" != 0 ] || [ "$n" != "$CALLS" ]; then
    echo "phase $name: sipp exit $rc, $failed failed, $n/$CALLS answered; see $d (use --keep)" >&2
    tail -5 "$d/errors.log" 2>/dev/null >&2 || true
  fi
}

RELAY_G=""
RELAY_PID=""
run_phase direct "127.0.0.1:$KPORT" "direct"
PHASES="direct"

# ---- Kamailio as the relay (baseline) ----------------------------------------------------
if [ "$KRELAY" = 1 ]; then
  RPORT=$(free_port)
  mkdir -p "$WORK/relay-run"
  sed -e "s#@LISTEN_UDP@#udp:127.0.0.1:$RPORT#" \
      -e "s#@LISTEN_TCP@#tcp:127.0.0.1:$RPORT#" \
      -e "s#@UPSTREAM_PORT@#$KPORT#" \
      -e "s#@MPATH@#$MPATH#" \
      -e "s#@CHILDREN@#$CHILDREN#g" \
      "$HERE/kamailio_relay.cfg" > "$WORK/kamailio_relay.cfg"
  RPGID=$(start_group "$WORK/kamailio_relay.log" "${RELAY_ON[@]}" "$KAMAILIO" -DD -E -f "$WORK/kamailio_relay.cfg" \
    -Y "$WORK/relay-run" -w "$WORK" -m 64 -M 8)
  wait_ready kamailio-relay "127.0.0.1:$RPORT" "127.0.0.1:$KPORT" "$RPGID" "$WORK/kamailio_relay.log"
  echo "kamailio relay: 127.0.0.1:$RPORT -> 127.0.0.1:$KPORT (pgid $RPGID)" >&2
  RELAY_G=$RPGID
  run_phase kamrelay "127.0.0.1:$RPORT" "kamrelay"
  RELAY_G=""
  stop_group "$RPGID"; RPGID=""
  PHASES="$PHASES kamrelay"
fi

# ---- proxy phase -----------------------------------------------------------------------
if [ -n "$VIA" ]; then
  PPORT=${VIA##*:}
  wait_ready proxy "127.0.0.1:$PPORT" "127.0.0.1:$KPORT" "" /dev/null
  RELAY_PID=$PROXY_PID
  run_phase proxy "127.0.0.1:$PPORT" "viaproxy"
  PHASES="$PHASES proxy"
elif [ -n "$PROXY_CMD" ]; then
  [ -n "$PROXY_PORT" ] || PROXY_PORT=$(free_port)
  cmd=${PROXY_CMD//@PROXY_PORT@/$PROXY_PORT}
  cmd=${cmd//@KAMAILIO_PORT@/$KPORT}
  cmd=${cmd//@DECISION_LOG@/${DECISION_LOG:-$WORK/decisions.jsonl}}
  cmd=${cmd//@WORKDIR@/$WORK}
  echo "proxy: $cmd" >&2
  PPGID=$(start_group "$WORK/proxy.log" "${RELAY_ON[@]}" bash -c "exec $cmd")
  wait_ready proxy "127.0.0.1:$PROXY_PORT" "127.0.0.1:$KPORT" "$PPGID" "$WORK/proxy.log"
  RELAY_G=$PPGID
  run_phase proxy "127.0.0.1:$PROXY_PORT" "viaproxy"
  PHASES="$PHASES proxy"
fi

# ---- report ----------------------------------------------------------------------------
printf '\n%-8s %7s %7s %6s %7s %8s %8s %8s %8s %14s %16s\n' \
  phase calls ok failed retrans p50_us p90_us p99_us max_us kam_cpu_us/reg relay_cpu_us/reg
for p in $PHASES; do
  printf '%-8s %7s %7s %6s %7s %8s %8s %8s %8s %14s %16s\n' "$p" "$CALLS" "${R[$p.ok]}" \
    "${R[$p.failed]}" "${R[$p.retrans]}" "${R[$p.p50]}" "${R[$p.p90]}" "${R[$p.p99]}" \
    "${R[$p.max]}" "${R[$p.kcpu]}" "${R[$p.pcpu]}"
done
echo
status=0
for p in $PHASES; do
  echo "RESULT phase=$p calls=$CALLS ok=${R[$p.ok]} failed=${R[$p.failed]} retrans=${R[$p.retrans]} p50_us=${R[$p.p50]} p90_us=${R[$p.p90]} p99_us=${R[$p.p99]} max_us=${R[$p.max]} kamailio_cpu_us_per_reg=${R[$p.kcpu]} relay_cpu_us_per_reg=${R[$p.pcpu]}"
  if [ "${R[$p.rc]}" != 0 ] || [ "${R[$p.failed]}" != 0 ] || [ "${R[$p.n]}" != "$CALLS" ]; then status=1; fi
done
for p in $PHASES; do
  [ "$p" = direct ] && continue
  d50=$(awk -v a="${R[direct.p50]}" -v b="${R[$p.p50]}" 'BEGIN { printf "%+.0f", b - a }')
  d99=$(awk -v a="${R[direct.p99]}" -v b="${R[$p.p99]}" 'BEGIN { printf "%+.0f", b - a }')
  dk=$(awk -v a="${R[direct.kcpu]}" -v b="${R[$p.kcpu]}" 'BEGIN { printf "%+.1f", b - a }')
  echo "RESULT diff phase=$p p50_us=$d50 p99_us=$d99 kamailio_cpu_us_per_reg=$dk"
  echo "$p adds $d50 us at p50 and $d99 us at p99; relay CPU ${R[$p.pcpu]} us/$SCENARIO (registrar alone: ${R[direct.kcpu]} us/$SCENARIO)"
done
if [[ " $PHASES " == *" kamrelay "* && " $PHASES " == *" proxy "* && "${R[proxy.pcpu]}" != "-" ]]; then
  ratio=$(awk -v k="${R[kamrelay.pcpu]}" -v p="${R[proxy.pcpu]}" 'BEGIN { if (p > 0) printf "%.2f", k / p; else print "inf" }')
  echo "RESULT cpu_ratio kamrelay_over_proxy=$ratio"
fi
exit $status
