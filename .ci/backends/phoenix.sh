#!/usr/bin/env bash
# A real OTLP trace backend for tests/backends/: Arize Phoenix (serves OTLP/HTTP with its
# own store and a GraphQL/REST query API). It is large, so it gets its own venv,
# .venv-phoenix, whose dependencies cannot clash with the project's .venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
PHOENIX_VERSION=20.26.1
venv=.venv-phoenix
# The marker is written only after a complete install that imported: checking it is instant.
if [ -x "$venv/bin/phoenix" ] && [ "$(cat "$venv/.sched-trace-phoenix" 2>/dev/null)" = "$PHOENIX_VERSION" ]; then
    exit 0  # installed already
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "arize-phoenix==$PHOENIX_VERSION"
"$venv/bin/python" -c "import phoenix"
echo "$PHOENIX_VERSION" > "$venv/.sched-trace-phoenix"
