"""The blocking client against a real swarmd."""

import uuid

import httpx
import pytest

from conftest import KEYS, route_missing
from swarmdirector import (
    Client,
    Conflict,
    NotFound,
    RateLimited,
    TaskSpec,
    TaskStatus,
    Unauthorized,
    ValidationError,
    WaitTimeout,
)


def tenant():
    return "t-" + uuid.uuid4().hex[:12]


def test_submit_with_wait_ms_returns_the_finished_task(client):
    t = client.submit("echo", {"hello": "world"}, wait_ms=5000, title="hi")
    assert t.status == TaskStatus.SUCCEEDED and t.done and t.succeeded
    assert t.result["echo"] == {"hello": "world"}
    assert t.title == "hi" and t.department == "echo" and t.attempts == 1
    assert t.timings.total_ms is not None and t.finished_at >= t.created_at


def test_wait_follows_a_task_to_its_end(client):
    t = client.submit("py", {"sleep_ms": 300})
    assert t.status in (TaskStatus.QUEUED, TaskStatus.RUNNING)
    done = client.wait(t.id, timeout=10)
    assert done.id == t.id and done.status == TaskStatus.SUCCEEDED
    assert done.result["echo"] == {"sleep_ms": 300}


def test_events_stream_state_progress_and_result(client):
    t = client.submit("py", {"progress": 3, "sleep_ms": 500})
    events = list(client.events(t.id, timeout=10))
    names = [str(e.event) for e in events]
    assert names[0] == "state" and names[-1] == "result", names
    progress = [e.data for e in events if e.event == "progress"]
    assert progress == [{"step": i, "of": 3} for i in (1, 2, 3)]
    assert events[-1].task.status == TaskStatus.SUCCEEDED
    assert events[-2].status == TaskStatus.SUCCEEDED


def test_wait_times_out_and_cancel_ends_the_task(client):
    t = client.submit("py", {"sleep_ms": 5000})
    with pytest.raises(WaitTimeout) as e:
        client.wait(t.id, timeout=0.3)
    assert e.value.task is not None and not e.value.task.done
    client.cancel(t.id)
    assert client.wait(t.id, timeout=10).status == TaskStatus.CANCELLED
    with pytest.raises(Conflict) as e:
        client.cancel(t.id)
    assert (e.value.status, e.value.error_code) == (409, "already_finished")


def test_errors_carry_code_message_field_and_status(client):
    with pytest.raises(NotFound) as e:
        client.get(str(uuid.uuid4()))
    assert (e.value.status, e.value.error_code, e.value.field) == (404, "not_found", None)
    with pytest.raises(ValidationError) as e:
        client.submit("no-such-department")
    assert (e.value.status, e.value.error_code, e.value.field) == (422, "unknown_type", "type")
    assert "no-such-department" in e.value.message and e.value.request_id
    with pytest.raises(ValidationError) as e:
        client.submit("echo", wait_ms=10**9)
    assert e.value.field == "wait_ms" and not e.value.retryable


def test_a_failed_task_says_why(client):
    t = client.submit("py", {"fail": "no such customer"}, wait_ms=5000)
    assert t.status == TaskStatus.FAILED
    assert (t.error.code, t.error.message, t.error.stage) == ("agent_failed", "no such customer", "run")


def test_timeout_ms_is_the_tasks_deadline(client):
    t = client.submit("py", {"sleep_ms": 3000}, timeout_ms=300, wait_ms=5000)
    assert t.status == TaskStatus.TIMED_OUT
    assert (t.error.code, t.error.stage) == ("deadline_exceeded", "run")


def test_idempotency_key_replays_and_conflicts(client):
    key = uuid.uuid4().hex
    a = client.submit("echo", {"n": 1}, idempotency_key=key)
    b = client.submit("echo", {"n": 1}, idempotency_key=key)
    assert b.id == a.id and b.replayed and not a.replayed
    assert b.idempotency_key == key
    with pytest.raises(Conflict) as e:
        client.submit("echo", {"n": 2}, idempotency_key=key)
    assert e.value.error_code == "idempotency_conflict"


def test_request_id_reaches_the_worker(client):
    rid = "pytest-" + uuid.uuid4().hex[:8]
    t = client.submit("py", {}, wait_ms=5000, request_id=rid)
    assert t.result["request_id"] == rid


def test_list_pages_by_cursor(server):
    with Client(server.url, tenant=tenant()) as c:
        ids = [c.submit("echo", {"i": i}, wait_ms=5000).id for i in range(5)]
        page = c.list(limit=2)
        assert [t.id for t in page.tasks] == ids[::-1][:2] and page.next_cursor
        assert page.tasks[0].args is None  # large fields only when asked
        assert [t.id for t in c.iter_tasks(page_size=2)] == ids[::-1]
        with_args = c.list(limit=1, fields=["args", "result"]).tasks[0]
        assert with_args.args == {"i": 4} and with_args.result["echo"] == {"i": 4}
        assert len(list(c.iter_tasks(status="succeeded", department="echo"))) == 5
        assert list(c.iter_tasks(status=TaskStatus.FAILED)) == []


