"""DynamicBatcher: grouping, ordering, chunking, failures, cancellation, close, stats.

No test depends on timing for its outcome: where a batch must be "in flight", `fn` blocks on a
`threading.Event` that the test sets; every test runs under a generous overall timeout so that a
bug shows up as a failure, not a hung suite.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from aads.batching import BatcherClosed, BatchStats, DynamicBatcher

T = TypeVar("T")
TIMEOUT_S = 10.0  # per test, only ever reached if the batcher hangs


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main(), TIMEOUT_S)

    return asyncio.run(bounded())


class Recorder:
    """`fn` for the batcher: records each batch, returns x * 10; can block until released."""

    def __init__(self, *, blocked: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.threads: set[int] = set()
        self.entered = threading.Event()
        self.release = threading.Event()
        if not blocked:
            self.release.set()

    def __call__(self, xs: list[int]) -> list[int]:
        self.calls.append(list(xs))
        self.threads.add(threading.get_ident())
        self.entered.set()
        assert self.release.wait(TIMEOUT_S), "test never released fn"
        return [x * 10 for x in xs]

    @property
    def sizes(self) -> list[int]:
        return [len(call) for call in self.calls]


async def wait_until_entered(fn: Recorder) -> None:
    """Wait (without blocking the loop) until `fn` is running in the executor."""
    assert await asyncio.to_thread(fn.entered.wait, TIMEOUT_S)


async def settle() -> None:
    """Let every ready task run up to its next real wait."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_concurrent_submits_are_grouped_into_fewer_calls_each_within_max_batch_size() -> None:
    fn = Recorder()

    async def main() -> list[list[int]]:
        batcher = DynamicBatcher(fn, max_batch_size=8, max_wait_ms=50)
        results = await asyncio.gather(*(batcher.submit([i]) for i in range(20)))
        await batcher.close()
        return results

    results = run(main)
    assert results == [[i * 10] for i in range(20)]
    assert len(fn.calls) < 20
    assert all(size <= 8 for size in fn.sizes)
    assert sorted(x for call in fn.calls for x in call) == list(range(20))


def test_multi_item_requests_get_their_outputs_in_item_order() -> None:
    fn = Recorder()
    requests = [[3, 1, 2], [9, 8], [5], [7, 6, 4, 0]]

    async def main() -> list[list[int]]:
        batcher = DynamicBatcher(fn, max_batch_size=16, max_wait_ms=50)
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.close()
        return results

    assert run(main) == [[x * 10 for x in r] for r in requests]


def test_request_not_split_when_next_one_does_not_fit() -> None:
    fn = Recorder()
    requests = [[1, 2, 3], [4, 5, 6], [7, 8]]

    async def main() -> list[list[int]]:
        batcher = DynamicBatcher(fn, max_batch_size=4, max_wait_ms=50)
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.close()
        return results

    assert run(main) == [[x * 10 for x in r] for r in requests]
    assert fn.calls[0] == [1, 2, 3]  # [4, 5, 6] would make 6 > 4: it waits for the next batch
    assert all(size <= 4 for size in fn.sizes)
    for r in requests:  # each request went through whole, in one call
        assert any(call[i : i + len(r)] == r for call in fn.calls for i in range(len(call)))


def test_request_larger_than_max_batch_size_is_chunked_and_reassembled_in_order() -> None:
    fn = Recorder()
    items = [9, 0, 8, 1, 7, 2, 6, 3, 5, 4]

    async def main() -> list[int]:
        batcher = DynamicBatcher(fn, max_batch_size=4, max_wait_ms=1)
        result = await batcher.submit(items)
        await batcher.close()
        return result

    assert run(main) == [x * 10 for x in items]
    assert fn.calls == [items[0:4], items[4:8], items[8:10]]


def test_max_batch_size_one_calls_fn_once_per_item_in_arrival_order() -> None:
    fn = Recorder()

    async def main() -> list[list[int]]:
        batcher = DynamicBatcher(fn, max_batch_size=1, max_wait_ms=50)
        results = await asyncio.gather(*(batcher.submit([i]) for i in range(5)))
        await batcher.close()
        return results

    assert run(main) == [[i * 10] for i in range(5)]
    assert fn.calls == [[i] for i in range(5)]


def test_max_wait_zero_processes_each_request_alone_in_arrival_order() -> None:
    fn = Recorder()

    async def main() -> list[list[int]]:
        batcher = DynamicBatcher(fn, max_batch_size=32, max_wait_ms=0)
        results = await asyncio.gather(*(batcher.submit([i, -i]) for i in range(1, 5)))
        await batcher.close()
        return results

    assert run(main) == [[i * 10, -i * 10] for i in range(1, 5)]
    assert fn.calls == [[i, -i] for i in range(1, 5)]


