#!/usr/bin/env bash
# Run Kamailio as a demo registrar on 127.0.0.1:5070 (UDP and TCP), in the
# foreground, with the end-to-end tests' config (usrloc in memory, Path
# support, INVITEs to `helpdesk` answered "486 Workflow Reached").
# Ctrl-C stops it. Needs the Debian package `kamailio`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
port="${1:-5070}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/run"
mpath=/usr/lib/x86_64-linux-gnu/kamailio/modules
[ -d "$mpath" ] || mpath="$(dirname "$(find /usr/lib -name tm.so -path '*kamailio*' | head -n 1)")"
sed -e "s#@LISTEN_UDP@#udp:127.0.0.1:$port#" \
    -e "s#@LISTEN_TCP@#tcp:127.0.0.1:$port#" \
    -e "s#@LISTEN_EXTRA@##" \
    -e "s#@WORKFLOW@#helpdesk#" \
    -e "s#@MPATH@#$mpath#" \
    -e "s#@CHILDREN@#2#g" \
    "$here/../../tests/e2e/kamailio.cfg" > "$work/kamailio.cfg"
echo "Kamailio registrar on udp/tcp 127.0.0.1:$port (Ctrl-C to stop)" >&2
/usr/sbin/kamailio -DD -E -A WITH_TRACE -f "$work/kamailio.cfg" -Y "$work/run" -w "$work" -m 64 -M 8
