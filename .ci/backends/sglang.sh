#!/usr/bin/env bash
# SGLang's source for tests/sglang/test_sglang_profile.py: the `sglang` wheel without its
# dependencies (no GPU stack, no second torch) in its own venv, .venv-sglang. The test only
# reads the package's source, as profile_check does, so nothing of it is imported.
set -euo pipefail
cd "$(dirname "$0")/../.."
SGLANG_VERSION=0.5.23
venv=.venv-sglang
if [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("sglang"))' 2>/dev/null)" = "$SGLANG_VERSION" ]; then
    exit 0  # installed already
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps "sglang==$SGLANG_VERSION"
test -f "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/sglang/srt/managers/scheduler.py"
