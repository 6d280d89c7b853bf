#!/usr/bin/env bash
# Set up everything the test suite needs, then run it (lint + all tests).
#
#   ./scripts/test.sh [pytest args...]
#
# - Debian packages (real servers, clients, tshark, tcpdump): installed with
#   apt-get when running as root and something is missing; as a normal user
#   the integration tests that need them skip.
# - Python packages: a virtualenv in .venv with scriptgen and its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(tshark tcpdump vsftpd redis-server redis-tools dnsmasq-base samba smbclient
              dnsutils ftp curl graphviz iproute2 nftables procps)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "== not root or no apt-get: tests needing ${missing[*]} will skip"
    fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PY" -m venv .venv
fi
echo "== installing scriptgen and test dependencies into .venv"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# compat mode puts the checkout on sys.path, so Twisted finds twisted/plugins/.
.venv/bin/python -m pip install -q -e '.[test]' --config-settings editable_mode=compat

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .

echo "== pytest"
exec .venv/bin/python -m pytest -q -rs -p no:cacheprovider "$@"
