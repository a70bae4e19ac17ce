#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs the real peers the tests talk to
# (Debian packages), then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(iproute2 util-linux passwd procps postfix swaks dnsmasq-base python3-aiosmtpd opendkim opendkim-tools python3-milter dovecot-lmtpd openssl python3-dkim python3-fusepy libfuse2)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing test peers: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

cargo test --workspace --locked "$@"
