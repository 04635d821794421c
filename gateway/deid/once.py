"""Tables built on first use, by one thread only.

``functools.cache`` lets every thread that asks before the first answer is stored build its
own copy. With four associations starting at once that meant four copies of the IOD tables
being built together: about 25 MB more peak memory, which glibc then keeps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from functools import wraps
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")


def built_once(build: Callable[_P, _T]) -> Callable[_P, _T]:
    """``build``'s result per arguments, built by the first caller while the others wait."""
    built: dict[Hashable, _T] = {}
    lock = threading.RLock()  # a build may ask for another of its own arguments

    @wraps(build)
    def get(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        key: Hashable = (args, tuple(kwargs.items())) if kwargs else args
        try:
            return built[key]
        except KeyError:
            pass
        with lock:
            if key not in built:
                built[key] = build(*args, **kwargs)
            return built[key]

    return get
