#!/usr/bin/env bash
# A real OpenTelemetry collector for tests/fleet_net/: rotel-agent (OTLP gRPC/HTTP in,
# batching, OTLP out), a Rust binary that PyPI's `rotel` wheel carries. The tests run one
# per simulated host (the agent) and one gateway, in network namespaces.
# Its own venv, .venv-rotel: the wheel is only a carrier for the binary.
# Pinned: wheel 0.0.1a15 carries the binary that reports "rotel 0.0.1-alpha10" and runs on
# Debian 12's glibc 2.36; the 0.0.1a10 wheel's binary needs glibc 2.38 despite its tag.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROTEL_WHEEL=0.0.1a15
ROTEL_BINARY="rotel 0.0.1-alpha10"
venv=.venv-rotel
marker="$venv/.sched-trace-rotel"
# The marker is written only after an install whose binary ran: checking it is instant.
if [ "$(cat "$marker" 2>/dev/null)" = "$ROTEL_WHEEL" ] && [ -x "$(cat "$venv/.rotel-agent-path" 2>/dev/null)" ]; then
    exit 0  # installed already
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "rotel==$ROTEL_WHEEL"
agent=$("$venv/bin/python" -c "import rotel, pathlib; print(pathlib.Path(rotel.__file__).parent / 'rotel-agent')")
version=$("$agent" --version)
if [ "$version" != "$ROTEL_BINARY" ]; then
    echo "rotel.sh: $agent reports '$version', expected '$ROTEL_BINARY'" >&2
    exit 1
fi
echo "$agent" > "$venv/.rotel-agent-path"
echo "$ROTEL_WHEEL" > "$marker"
