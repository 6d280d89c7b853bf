#!/usr/bin/env bash
# One command: set up .venv, train on the captures shipped in the repo (first
# run only), and run the honeypot on unprivileged ports of 127.0.0.1.
#
#   ./scripts/demo.sh            # Ctrl-C stops it
#   SCRIPTGEN_LISTEN=127.0.0.5 ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
LISTEN=${SCRIPTGEN_LISTEN:-127.0.0.1}
DEMO=var/demo
CAPTURES=tests/data/captures

if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PY" -m venv .venv
fi
echo "== installing scriptgen into .venv"
# compat mode puts the checkout on sys.path, so Twisted finds twisted/plugins/.
.venv/bin/python -m pip install -q -e . --config-settings editable_mode=compat

mkdir -p "$DEMO"
# Trained afresh every time (a few seconds; training is deterministic), so the
# demo never serves a model left behind by an older scriptgen.
echo "== training on the shipped captures (vsftpd, redis-server, dnsmasq)"
rm -rf "$DEMO/models"
.venv/bin/scriptgen train --model-dir "$DEMO/models" --port 21 --port 6379 --port 53 \
    "$CAPTURES/ftp.pcap" "$CAPTURES/redis.pcap" "$CAPTURES/dns.pcap"

cat > "$DEMO/scriptgen.ini" <<INI
; written by scripts/demo.sh; see etc/scriptgen.ini.dist for every key
[scriptgen]
model_dir = $DEMO/models
listen = $LISTEN
ports = tcp/21=2121, tcp/6379=16379, udp/53=10053
events = $DEMO/events.json
INI

cat <<MSG

== scriptgen is starting on $LISTEN, serving what it learned from real servers:
     FTP   (vsftpd)        tcp/$LISTEN:2121   ftp -n -p -v $LISTEN 2121, then: user anonymous me@example.org
     Redis (redis-server)  tcp/$LISTEN:16379  redis-cli -h $LISTEN -p 16379 TYPE delta:13
     DNS   (dnsmasq)       udp/$LISTEN:10053  dig @$LISTEN -p 10053 www.lab.test
   It answers only what the 50 captured runs per service did (see the machines
   below); anything else is logged as unmatched and met with silence. FTP data
   connections (passive ports) were not learned, so listings and downloads stop
   there (curl ftp:// waits after EPSV).
   events (JSON lines):    tail -f $DEMO/events.json
   learned machines:       .venv/bin/scriptgen show $DEMO/models
   Ctrl-C stops it.

MSG
exec .venv/bin/twistd -n --pidfile= scriptgen --config "$DEMO/scriptgen.ini"