def test_tenants_see_only_their_own_tasks(server):
    with Client(server.url, tenant=tenant()) as a, Client(server.url, tenant=tenant()) as b:
        t = a.submit("echo", {}, wait_ms=5000)
        assert t.tenant == a._api.tenant
        with pytest.raises(NotFound):
            b.get(t.id)
    with Client(server.url, tenant="bad tenant!") as c, pytest.raises(ValidationError) as e:
        c.status()
    assert e.value.field == "X-Tenant"


def test_status_shows_the_departments(client):
    s = client.status()
    names = {p.name for p in s.pools}
    assert {"echo", "sim", "py", "fn"} <= names
    assert s.pool("py").workers["workers"] == 2 and s.pool("py").agent == "process"
    assert s.version and s.uptime_s >= 0 and "limit" in s.global_


def test_the_http_timeout_stretches_for_wait_ms(server):
    with Client(server.url, timeout=0.5) as c:
        t = c.submit("py", {"sleep_ms": 1000}, wait_ms=5000)
        assert t.status == TaskStatus.SUCCEEDED
        with pytest.raises(httpx.TimeoutException):
            list(c.events(c.submit("py", {"sleep_ms": 2000}).id, timeout=0.3))


def test_api_keys_name_the_tenant(keyed_server):
    with Client(keyed_server.url, api_key=KEYS["acme"]) as c:
        t = c.submit("echo", {"k": 1}, wait_ms=5000)
        assert t.tenant == "acme" and t.succeeded
    with Client(keyed_server.url) as c, pytest.raises(Unauthorized) as e:
        c.submit("echo")
    assert e.value.status == 401
    with Client(keyed_server.url, api_key="wrong") as c, pytest.raises(Unauthorized):
        c.get(t.id)
    with Client(keyed_server.url, api_key=KEYS["boss"]) as c:
        assert c.get(t.id).tenant == "acme"  # an admin reads every tenant's


def test_a_tenant_over_quota_gets_retry_after(keyed_server):
    with Client(keyed_server.url, api_key=KEYS["tiny"]) as c:
        first = c.submit("sim", {"latency_ms": 10000})
        try:
            with pytest.raises(RateLimited) as e:
                c.submit("sim", {"latency_ms": 1})
            assert (e.value.status, e.value.error_code) == (429, "tenant_quota")
            assert e.value.retry_after is not None and e.value.retry_after >= 0 and e.value.retryable
        finally:
            c.cancel(first.id)


def test_batch_submit_answers_per_item(client):
    key = uuid.uuid4().hex
    specs = [
        TaskSpec(type="echo", args={"i": 0}),
        {"type": "no-such-department"},
        TaskSpec(type="echo", args={"i": 2}, idempotency_key=key),
        {"type": "echo", "args": {"i": 2}, "idempotency_key": key},
    ]
    try:
        items = client.submit_batch(specs, request_id="batch-1")
    except Exception as e:
        if route_missing(e):
            pytest.skip(f"this swarmd has no POST /api/tasks/batch yet ({e})")
        raise
    assert [i.index for i in items] == [0, 1, 2, 3]
    assert [i.ok for i in items] == [True, False, True, True]
    assert items[0].status == 202 and not items[0].replayed
    assert items[1].status == 422 and items[1].error.error_code == "unknown_type"
    assert items[1].error.field.endswith("type") and items[1].id is None
    assert items[3].id == items[2].id and items[3].replayed and items[3].task.replayed
    for item in (items[0], items[2]):
        done = client.wait(item.id, timeout=10)
        assert done.result["echo"]["i"] == item.index and done.result["request_id"] == "batch-1"
    with pytest.raises(ValueError):
        client.submit_batch([{"type": "echo"}] * 1001)


def test_retry_runs_a_failed_task_again(client):
    t = client.submit("py", {"fail": "once"}, wait_ms=5000)
    assert t.status == TaskStatus.FAILED
    try:
        again = client.retry(t.id)
    except Exception as e:
        if route_missing(e):
            pytest.skip(f"this swarmd has no POST /api/tasks/{{id}}/retry yet ({e})")
        raise
    assert again.id == t.id
    done = client.wait(t.id, timeout=10)
    assert done.attempts >= 2 and done.status == TaskStatus.FAILED


def test_retries_and_delays_round_trip(client):
    t = client.submit("sim", {"latency_ms": 1, "fail_first": 1},
                      retry={"max_attempts": 3, "backoff_ms": 10}, wait_ms=5000)
    assert t.status == TaskStatus.SUCCEEDED and t.attempts == 2
    assert [a.status for a in t.history] == [TaskStatus.FAILED, TaskStatus.SUCCEEDED]
    assert t.history[0].error.code == "simulated_transient_failure"
    assert t.retry.max_attempts == 3
    later = client.submit("echo", {"n": 1}, delay_ms=60_000)
    assert later.status == TaskStatus.QUEUED and later.run_after is not None
    assert client.cancel(later.id).status == TaskStatus.CANCELLED


def test_schedules_and_deliveries_are_listed(client):
    assert client.schedules() == []  # the test server has none
    t = client.submit("echo", {"n": 1}, wait_ms=5000)
    assert client.deliveries(t.id) == []  # no callback: no tries
