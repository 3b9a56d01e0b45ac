"""Dynamic (micro-)batching for asyncio model servers: group concurrent requests into one forward.

Why: a KServe predictor (`async def predict(...)` of a `kserve.Model`) receives requests one at a
time, but on a GPU one forward pass over N images costs far less than N forward passes of one
image -- the kernels are the same, only wider, and the per-call overhead (launches, host/device
sync, Python) is paid once. So concurrent requests are held for at most a few milliseconds and
sent through the model together. The adapters (DoRA, SD-LoRA, CONEC-LoRA) change the backbone's
weights per crop, so images for different adapters cannot share a forward pass: a server keeps
one `DynamicBatcher` per adapter, and the crop router picks which one an image goes to.

Semantics:

- `await batcher.submit(items)` enqueues one request of one or more items and returns its
  outputs, in the order of `items`. A request is never split across batches unless it alone has
  more than `max_batch_size` items; then it is cut into `max_batch_size` pieces (the last one
  smaller), which go through consecutively and whose outputs are put back together in order.
  An empty request returns `[]` without calling the model.
- One background task per batcher (started on the first `submit`, bound to the running event
  loop) takes the oldest waiting request, then keeps adding the next waiting requests, in arrival
  order, until the next one would make the batch exceed `max_batch_size` items, or until
  `max_wait_ms` have passed since the first one was taken. It then calls `fn(batch_items)` in the
  executor and gives each request its slice of the outputs. Requests that arrive while `fn` runs
  wait and form the next batch, so the batch size grows with load and an idle server adds at most
  `max_wait_ms` latency.
- `fn` runs in `executor`, by default a dedicated single-thread `ThreadPoolExecutor`: the event
  loop is never blocked by a forward pass (health checks and new requests keep being accepted),
  and model calls are serialized on one thread (one batch at a time; the background task waits
  for each batch before forming the next, whatever the executor).
- `fn` must return exactly one output per input; otherwise the call fails with a `ValueError`
  that says how many outputs came back for how many inputs. When a call over several requests
  fails (`fn` raises, or the count is wrong), each of those requests is run again alone, so the
  failure reaches only the requests whose own items cause it: one poisoned item never fails its
  neighbours. A request that fails alone gets that exception; requests in other batches are
  unaffected and the batcher keeps serving.
- A caller that stops waiting (client disconnect, `asyncio.wait_for` timeout: its task is
  cancelled) does not disturb the batcher: if its request is still queued it is dropped before it
  reaches `fn`; if it is already in a batch, the batch runs and its outputs are discarded.
- `max_batch_size=1` or `max_wait_ms=0` means no batching: each request is processed alone, in
  arrival order (a larger request is still chunked when `max_batch_size` is 1).
- `await batcher.close()` stops accepting requests (`submit` then raises `BatcherClosed`),
  processes everything already queued, stops the background task and shuts down the default
  executor (an executor passed in is left to its owner). It is idempotent.

`submit` and `close` must be called from the event loop's thread; a batcher belongs to the first
loop that uses it (if that loop has been closed, the next loop takes it over).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import math
import operator
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from aads.errors import Unavailable

__all__ = ["BatchStats", "BatcherClosed", "DynamicBatcher"]

In = TypeVar("In")
Out = TypeVar("Out")


class BatcherClosed(Unavailable):
    """`submit` on a batcher that has been closed (or is closing)."""


@dataclasses.dataclass(frozen=True)
class BatchStats:
    """What a batcher has done so far: `batches` calls of `fn` over `items` items in all."""

    batches: int = 0  # calls of `fn` (a failed batch's requests rerun alone count too)
    items: int = 0
    max_batch_seen: int = 0
    failed_batches: int = 0  # calls where `fn` raised or returned the wrong number of outputs

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


class _Request(Generic[In, Out]):
    """One piece of a caller's request: its items and the future its caller awaits."""

    __slots__ = ("future", "items")

    def __init__(self, items: list[In], future: asyncio.Future[list[Out]]) -> None:
        self.items = items
        self.future = future