def test_empty_request_returns_empty_without_calling_fn() -> None:
    fn = Recorder()

    async def main() -> list[int]:
        batcher = DynamicBatcher(fn)
        result = await batcher.submit([])
        await batcher.close()
        return result

    assert run(main) == []
    assert fn.calls == []


def test_fn_runs_off_the_event_loop_thread_on_one_dedicated_thread() -> None:
    fn = Recorder()

    async def main() -> None:
        batcher = DynamicBatcher(fn, max_batch_size=1, max_wait_ms=0)
        await asyncio.gather(*(batcher.submit([i]) for i in range(3)))
        await batcher.close()

    run(main)
    assert len(fn.threads) == 1
    assert threading.get_ident() not in fn.threads


def test_fn_runs_in_the_given_executor() -> None:
    from concurrent.futures import ThreadPoolExecutor

    fn = Recorder()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="given") as executor:
        names: list[str] = []

        def named(xs: list[int]) -> list[int]:
            names.append(threading.current_thread().name)
            return fn(xs)

        async def main() -> list[int]:
            batcher = DynamicBatcher(named, executor=executor)
            result = await batcher.submit([1, 2])
            await batcher.close()
            return result

        assert run(main) == [10, 20]
        assert names and all(name.startswith("given") for name in names)
        assert executor.submit(lambda: 1).result() == 1  # close() left it usable


def test_an_item_that_makes_fn_raise_fails_only_its_own_request_not_its_batch() -> None:
    boom = RuntimeError("boom")

    def fn(xs: list[int]) -> list[int]:
        if any(x < 0 for x in xs):
            raise boom
        return [x * 10 for x in xs]

    async def main() -> tuple[list[Any], list[int]]:
        batcher = DynamicBatcher(fn, max_batch_size=2, max_wait_ms=50)
        first = await asyncio.gather(
            *(batcher.submit([x]) for x in (-1, 2, 3, 4)), return_exceptions=True
        )
        later = await batcher.submit([5])
        await batcher.close()
        return first, later

    first, later = run(main)
    assert first[0] is boom  # the poisoned request, batched with [2]
    assert first[1:] == [[20], [30], [40]]  # its neighbour in the batch is answered
    assert later == [50]


def test_a_request_whose_items_fail_alone_gets_the_error_and_the_batch_is_counted() -> None:
    def fn(xs: list[int]) -> list[int]:
        if any(x < 0 for x in xs):
            raise RuntimeError("poisoned")
        return [x * 10 for x in xs]

    async def main() -> tuple[list[Any], BatchStats]:
        batcher = DynamicBatcher(fn, max_batch_size=8, max_wait_ms=50)
        results = await asyncio.gather(
            batcher.submit([1, -1]), batcher.submit([2, 3]), return_exceptions=True
        )
        await batcher.close()
        return results, batcher.stats

    results, stats = run(main)
    assert isinstance(results[0], RuntimeError) and results[1] == [20, 30]
    # one failed call over both requests, then each alone (the first fails again)
    assert (stats.batches, stats.failed_batches) == (3, 2)


def test_fn_returning_wrong_number_of_outputs_raises_value_error_for_its_callers() -> None:
    def fn(xs: list[int]) -> list[int]:
        return [x * 10 for x in xs][:-1] if len(xs) > 1 else [x * 10 for x in xs]

    async def main() -> tuple[list[Any], list[int]]:
        batcher = DynamicBatcher(fn, max_batch_size=8, max_wait_ms=50, name="adapter-tomato")
        first = await asyncio.gather(
            batcher.submit([1, 2]), batcher.submit([3]), return_exceptions=True
        )
        later = await batcher.submit([4])  # alone: one output for one input
        await batcher.close()
        return first, later

    first, later = run(main)
    assert isinstance(first[0], ValueError)
    message = str(first[0])
    assert "adapter-tomato" in message and "1 outputs for 2 inputs" in message
    assert first[1] == [30]  # run alone after the batch of 3 failed, it is answered
    assert later == [40]


def test_cancelled_caller_does_not_stop_other_requests() -> None:
    fn = Recorder(blocked=True)

    async def main() -> tuple[list[int], list[int]]:
        batcher = DynamicBatcher(fn, max_batch_size=8, max_wait_ms=20)
        impatient = asyncio.create_task(asyncio.wait_for(batcher.submit([1]), 0.01))
        patient = asyncio.create_task(batcher.submit([2]))
        await wait_until_entered(fn)  # both are in the batch that fn is now running
        with pytest.raises(TimeoutError):
            await impatient  # fn is blocked, so the tiny timeout always fires
        fn.release.set()
        result = await patient
        later = await batcher.submit([3])
        await batcher.close()
        return result, later

    assert run(main) == ([20], [30])
    assert sorted(fn.calls[0]) == [1, 2]  # one batch; the two callers' arrival order may vary


