#!/usr/bin/env bash
# A real Prometheus server for tests/backends/: Debian's `prometheus` package (2.42).
# The tests start the binary themselves on 127.0.0.1 with a temporary config and data
# directory, so the package's own service is kept from starting (policy-rc.d exit 101).
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then
    exit 0  # installed already: nothing to do
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "prometheus.sh: not root; install Debian's 'prometheus' package to run tests/backends" >&2
    exit 1
fi
if [ -e /usr/sbin/policy-rc.d ]; then
    policy_backup=$(mktemp)
    cp -p /usr/sbin/policy-rc.d "$policy_backup"
else
    policy_backup=""
fi
restore_policy() {
    if [ -n "$policy_backup" ]; then mv "$policy_backup" /usr/sbin/policy-rc.d; else rm -f /usr/sbin/policy-rc.d; fi
}
trap restore_policy EXIT
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod +x /usr/sbin/policy-rc.d
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends: the server alone, not the node exporter and friends.
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v prometheus >/dev/null