class DynamicBatcher(Generic[In, Out]):
    """Groups concurrent `submit` calls into batched calls of `fn` (see the module docstring)."""

    def __init__(
        self,
        fn: Callable[[list[In]], list[Out]],
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        executor: concurrent.futures.Executor | None = None,
        name: str = "batcher",
    ) -> None:
        try:
            max_batch_size = operator.index(max_batch_size)  # ints, numpy ints; not 2.0
        except TypeError:
            raise ValueError(
                f"max_batch_size must be an int >= 1, got {max_batch_size!r}"
            ) from None
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        try:
            max_wait_ms = float(max_wait_ms)
        except (TypeError, ValueError):
            raise ValueError(f"max_wait_ms must be a number >= 0, got {max_wait_ms!r}") from None
        if not math.isfinite(max_wait_ms) or max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be a finite number >= 0, got {max_wait_ms}")
        self._fn = fn
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_ms / 1000.0
        self._name = name
        self._own_executor = executor is None
        if executor is None:
            executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._executor = executor
        self._stats = BatchStats()
        self._closed = False
        # Bound to the event loop on first use (`_ensure_worker`).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: deque[_Request[In, Out]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def max_batch_size(self) -> int:
        return self._max_batch_size

    @property
    def max_wait_ms(self) -> float:
        return self._max_wait_s * 1000.0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stats(self) -> BatchStats:
        """A snapshot (the returned object does not change afterwards)."""
        return self._stats

    def __repr__(self) -> str:
        return (
            f"DynamicBatcher(name={self._name!r}, max_batch_size={self._max_batch_size}, "
            f"max_wait_ms={self.max_wait_ms:g}, closed={self._closed})"
        )

    async def submit(self, items: Sequence[In]) -> list[Out]:
        """Process `items` (in one batch if they fit) and return their outputs, in order."""
        if self._closed:
            raise BatcherClosed(f"{self._name}: submit after close()")
        items = list(items)
        if not items:
            return []
        loop = self._ensure_worker()
        size = self._max_batch_size
        pieces = [items[i : i + size] for i in range(0, len(items), size)]
        futures: list[asyncio.Future[list[Out]]] = []
        for piece in pieces:  # no await in between: the pieces stay consecutive in the queue
            future: asyncio.Future[list[Out]] = loop.create_future()
            self._pending.append(_Request(piece, future))
            futures.append(future)
        assert self._wakeup is not None
        self._wakeup.set()
        if len(futures) == 1:
            # Cancelling the caller cancels the future; the worker then skips or ignores it.
            return await futures[0]
        try:
            parts = await asyncio.gather(*futures)
        except BaseException:
            # One piece failed or the caller was cancelled: drop the pieces not yet processed.
            for future in futures:
                future.cancel()
            raise
        return [out for part in parts for out in part]

    async def close(self) -> None:
        """Refuse new requests, process the queued ones, then stop the background task."""
        self._closed = True
        worker = self._worker
        if worker is not None and not worker.done() and self._loop is asyncio.get_running_loop():
            assert self._wakeup is not None
            self._wakeup.set()
            await worker
        if self._own_executor:
            self._executor.shutdown(wait=False)

    # -- background task ------------------------------------------------------------------

    def _ensure_worker(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed():
                raise RuntimeError(f"{self._name}: used from a second event loop")
            # First use, or the previous loop is gone (with whatever was queued on it).
            self._loop = loop
            self._pending = deque()
            self._wakeup = asyncio.Event()
            self._worker = None
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(), name=f"{self._name}-worker")
        return loop

    async def _run(self) -> None:
        assert self._wakeup is not None and self._loop is not None
        wakeup, loop = self._wakeup, self._loop
        try:
            while True:
                while not self._pending:
                    if self._closed:
                        return
                    wakeup.clear()
                    await wakeup.wait()
                first = self._pending.popleft()
                if first.future.done():  # its caller was cancelled while it waited
                    continue
                batch = [first]
                size = len(first.items)
                deadline = loop.time() + self._max_wait_s
                while size < self._max_batch_size:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    if self._pending:
                        nxt = self._pending[0]
                        if nxt.future.done():
                            self._pending.popleft()
                            continue
                        if size + len(nxt.items) > self._max_batch_size:
                            break
                        batch.append(self._pending.popleft())
                        size += len(nxt.items)
                        continue
                    if self._closed:  # nothing more can arrive: don't wait for it
                        break
                    wakeup.clear()
                    try:
                        await asyncio.wait_for(wakeup.wait(), remaining)
                    except TimeoutError:
                        break
                await self._process(batch)
        finally:
            # Only reached with requests left if the task is cancelled or fails unexpectedly:
            # never leave a caller waiting forever.
            error = BatcherClosed(f"{self._name}: batcher stopped before this request ran")
            while self._pending:
                request = self._pending.popleft()
                if not request.future.done():
                    request.future.set_exception(error)

    async def _process(self, batch: list[_Request[In, Out]]) -> None:
        items = [item for request in batch for item in request.items]
        try:
            outputs = await self._call(items)
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            # One request's items may be what broke the batch: run each request alone, so
            # an error reaches only the callers whose own items raise it.
            for request in batch:
                if request.future.done():
                    continue
                try:
                    alone = await self._call(request.items)
                except Exception as err:  # noqa: BLE001 - it goes to this request's caller
                    _fail([request], err)
                else:
                    request.future.set_result(alone)
        except BaseException:
            # This task is being cancelled: the callers learn that their batch never finishes.
            _fail(batch, BatcherClosed(f"{self._name}: batcher stopped while this request ran"))
            raise
        else:
            start = 0
            for request in batch:
                end = start + len(request.items)
                if not request.future.done():
                    request.future.set_result(outputs[start:end])
                start = end

    async def _call(self, items: list[In]) -> list[Out]:
        """One call of `fn` in the executor, counted in the stats; raises what `fn` raised, or
        `ValueError` for a wrong number of outputs."""
        loop = asyncio.get_running_loop()
        failed = True
        try:
            outputs = list(await loop.run_in_executor(self._executor, self._fn, items))
            if len(outputs) != len(items):
                raise ValueError(
                    f"{self._name}: fn returned {len(outputs)} outputs for {len(items)} inputs; "
                    "it must return exactly one output per input, in order"
                )
            failed = False
            return outputs
        finally:
            s = self._stats
            self._stats = BatchStats(
                batches=s.batches + 1,
                items=s.items + len(items),
                max_batch_seen=max(s.max_batch_seen, len(items)),
                failed_batches=s.failed_batches + int(failed),
            )


def _fail(requests: list[_Request], error: BaseException) -> None:
    for request in requests:
        if not request.future.done():
            request.future.set_exception(error)
