"""Functions by name: how a function crosses to another node.

A function travels as ``"module:qualname"`` and the receiving node imports it
(Erlang's ``{M, F}``). :func:`function_name` makes that name from a function
(refusing one no other node could import), :func:`resolve_function` turns it
back into the function. Used by spawn on another node (the distribution),
``rpc`` and ``global`` alike: a layer of its own, so none of them imports
another's private helpers.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["function_name", "resolve_function"]


def function_name(fn: Callable[..., Any] | str) -> str:
    """``"module:qualname"`` for a module-level function (or the string itself,
    checked to have that form: a ``ValueError`` if not)."""
    if isinstance(fn, str):
        head, sep, tail = fn.partition(":")
        if not sep or not head or not tail:
            raise ValueError(f"a function is named 'module:function', got {fn!r}")
        return fn
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise ValueError(f"{fn!r} is not a module-level function: another node cannot find it by name")
    if module == "__main__":
        # Run with ``python -m pkg.mod``, __main__ has an importable name; a
        # script run by path has none another node could import.
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is None or not spec.name:
            raise ValueError(
                f"{qualname} is defined in a script run by path: another node cannot import it; "
                "move it to a module, or run the script with python -m"
            )
        module = spec.name
    return f"{module}:{qualname}"


def resolve_function(name: str) -> Callable[..., Any]:
    """Import ``"module:qualname"`` and return that function.

    Looked up afresh every time (a module reloaded, or a name rebound, gives
    the new function, as a BEAM remote call reaches the latest code); a module
    already imported is taken from ``sys.modules`` without the import system,
    which costs more than the rest of an rpc's lookup.
    """
    parsed = _parsed.get(name)
    if parsed is None:
        module_name, sep, qualname = name.partition(":")
        if not sep or not module_name or not qualname:
            raise ValueError(f"a function is named 'module:function', got {name!r}")
        parsed = (module_name, *qualname.split("."))
        if len(_parsed) >= _PARSED_LIMIT:
            _parsed.clear()
        _parsed[name] = parsed
    module_name = parsed[0]
    obj: Any = sys.modules.get(module_name)
    if obj is None or getattr(getattr(obj, "__spec__", None), "_initializing", False):
        # Not imported yet, or being imported: the import system's locks apply.
        obj = importlib.import_module(module_name)
    for part in parsed[1:]:
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{name} is not callable")
    return obj  # type: ignore[no-any-return]


#: Names split into module and attribute path (the names alone, not what
#: they resolve to: that is looked up afresh every time).
_parsed: dict[str, tuple[str, ...]] = {}
_PARSED_LIMIT = 1024
