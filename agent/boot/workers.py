"""Share a list out over a few threads, in order, on the boot path (_thread, not
threading: see the import rule in agent/boot/__init__.py)."""

from __future__ import annotations

import _thread

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import TypeVar

    T = TypeVar("T")


def share_out(items: Iterable[T], threads: int, work: Callable[[Callable[[], T | None]], None],
              *, wait: bool) -> None:
    """Run `work(take)` on `threads` threads; `take()` hands out the next item in order, then
    None. With `wait`, the calling thread is one of them and returns when all are done;
    without, it returns at once. When no thread can be started (a tight pid limit), the
    calling thread does what is left, waiting or not."""
    lock = _thread.allocate_lock()
    queue = iter(items)

    def take() -> T | None:
        with lock:
            return next(queue, None)

    def run(finished: _thread.LockType) -> None:
        try:
            work(take)
        finally:
            finished.release()

    finished: list[_thread.LockType] = []
    for _ in range(threads - 1 if wait else threads):
        done = _thread.allocate_lock()
        done.acquire()
        try:
            _thread.start_new_thread(run, (done,))
        except RuntimeError:
            break
        finished.append(done)
    if wait or len(finished) < threads:
        work(take)
    if wait:
        for done in finished:
            with done:
                pass
