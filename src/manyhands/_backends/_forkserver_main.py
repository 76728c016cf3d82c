"""Imported only inside the forkserver: import the parent's ``__main__`` there, once.

Workers of a forkserver start as forks of it, and each then imports the
parent's main script (as ``__mp_main__``, so that functions defined there can
be unpickled) unless the forkserver already has. ``set_forkserver_preload``
accepts ``"__main__"`` for that, but the path never reached the forkserver
(CPython gh-126631, gh-137996: broken since 3.4, fixed in 2025 for 3.13 and
newer only; 3.11 and 3.12 keep the bug), so every worker ran the main script
again: 10-50 ms per worker, paid again for every replacement after a crash.
The parent passes what this module needs in :data:`ENV` while the forkserver
starts (see ``ProcessBackend``), and it does what the forkserver should have
done. Anything that fails here is left to
the workers, which would have done it anyway.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from multiprocessing import process, spawn
from typing import Any

__all__ = ["ENV", "importing_main", "main_spec"]

ENV = "MANYHANDS_FORKSERVER_MAIN"
_importing = [False]  # this process is the forkserver, importing the main script now


def importing_main() -> bool:
    """Whether this process is the forkserver, running the main script's import.

    A script without an ``if __name__ == "__main__":`` guard starts a run
    here; the process backend then refuses quietly (see
    ``_refuse_while_importing_main``), as the forkserver must live on.
    """
    return _importing[0]


def main_spec() -> str | None:
    """What the forkserver needs to import this process's ``__main__``, as JSON (or None)."""
    data = spawn.get_preparation_data("manyhands-forkserver")
    mains = ("init_main_from_path", "init_main_from_name")
    wanted: dict[str, Any] = {key: data[key] for key in mains if key in data}
    if not wanted:
        return None  # an interactive session: there is nothing to import
    wanted["sys_path"] = data.get("sys_path", sys.path)
    wanted["sys_argv"] = data.get("sys_argv", sys.argv)
    return json.dumps(wanted)


def _import_main(spec: str) -> None:
    wanted = json.loads(spec)
    # As a worker would see them (the forkserver's own are those of `python -c`):
    sys.path[:] = wanted["sys_path"]
    sys.argv[:] = wanted["sys_argv"]
    process.current_process()._inheriting = True  # type: ignore[attr-defined]
    _importing[0] = True
    try:
        if "init_main_from_name" in wanted:
            spawn._fixup_main_from_name(wanted["init_main_from_name"])  # type: ignore[attr-defined]
        else:
            spawn.import_main_path(wanted["init_main_from_path"])
    finally:
        _importing[0] = False
        del process.current_process()._inheriting  # type: ignore[attr-defined]


_spec = os.environ.pop(ENV, None)
if _spec is not None:
    # Whatever the script does (even sys.exit), the forkserver must live on;
    # the workers will import it themselves, and report what goes wrong.
    with contextlib.suppress(BaseException):
        _import_main(_spec)
