"""A function that pickles here but cannot be rebuilt in a worker process, in words.

A worker process rebuilds ``fn`` (and ``initializer=``) from its pickle: a
module's function pickles to its module and name, so the worker imports that
module. The import can fail there though it worked here: a module that raises
outside the parent process (``multiprocessing.parent_process()``), one removed
or renamed since this process imported it, a path only this process has. So can
whatever a pickle calls (an object's ``__reduce__``). Such a failure is not an
initializer that raised, and its message says what could not be loaded, why,
and what to change.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._process_worker import RemoteError

__all__ = ["DID_NOT_RUN", "fn_not_loaded", "module_of", "not_loaded"]

#: How the Failure of an item whose fn could not be loaded ends.
DID_NOT_RUN = "; this item did not run"


def module_of(fn: object) -> str | None:
    """The module a worker imports to rebuild ``fn`` by name (None: not known).

    >>> module_of(module_of), module_of(len), module_of(object())
    ('manyhands._backends._not_loaded', 'builtins', None)
    """
    if isinstance(fn, types.MethodType):
        fn = fn.__func__
    if not isinstance(fn, (types.FunctionType, types.BuiltinFunctionType, type)):
        return None  # (an instance's __module__ is its class's: not what its pickle names)
    module = getattr(fn, "__module__", None)
    return module if isinstance(module, str) else None


def not_loaded(
    what: str, error: tuple[str, str], module: str | None, where: str = "a worker process"
) -> str:
    """Why ``what`` ("fn" or "initializer") could not be loaded ``where``, and the fix.

    ``error``: the type's name and the message of what the worker's unpickling
    raised; ``module``: the module of ``what`` (:func:`module_of`).

    >>> print(not_loaded("fn", ("builtins.ModuleNotFoundError", "No module named 'jobs'"), "jobs"))
    fn could not be loaded in a worker process: builtins.ModuleNotFoundError: No module named \
'jobs' (a worker process imports fn's module `jobs` by name to rebuild fn: define fn in a \
module that a new process can import, not one that fails outside this process or a file \
removed since; or use backend='threads')
    """
    error_type, message = error[0], error[1]
    if module is None or module == "__main__":
        how = (
            f"rebuilds {what} from its pickle, and that failed there: what its pickle calls "
            "or names must work in a new process, not only in this one"
        )
    else:
        how = (
            f"imports {what}'s module `{module}` by name to rebuild {what}: define {what} in "
            "a module that a new process can import, not one that fails outside this process "
            "or a file removed since"
        )
    return (
        f"{what} could not be loaded in {where}: {error_type}: {message} "
        f"({where} {how}; or use backend='threads')"
    )


def fn_not_loaded(remote: RemoteError, fn: object, where: str) -> RemoteError:
    """The error of a batch's items whose ``fn`` could not be loaded ``where`` (``remote``)."""
    error_type, _, trace, lineage, _ = remote
    why = not_loaded("fn", remote[:2], module_of(fn), where)
    return error_type, f"{why}{DID_NOT_RUN}", trace, lineage, None
