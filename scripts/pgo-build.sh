#!/usr/bin/env bash
# pgo-build.sh: build sipadmit with profile-guided optimisation, for production.
#
# Relaying costs sipadmit more in cache misses than in instructions: between two
# datagrams the other processes of a busy machine evict its code from the CPU's caches
# (docs/PERFORMANCE.md, "Where the time goes"). A build that knows which code runs per
# message lays that code out together and keeps the rest apart, so each message fetches
# fewer cache lines: about 10 % less CPU per relayed REGISTER on the test machine.
#
# What it does
#   1. Builds an instrumented sipadmit (target/pgo/generate), with the release profile
#      of the final build: a build set up otherwise (no LTO, more codegen units) inlines
#      differently before the counters go in, and its counts then miss the final build's
#      functions.
#   2. Runs it under load with SIPp and Kamailio (scripts/load/register_latency.sh):
#      Lync 2013 REGISTERs over UDP and over TCP, the 7.6 KB Lync INVITE over UDP;
#      then `sipadmit report` (plain and --json) over the decision records they left.
#   3. Merges the counts (llvm-profdata from rustup's llvm-tools component, installed
#      when missing) into target/pgo/sipadmit.profdata.
#   4. Builds the release binary with them, the cold blocks of hot functions split off
#      (LLVM's machine function splitting): target/pgo/use/release/sipadmit.
#
# Code that the load does not run (TLS handshakes, `probe`, the admin pages) is built
# for size; OpenSSL, which does the TLS work, is C and built as usual.
#
# Usage
#   scripts/pgo-build.sh [--calls N]     (REGISTERs per training run, default 10000)
#   needs: a Rust toolchain from rustup, kamailio and sipp (Debian: kamailio, sip-tester)
# Output: the binary's path on the last line. Exit code: 0 when built; 1 when a step
# failed (a training run with fewer than 99 % of its calls answered fails the build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
CALLS=10000
while [ $# -gt 0 ]; do
  case "$1" in
    --calls) CALLS=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "pgo-build: unknown option $1" >&2; exit 2 ;;
  esac
done
step() { printf '\n=== pgo-build: %s ===\n' "$*" >&2; }

PGO="$ROOT/target/pgo"
PROFILES="$PGO/profiles"
profdata_tool() {
  find "$(rustc --print sysroot)/lib/rustlib" -name llvm-profdata -type f -perm -u+x 2>/dev/null | head -n 1
}
LLVM_PROFDATA=$(profdata_tool)
if [ -z "$LLVM_PROFDATA" ]; then
  step "installing llvm-profdata (rustup component add llvm-tools)"
  rustup component add llvm-tools >&2
  LLVM_PROFDATA=$(profdata_tool)
  [ -n "$LLVM_PROFDATA" ] || { echo "pgo-build: no llvm-profdata after rustup component add llvm-tools" >&2; exit 1; }
fi

step "1. instrumented build (target/pgo/generate)"
RUSTFLAGS="-Cprofile-generate=$PROFILES" \
  cargo build --release --locked --bin sipadmit --target-dir "$PGO/generate" >&2
# Build scripts and proc macros were instrumented too: their counts are not sipadmit's.
rm -rf "$PROFILES"
mkdir -p "$PROFILES"

step "2. training: $CALLS REGISTERs over UDP and over TCP, $((CALLS / 2)) INVITEs over UDP, then report"
TRAINED="$PGO/generate/release/sipadmit"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgo-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# A training run only gathers counts: a few calls lost to a busy machine (a SIPp
# retransmission timer, a late answer) do not spoil them, so it passes with at least 99 %
# of its calls answered. Anything worse, or a run that never reached the load, fails the
# build. The strict check comes after: .ci/run loads the built binary with no call lost.
train() { # transport scenario calls
  local rc=0 result ok failed
  scripts/load/register_latency.sh --transport "$1" --scenario "$2" --calls "$3" --rate 2000 \
      --sipadmit "$TRAINED" --workers 1 --decision-log "$WORK/decisions.log" > "$WORK/train.txt" 2>&1 \
    || rc=$?
  result=$(grep 'RESULT phase=proxy' "$WORK/train.txt" || true)
  ok=$(sed -n 's/.* ok=\([0-9]*\) .*/\1/p' <<< "$result")
  failed=$(sed -n 's/.* failed=\([0-9]*\) .*/\1/p' <<< "$result")
  # A relay that stopped or misbehaved loses far more than 1 % of the calls;
  # a run that never reached the load leaves no RESULT line.
  if [ -z "$ok" ] || [ $((ok * 100)) -lt $(($3 * 99)) ]; then
    tail -n 20 "$WORK/train.txt" >&2
    echo "pgo-build: training run ($1 $2) failed: exit $rc, ${ok:-no} of $3 calls answered (99 % needed)" >&2
    exit 1
  fi
  if [ "$rc" != 0 ]; then
    tail -n 5 "$WORK/train.txt" >&2
    echo "pgo-build: training run ($1 $2) exited $rc with $ok of $3 calls answered, $failed failed: kept (a profile needs no more)" >&2
  fi
  echo "$result" >&2
}
train udp register "$CALLS"
train tcp register "$CALLS"
train udp invite $((CALLS / 2))
"$TRAINED" report "$WORK/decisions.log" > /dev/null
"$TRAINED" report --json "$WORK/decisions.log" > /dev/null
ls "$PROFILES"/*.profraw > /dev/null 2>&1 || { echo "pgo-build: the training left no profile in $PROFILES" >&2; exit 1; }

step "3. merging the counts (target/pgo/sipadmit.profdata)"
"$LLVM_PROFDATA" merge -o "$PGO/sipadmit.profdata" "$PROFILES"/*.profraw

step "4. optimised build (target/pgo/use)"
# With the counts, LLVM also moves the never-run blocks of each hot function out of it
# (machine function splitting): the code a message runs is denser still.
RUSTFLAGS="-Cprofile-use=$PGO/sipadmit.profdata -Cllvm-args=-enable-split-machine-functions" \
  cargo build --release --locked --bin sipadmit --target-dir "$PGO/use" >&2
echo "$PGO/use/release/sipadmit"
