from __future__ import annotations

import sys
from pathlib import Path

# The training script and the spawned harness are plain modules in this folder;
# spawn children inherit sys.path, so they import them the same way.
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
