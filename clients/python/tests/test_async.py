"""The asyncio client against a real swarmd (each test runs its own loop:
no pytest plugin needed)."""

import asyncio
import uuid

import pytest

from swarmdirector import AsyncClient, NotFound, TaskStatus, WaitTimeout


def run(coro):
    return asyncio.run(coro)


def test_async_submit_wait_and_events(server):
    async def go():
        async with AsyncClient(server.url) as c:
            t = await c.submit("echo", {"a": 1}, wait_ms=5000)
            assert t.status == TaskStatus.SUCCEEDED and t.result["echo"] == {"a": 1}
            t = await c.submit("py", {"progress": 2, "sleep_ms": 500})
            events = [e async for e in c.events(t.id, timeout=10)]
            assert [e.data for e in events if e.event == "progress"] == [{"step": 1, "of": 2}, {"step": 2, "of": 2}]
            assert events[-1].task.status == TaskStatus.SUCCEEDED
            assert (await c.wait(t.id, timeout=5)).status == TaskStatus.SUCCEEDED

    run(go())


def test_async_tasks_run_side_by_side(server):
    async def go():
        async with AsyncClient(server.url) as c:
            tasks = await asyncio.gather(*(c.submit("sim", {"latency_ms": 200}) for _ in range(10)))
            done = await asyncio.gather(*(c.wait(t.id, timeout=10) for t in tasks))
            assert all(t.status == TaskStatus.SUCCEEDED for t in done)

    run(go())


def test_async_list_cancel_status_and_errors(server):
    async def go():
        async with AsyncClient(server.url, tenant="a-" + uuid.uuid4().hex[:10]) as c:
            ids = [(await c.submit("echo", {"i": i}, wait_ms=5000)).id for i in range(3)]
            assert [t.id async for t in c.iter_tasks(page_size=1)] == ids[::-1]
            t = await c.submit("py", {"sleep_ms": 5000})
            with pytest.raises(WaitTimeout):
                await c.wait(t.id, timeout=0.2)
            await c.cancel(t.id)
            assert (await c.wait(t.id, timeout=10)).status == TaskStatus.CANCELLED
            with pytest.raises(NotFound) as e:
                await c.get(str(uuid.uuid4()))
            assert e.value.error_code == "not_found"
            s = await c.status()
            assert s.pool("echo").agent == "echo"

    run(go())