def test_request_cancelled_while_queued_never_reaches_fn() -> None:
    fn = Recorder(blocked=True)

    async def main() -> list[list[int]]:
        batcher = DynamicBatcher(fn, max_batch_size=1, max_wait_ms=0)
        running = asyncio.create_task(batcher.submit([1]))
        await wait_until_entered(fn)
        queued = asyncio.create_task(batcher.submit([2]))
        after = asyncio.create_task(batcher.submit([3]))
        await settle()
        queued.cancel()
        fn.release.set()
        results = await asyncio.gather(running, after)
        assert queued.cancelled()
        await batcher.close()
        return results

    assert run(main) == [[10], [30]]
    assert fn.calls == [[1], [3]]


def test_cancelled_chunked_request_drops_its_unprocessed_pieces() -> None:
    fn = Recorder(blocked=True)

    async def main() -> list[int]:
        batcher = DynamicBatcher(fn, max_batch_size=2, max_wait_ms=0)
        big = asyncio.create_task(batcher.submit([1, 2, 3, 4, 5, 6]))
        await wait_until_entered(fn)  # first piece [1, 2] is running
        big.cancel()
        await settle()
        fn.release.set()
        result = await batcher.submit([7])
        await batcher.close()
        return result

    assert run(main) == [70]
    assert fn.calls == [[1, 2], [7]]


def test_submit_after_close_raises_batcher_closed() -> None:
    async def main() -> None:
        batcher = DynamicBatcher(Recorder())
        assert await batcher.submit([1]) == [10]
        await batcher.close()
        await batcher.close()  # idempotent
        assert batcher.closed
        with pytest.raises(BatcherClosed):
            await batcher.submit([2])

    run(main)


def test_close_without_any_submit_works() -> None:
    async def main() -> None:
        batcher = DynamicBatcher(Recorder())
        await batcher.close()
        with pytest.raises(BatcherClosed):
            await batcher.submit([1])

    run(main)


def test_close_drains_queued_requests() -> None:
    fn = Recorder(blocked=True)

    async def main() -> list[list[int]]:
        batcher = DynamicBatcher(fn, max_batch_size=2, max_wait_ms=0)
        tasks = [asyncio.create_task(batcher.submit([i])) for i in range(5)]
        await wait_until_entered(fn)  # [0] running, [1]..[4] queued
        closing = asyncio.create_task(batcher.close())
        await settle()
        assert not closing.done()
        with pytest.raises(BatcherClosed):
            await batcher.submit([99])
        fn.release.set()
        await closing
        return [task.result() for task in tasks]

    assert run(main) == [[i * 10] for i in range(5)]
    assert [x for call in fn.calls for x in call] == list(range(5))


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": -3}, "max_batch_size"),
        ({"max_batch_size": 2.5}, "max_batch_size"),
        ({"max_wait_ms": -1}, "max_wait_ms"),
        ({"max_wait_ms": float("nan")}, "max_wait_ms"),
        ({"max_wait_ms": float("inf")}, "max_wait_ms"),
        ({"max_wait_ms": "soon"}, "max_wait_ms"),
    ],
)
def test_invalid_constructor_arguments_raise_value_error_naming_the_parameter(
    kwargs: dict[str, Any], parameter: str
) -> None:
    with pytest.raises(ValueError, match=parameter):
        DynamicBatcher(Recorder(), **kwargs)


def test_stats_count_batches_and_items() -> None:
    fn = Recorder()

    async def main() -> tuple[BatchStats, BatchStats]:
        batcher = DynamicBatcher(fn, max_batch_size=4, max_wait_ms=50)
        before = batcher.stats
        await batcher.submit([1, 2, 3])
        await batcher.submit([4, 5, 6, 7, 8, 9])  # chunked: 4 + 2
        after = batcher.stats
        await batcher.close()
        return before, after

    before, after = run(main)
    assert before == BatchStats()
    assert before.mean_batch_size == 0.0
    assert (after.batches, after.items, after.max_batch_seen) == (3, 9, 4)
    assert after.failed_batches == 0
    assert after.mean_batch_size == pytest.approx(3.0)


def test_stats_count_failed_batches() -> None:
    def fn(xs: list[int]) -> list[int]:
        raise RuntimeError("model crashed")

    async def main() -> BatchStats:
        batcher = DynamicBatcher(fn)
        with pytest.raises(RuntimeError, match="model crashed"):
            await batcher.submit([1, 2])
        await batcher.close()
        return batcher.stats

    stats = run(main)
    assert (stats.batches, stats.items, stats.failed_batches) == (1, 2, 1)
