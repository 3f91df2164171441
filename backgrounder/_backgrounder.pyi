"""Types of the C extension module backgrounder._backgrounder.

The public names are re-exported by the backgrounder package; import them
from there. Checked against tests/typing/examples.py by tests/test_typing.py.

Every callable taking ``func, /, *args, **kwargs`` checks the arguments
against ``func``'s own signature. A callable whose return type is a
``Coroutine`` counts as async: its task gives the coroutine's result, as at
run time for ``async def`` functions, partials of them and objects whose
``__call__`` is one.

The awaitables are typed ``Coroutine[object, None, R]``: what they yield is
the event loop's business, and asyncio sends None. (With ``Any`` there, mypy
types ``asyncio.gather(task_a(), task_b())`` as ``Future[Any]``.)
"""

from collections.abc import Callable, Coroutine, Generator, Iterable
from typing import Any, Generic, final, overload

from typing_extensions import ParamSpec, TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")
# The default keeps a bare ``Task`` / ``BackgroundHandle`` annotation (as
# written for 0.2.0) valid under --strict: it means Task[Any].
_R_co = TypeVar("_R_co", covariant=True, default=Any)

class Task(Generic[_R_co]):
    """``Task(func, /, *args, **kwargs)``; ``await task()`` gives func's result."""

    # An async callable matches both overloads: the first, and its awaited
    # value, wins.
    @overload
    def __init__(
        self: Task[_R],
        func: Callable[_P, Coroutine[Any, Any, _R]],
        /,
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> None: ...
    @overload
    def __init__(
        self: Task[_R],
        func: Callable[_P, _R],
        /,
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> None: ...
    # Settable, as in 0.2.0; only the constructor checks args against func.
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    def __call__(self) -> Coroutine[object, None, _R_co]:
        """Runs func once when awaited; starts nothing before that."""

class Tasks(Task[None]):
    """Runs its tasks in order, or all at once when ``as_group``."""

    def __init__(
        self,
        tasks: Iterable[Task[Any] | Callable[[], Any]] | None = None,
        as_group: bool = False,
    ) -> None: ...
    @property
    def tasks(self) -> list[Task[Any] | Callable[[], Any]]: ...
    @property
    def as_group(self) -> bool: ...
    def add_task(
        self, func: Callable[_P, Any], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> None: ...
    def run_single(self) -> Coroutine[object, None, None]: ...
    def run_as_group(self) -> Coroutine[object, None, None]: ...

@final
class BackgroundHandle(Generic[_R_co]):
    """The running call of a @background function: the methods of a
    concurrent.futures.Future, and awaitable (``await handle`` gives the
    result)."""

    def result(self, timeout: float | None = None) -> _R_co: ...
    def exception(self, timeout: float | None = None) -> BaseException | None: ...
    def done(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def running(self) -> bool: ...
    def cancel(self) -> bool: ...
    def add_done_callback(
        self, fn: Callable[[BackgroundHandle[_R_co]], object], /
    ) -> None: ...
    def __await__(self) -> Generator[Any, None, _R_co]: ...

# Returns a callable, not an object with __call__, so that a decorated method
# binds self the way a function does.
@overload
def background(
    fn: Callable[_P, Coroutine[Any, Any, _R]], /
) -> Callable[_P, BackgroundHandle[_R]]: ...
@overload
def background(fn: Callable[_P, _R], /) -> Callable[_P, BackgroundHandle[_R]]: ...
def configure(
    *,
    max_workers: int | None = None,
    idle_timeout: float | None = None,
    on_error: Callable[[BaseException], object] | None = None,
) -> None: ...
def shutdown(wait: bool = True, *, timeout: float | None = None) -> bool: ...
def wait_idle(timeout: float | None = None) -> bool: ...
def stats() -> dict[str, int]: ...
def is_async_callable(obj: object, /) -> bool: ...
@overload
def run_in_threadpool(
    func: Callable[_P, Coroutine[Any, Any, _R]], /, *args: _P.args, **kwargs: _P.kwargs
) -> Coroutine[object, None, _R]: ...
@overload
def run_in_threadpool(
    func: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs
) -> Coroutine[object, None, _R]:
    """Awaits ``func(*args, **kwargs)``: a sync func on a pool thread, an async one
    awaited."""
def _loop_runner() -> Any: ...
def _wait_drained(timeout: float | None, self_async: bool, /) -> bool: ...
def _check_timeout(timeout: object, what: str, /) -> None: ...
def _is_background_task(task: object, /) -> bool: ...
def _run_in_pool(
    func: Callable[..., _R], args: tuple[Any, ...], kwargs: dict[str, Any] | None, /
) -> BackgroundHandle[_R]: ...
