"""Running work on a few threads: hashing, compression and file I/O release the GIL.

One place for the three shapes the pipelines need: a call in the background
(`Job`), a map that fails fast (`parallel_map`), and a bounded streaming map
for transfers (`bounded_map`).
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator


class Job:
    """A call that may run on a thread of its own while the caller works.

    start() runs it in the background; result() waits for it (or runs it
    now if it never started) and returns its value or raises its error.
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn = fn
        self._thread: threading.Thread | None = None
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as e:  # handed to the caller by result()
            self._error = e
        self._done = True

    def start(self) -> None:
        if self._thread is None and not self._done:
            self._thread = threading.Thread(target=self._run, name="mfgit-job", daemon=True)
            self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def result(self) -> Any:
        if self._thread is None and not self._done:
            self._run()
        self.wait()
        if self._error is not None:
            raise self._error
        return self._value


def parallel_map(fn: Callable[[Any], Any], items: Iterable[Any]) -> list:
    """fn over items on up to four threads, results in order.

    At the first error, no further item is started and the error is raised
    once the running calls end: a bad tensor fails a commit or a checkout
    at once instead of after every other tensor was processed.

    Each thread takes the next item itself (a shared counter), rather than
    each item being a task of a pool: for 200,000 small tensors a future
    each cost more than the work, and a slow item still holds up no other.
    """
    items = list(items)
    results: list = [None] * len(items)
    taken = itertools.count()  # next() on it is atomic under the GIL
    failed = threading.Event()
    errors: list[BaseException] = []

    def work() -> None:
        while not failed.is_set():
            i = next(taken)
            if i >= len(items):
                return
            try:
                results[i] = fn(items[i])
            except BaseException as e:  # handed to the caller below
                errors.append(e)
                failed.set()
                return

    workers = max(1, min(4, os.cpu_count() or 1, len(items)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for f in [pool.submit(work) for _ in range(workers)]:
            f.result()
    if errors:
        raise errors[0]
    return results


def bounded_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[Any]:
    """fn over items on a thread pool, at most 2*workers in flight (so a
    generator of large payloads is not read ahead without bound); results in
    completion order. The first exception stops submission and is raised
    once the running calls have finished."""
    workers = max(1, workers)
    window = 2 * workers
    it = iter(items)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mfgit-transfer")
    pending: set[Future] = set()
    error: BaseException | None = None
    exhausted = False
    try:
        while True:
            while not exhausted and error is None and len(pending) < window:
                try:
                    item = next(it)
                except StopIteration:
                    exhausted = True
                    break
                pending.add(pool.submit(fn, item))
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                exc = fut.exception()
                if exc is not None:
                    if error is None:
                        error = exc
                    continue
                if error is None:
                    yield fut.result()
        if error is not None:
            raise error
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def progress_counter(progress, total: int):
    """A thread-safe `tick(amount, item)` that sums amounts and calls ``progress(done, total, item)``.

    For work spread over `parallel_map`'s threads; None when `progress` is None,
    so the hot loop only tests ``if tick``."""
    if progress is None:
        return None
    lock = threading.Lock()
    done = [0]

    def tick(amount: int, item: str = "") -> None:
        with lock:
            done[0] += amount
            progress(done[0], total, item)

    return tick
