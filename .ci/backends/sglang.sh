#!/usr/bin/env bash
# A runnable SGLang 0.5.23 HTTP server for tests/sglang/, in its own venv, .venv-sglang:
# `sglang` without its declared dependencies (a CUDA stack and torch 2.14), then what its CPU
# engine needs (sglang/requirements.txt), every version pinned by sglang/constraints.txt,
# torch==2.13.0+cpu (the torch this project pins). Then this checkout, editable and without
# dependencies, so SGLang's pins are never replaced. The two modules SGLang needs that no
# registry has for this torch (sgl_kernel's CPU build, torchvision) are test stand-ins under
# tests/sglang/standins/, put on PYTHONPATH by the tests, never installed here.
# Idempotent: a venv that is not this runnable install (an older source-only one, a failed
# install, other pins) is rebuilt.
set -euo pipefail
cd "$(dirname "$0")/../.."
SGLANG_VERSION=0.5.23
venv=.venv-sglang
spec=.ci/backends/sglang
stamp="$venv/.sched-trace-sglang"
want="sglang==$SGLANG_VERSION $(cat "$spec/requirements.txt" "$spec/constraints.txt" | sha256sum | cut -c1-16)"
pip_install() { "$venv/bin/pip" install -q --disable-pip-version-check "$@"; }
runnable() {
    [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && "$venv/bin/python" -c '
import importlib.metadata as m, sys, torch, transformers, fastapi, uvloop, zmq, xgrammar, soundfile
sys.exit(m.version("sglang") != sys.argv[1] or torch.__version__ != "2.13.0+cpu")' "$SGLANG_VERSION" 2>/dev/null
}
if ! runnable; then
    echo "sglang.sh: building $venv (sglang $SGLANG_VERSION and its CPU requirements, about 2.8 GB)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    pip_install --no-deps "sglang==$SGLANG_VERSION"
    pip_install -r "$spec/requirements.txt" -c "$spec/constraints.txt"
    echo "$want" > "$stamp"
    runnable || { echo "sglang.sh: $venv is still not runnable after the install" >&2; exit 1; }
fi
here=$(pwd -P)
installed=$("$venv/bin/python" -c 'import os, sched_trace, sched_trace_otel, sched_trace_perfetto; print(os.path.dirname(os.path.dirname(sched_trace.__file__)))' 2>/dev/null || true)
if [ "$installed" != "$here" ]; then
    pip_install --no-deps -e . -e plugins/otel -e plugins/perfetto -e plugins/prometheus
fi
# SGLang's HTTP server imports, with the test stand-ins, as the tests start it.
PYTHONPATH=tests/sglang/standins SGLANG_USE_CPU_ENGINE=1 "$venv/bin/python" - <<'PY'
import importlib.metadata as m, torch, sched_trace, sched_trace_otel  # noqa: F401
import sglang.srt.entrypoints.http_server  # noqa: F401
print("sglang.sh: sglang", m.version("sglang"), "torch", torch.__version__, "sched-trace", m.version("sched-trace"))
PY
