# The compiled hot path (src/pybeam/_speedups.c); see pybeam.speedups.
from collections.abc import Awaitable, Coroutine
from contextvars import ContextVar
from typing import Any

class Receiving(Coroutine[Any, Any, Any]):
    def send(self, value: Any, /) -> Any: ...
    def throw(self, typ: Any, val: Any = ..., tb: Any = ..., /) -> Any: ...
    def close(self) -> None: ...
    def __await__(self) -> Any: ...

def setup_scheduler(
    *,
    Process: type,
    Pid: type,
    ProcessTask: type,
    Wake: type,
    RunQueue: type,
    states: tuple[int, int, int],
    CancelledError: type[BaseException],
    enter_task: Any,
    leave_task: Any,
    current_task: Any,
    future_done: Any,
    budget: int,
) -> None: ...
def setup_kernel(*, send: Any, receive: Any, current: ContextVar[Any]) -> None: ...
def waiting(wake: Any, mailbox: Any, /) -> Awaitable[Any]: ...
def popped(queue: Any, /) -> Awaitable[Any]: ...

class Function:
    """A compiled function with a ``__dict__`` (its name, docstring, signature)."""

    __name__: str
    __qualname__: str
    __signature__: Any
    __wrapped__: Any
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

def send(dest: Any, msg: Any) -> Any: ...

receive: Function
