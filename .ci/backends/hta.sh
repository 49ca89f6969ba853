#!/usr/bin/env bash
# Holistic Trace Analysis for tests/perfetto/test_hta.py, in its own venv (.venv-hta): HTA
# depends on jupyterlab and pins nothing we need, so it is installed --no-deps with the
# packages its trace loading and analyses import, and the project's .venv is never touched.
set -euo pipefail
cd "$(dirname "$0")/../.."
HTA_VERSION=0.5.0
venv=.venv-hta
if [ "$(cat "$venv/.sched-trace-hta" 2>/dev/null)" = "$HTA_VERSION" ] \
        && "$venv/bin/python" -c "import hta.trace_analysis" 2>/dev/null; then
    exit 0  # installed already
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps "holistictraceanalysis==$HTA_VERSION" \
    numpy pandas python-dateutil pytz tzdata six plotly narwhals pydot pyparsing networkx psutil pyyaml packaging
"$venv/bin/python" -c "import hta.trace_analysis"
echo "$HTA_VERSION" > "$venv/.sched-trace-hta"
