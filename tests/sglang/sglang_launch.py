"""What ``python -m sglang.launch_server ARGS`` does, for launcher scripts that patch SGLang
first (step_counter.py, benchmarks/sglang_switch.py): they run as ``__main__`` and call
:func:`main`; SGLang's spawned scheduler processes run their top level again, not this."""

from __future__ import annotations

import os


def main(argv: list[str]) -> None:
    from sglang.launch_server import kill_process_tree, load_plugins, prepare_server_args, run_server

    load_plugins()
    server_args = prepare_server_args(argv)
    try:
        run_server(server_args)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)
