"""`Client` (blocking) and `AsyncClient` (asyncio) for swarmd's HTTP API,
both on httpx.

What a call sends and how its answer is read is written once (`_Ops`, a
`_Req` per operation, built by `_Api`); the two clients differ only in how
they send it and in their iterators (`events`, `iter_tasks`, `wait`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import (
    Any,
    AsyncIterator,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Tuple,
    Union,
)
from urllib.parse import quote

import httpx

from . import __version__
from ._sse import SseParser
from .errors import RateLimited, WaitTimeout, error_from_response
from .models import (
    BatchItem,
    Event,
    Priority,
    Status,
    Task,
    TaskEventName,
    TaskPage,
    TaskSpec,
    TaskStatus,
)

__all__ = ["Client", "AsyncClient", "MAX_BATCH"]

#: Most tasks `POST /api/tasks/batch` takes in one request.
MAX_BATCH = 1000

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 30.0
# Added to `wait_ms` for the HTTP read timeout, so the server's own answer
# at the end of its wait is not cut off by ours.
WAIT_SLACK_S = 10.0

SpecLike = Union[TaskSpec, Mapping[str, Any]]


@dataclass
class _Req:
    method: str
    path: str
    parse: Callable[[httpx.Response], Any]
    params: Optional[Dict[str, Any]] = None
    body: Any = None
    headers: Optional[Dict[str, str]] = None
    timeout: Optional[float] = None


def _task(r: httpx.Response) -> Task:
    t = Task.from_dict(r.json())
    t.replayed = r.headers.get("idempotent-replayed", "").lower() == "true"
    return t


def _spec(spec: SpecLike) -> Dict[str, Any]:
    if isinstance(spec, TaskSpec):
        return spec.to_dict()
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise TypeError("a task is a TaskSpec or a mapping with at least 'type'")
    return {k: (v.value if isinstance(v, Priority) else v) for k, v in spec.items() if v is not None}


def _batch_items(r: httpx.Response) -> List[BatchItem]:
    """`{"items": [BatchItem, …]}`, one per task in request order."""
    items = []
    for i, raw in enumerate(r.json()["items"]):
        item = BatchItem.from_dict(raw)
        item.index = i
        if item.task is not None:
            item.task.replayed = item.replayed
        items.append(item)
    return items


def _event(name: str, data: str, event_id: Optional[str]) -> Event:
    value: Any = json.loads(data) if data else None
    kind = TaskEventName.parse(name)
    if kind == TaskEventName.RESULT and isinstance(value, dict):
        value = Task.from_dict(value)
    return Event(kind, value, event_id)


class _Api:
    """The operations, as requests; shared by both clients."""

    def __init__(
        self,
        base_url: Optional[str],
        api_key: Optional[str],
        tenant: Optional[str],
        timeout: float,
        headers: Optional[Mapping[str, str]],
    ) -> None:
        self.base_url = (base_url or os.environ.get("SWARMD_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("SWARMD_API_KEY")
        self.tenant = tenant if tenant is not None else os.environ.get("SWARMD_TENANT")
        self.timeout = timeout
        h = {"user-agent": f"swarmdirector-python/{__version__}", "accept": "application/json"}
        if self.api_key:
            h["authorization"] = f"Bearer {self.api_key}"
        if self.tenant:
            h["x-tenant"] = self.tenant
        h.update(headers or {})
        self.headers = h

    @staticmethod
    def _headers(request_id: Optional[str], idempotency_key: Optional[str] = None) -> Dict[str, str]:
        h = {}
        if request_id:
            h["x-request-id"] = request_id
        if idempotency_key:
            h["idempotency-key"] = idempotency_key
        return h

    def submit_req(self, spec: Dict[str, Any], request_id: Optional[str]) -> _Req:
        timeout = None
        if spec.get("wait_ms"):
            timeout = max(self.timeout, spec["wait_ms"] / 1000 + WAIT_SLACK_S)
        return _Req("POST", "/api/tasks", _task, body=spec, headers=self._headers(request_id), timeout=timeout)

    def batch_req(self, specs: Iterable[SpecLike], request_id: Optional[str]) -> _Req:
        items = [_spec(s) for s in specs]
        if len(items) > MAX_BATCH:
            raise ValueError(f"a batch holds at most {MAX_BATCH} tasks, not {len(items)}")
        return _Req("POST", "/api/tasks/batch", _batch_items, body={"tasks": items}, headers=self._headers(request_id))

    def get_req(self, task_id: str, request_id: Optional[str]) -> _Req:
        return _Req("GET", f"/api/tasks/{quote(str(task_id), safe='')}", _task, headers=self._headers(request_id))

    def list_req(
        self,
        status: Optional[Union[TaskStatus, str]],
        department: Optional[str],
        limit: Optional[int],
        cursor: Optional[str],
        fields: Optional[Iterable[str]],
        request_id: Optional[str],
    ) -> _Req:
        params: Dict[str, Any] = {}
        if status is not None:
            params["status"] = str(status)
        if department is not None:
            params["department"] = department
        if limit is not None:
            params["limit"] = limit
        if cursor is not None:
            params["cursor"] = cursor
        if fields:
            params["fields"] = ",".join(fields)
        return _Req(
            "GET", "/api/tasks", lambda r: TaskPage.from_dict(r.json()), params=params, headers=self._headers(request_id)
        )

    def action_req(self, task_id: str, action: str, request_id: Optional[str]) -> _Req:
        path = f"/api/tasks/{quote(str(task_id), safe='')}/{action}"
        return _Req("POST", path, _task, headers=self._headers(request_id))

    def status_req(self, request_id: Optional[str]) -> _Req:
        return _Req("GET", "/api/status", lambda r: Status.from_dict(r.json()), headers=self._headers(request_id))

    def events_req(self, task_id: str) -> Tuple[str, Dict[str, str]]:
        url = f"{self.base_url}/api/tasks/{quote(str(task_id), safe='')}/events"
        return url, {**self.headers, "accept": "text/event-stream"}

    def kwargs(self, req: _Req) -> Dict[str, Any]:
        """httpx's arguments for `req`, besides method and URL."""
        return dict(
            params=req.params,
            json=req.body,
            headers={**self.headers, **(req.headers or {})},
            timeout=req.timeout if req.timeout is not None else self.timeout,
        )

    @staticmethod
    def finish(req: _Req, r: httpx.Response) -> Any:
        if r.status_code >= 400:
            raise error_from_response(r.status_code, r.headers, r.content)
        return req.parse(r)


def _submit_spec(
    task_type: Union[str, SpecLike],
    args: Optional[Mapping[str, Any]],
    extra: Dict[str, Any],
) -> Dict[str, Any]:
    spec = _spec(task_type) if not isinstance(task_type, str) else {"type": task_type}
    if args is not None:
        spec["args"] = dict(args)
    for k, v in extra.items():
        if v is not None:
            spec[k] = v.value if isinstance(v, Priority) else v
    return spec


class _Ops:
    """The operations with their public signatures, each building its
    `_Req`; `_sync` and `_async` make them methods of the two clients."""

    @staticmethod
    def submit(
        api: _Api,
        task_type: Union[str, SpecLike],
        args: Optional[Mapping[str, Any]] = None,
        *,
        title: Optional[str] = None,
        description: Optional[str] = None,
        priority: Optional[Union[Priority, str]] = None,
        agent: Optional[str] = None,
        timeout_ms: Optional[int] = None,
        wait_ms: Optional[int] = None,
        idempotency_key: Optional[str] = None,
        retry: Optional[Mapping[str, int]] = None,
        run_at: Optional[Union[str, datetime]] = None,
        delay_ms: Optional[int] = None,
        callback_url: Optional[str] = None,
        request_id: Optional[str] = None,
    ) -> _Req:
        """`POST /api/tasks` -> `Task`. `task_type` is a type name (with
        `args` and the keywords) or a whole `TaskSpec`/dict. With `wait_ms`
        the server holds the answer up to that long: the task comes back
        finished if it ended in time, else queued or running. `timeout_ms`
        is the task's deadline. `task.replayed` is true for an idempotent
        replay of an earlier submission with the same `idempotency_key`.
        `retry` (`{"max_attempts", "backoff_ms", "max_backoff_ms"}`) runs
        the task again after a retryable failure; `task.history` lists
        every attempt. `run_at` (RFC 3339 text or an aware `datetime`) or
        `delay_ms` holds the task until then (`task.run_after`).
        `callback_url` has the finished task POSTed there, signed."""
        fields = dict(
            title=title,
            description=description,
            priority=priority,
            agent=agent,
            timeout_ms=timeout_ms,
            wait_ms=wait_ms,
            idempotency_key=idempotency_key,
            retry=dict(retry) if retry is not None else None,
            run_at=run_at.isoformat() if isinstance(run_at, datetime) else run_at,
            delay_ms=delay_ms,
            callback_url=callback_url,
        )
        return api.submit_req(_submit_spec(task_type, args, fields), request_id)

    @staticmethod
    def submit_batch(api: _Api, tasks: Iterable[SpecLike], *, request_id: Optional[str] = None) -> _Req:
        """`POST /api/tasks/batch` -> `[BatchItem]`: up to 1,000 tasks stored
        in one commit; one item per task, in order (its task, or its error).
        Each task may carry its own `idempotency_key`."""
        return api.batch_req(tasks, request_id)

    @staticmethod
    def get(api: _Api, task_id: str, *, request_id: Optional[str] = None) -> _Req:
        """`GET /api/tasks/{id}` -> `Task`."""
        return api.get_req(task_id, request_id)

    @staticmethod
    def list(
        api: _Api,
        *,
        status: Optional[Union[TaskStatus, str]] = None,
        department: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
        fields: Optional[Iterable[str]] = None,
        request_id: Optional[str] = None,
    ) -> _Req:
        """One page of `GET /api/tasks` -> `TaskPage`, newest first; pass its
        `next_cursor` as `cursor` for the next (None: the last page).
        `fields=["args", "result"]` includes those."""
        return api.list_req(status, department, limit, cursor, fields, request_id)

    @staticmethod
    def cancel(api: _Api, task_id: str, *, request_id: Optional[str] = None) -> _Req:
        """`POST /api/tasks/{id}/cancel` -> `Task`: `cancelled`, or (its agent
        still stopping) not yet. `Conflict` (`already_finished`) if it ended."""
        return api.action_req(task_id, "cancel", request_id)

    @staticmethod
    def retry(api: _Api, task_id: str, *, request_id: Optional[str] = None) -> _Req:
        """`POST /api/tasks/{id}/retry` -> `Task`: runs an ended task again
        as a new attempt."""
        return api.action_req(task_id, "retry", request_id)

    @staticmethod
    def status(api: _Api, *, request_id: Optional[str] = None) -> _Req:
        """`GET /api/status` -> `Status`."""
        return api.status_req(request_id)

    @staticmethod
    def schedules(api: _Api, *, request_id: Optional[str] = None) -> _Req:
        """`GET /api/schedules` -> a list of dicts: each `[[schedules]]`
        entry with its `next_run`, `last_run`, `last_task`."""
        return _Req("GET", "/api/schedules", lambda r: r.json()["schedules"],
                    headers=api._headers(request_id))

    @staticmethod
    def deliveries(api: _Api, task_id: str, *, request_id: Optional[str] = None) -> _Req:
        """`GET /api/tasks/{id}/deliveries` -> a list of dicts: each try
        of the task's completion webhook (`attempt`, `status`, `error`…)."""
        path = f"/api/tasks/{quote(str(task_id), safe='')}/deliveries"
        return _Req("GET", path, lambda r: r.json()["deliveries"], headers=api._headers(request_id))


def _sync(build: Callable[..., _Req]) -> Callable[..., Any]:
    @functools.wraps(build)
    def method(self: "Client", *args: Any, **kwargs: Any) -> Any:
        return self._send(build(self._api, *args, **kwargs))

    return method


def _async(build: Callable[..., _Req]) -> Callable[..., Any]:
    @functools.wraps(build)
    async def method(self: "AsyncClient", *args: Any, **kwargs: Any) -> Any:
        return await self._send(build(self._api, *args, **kwargs))

    return method


def _deadline(timeout: Optional[float]) -> Optional[float]:
    return None if timeout is None else time.monotonic() + timeout


def _left(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else deadline - time.monotonic()


def _stream_timeout(left: Optional[float], connect: float) -> httpx.Timeout:
    # Reads wait for the next event; swarmd sends a keep-alive comment every 15 s.
    read = None if left is None else max(0.05, left)
    return httpx.Timeout(connect, read=read)


class _Base:
    """What both clients hold: the request builder and an httpx client
    (`http`: one of the caller's, which then stays the caller's to close)."""

    _http_class: Any = None

    def __init__(
        self,
        base_url: Optional[str] = None,
        *,
        api_key: Optional[str] = None,
        tenant: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        headers: Optional[Mapping[str, str]] = None,
        http: Any = None,
    ) -> None:
        self._api = _Api(base_url, api_key, tenant, timeout, headers)
        self._own = http is None
        self._http = http or self._http_class(base_url=self._api.base_url, timeout=timeout)


class Client(_Base):
    """A blocking client.

    ```python
    with Client("http://127.0.0.1:8080", api_key="…") as sd:
        task = sd.submit("echo", {"hello": "world"}, wait_ms=5000)
    ```

    `base_url`, `api_key` and `tenant` default to `SWARMD_URL`,
    `SWARMD_API_KEY` and `SWARMD_TENANT`, as for the `swarmd` CLI. `tenant`
    (`X-Tenant`) counts only when the server has no keys. `timeout` is the
    HTTP timeout in seconds (a submit with `wait_ms` waits that much
    longer). Errors raise `ApiError` subclasses (see `swarmdirector.errors`).
    """

    _http_class = httpx.Client

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self._http.close()

    def _send(self, req: _Req) -> Any:
        r = self._http.request(req.method, self._api.base_url + req.path, **self._api.kwargs(req))
        return self._api.finish(req, r)

    submit = _sync(_Ops.submit)
    submit_batch = _sync(_Ops.submit_batch)
    get = _sync(_Ops.get)
    list = _sync(_Ops.list)
    cancel = _sync(_Ops.cancel)
    retry = _sync(_Ops.retry)
    status = _sync(_Ops.status)
    schedules = _sync(_Ops.schedules)
    deliveries = _sync(_Ops.deliveries)

    def iter_tasks(
        self,
        *,
        status: Optional[Union[TaskStatus, str]] = None,
        department: Optional[str] = None,
        page_size: Optional[int] = None,
        fields: Optional[Iterable[str]] = None,
    ) -> Iterator[Task]:
        """Every task that matches, newest first, page by page (cursor)."""
        cursor = None
        while True:
            page = self.list(status=status, department=department, limit=page_size, cursor=cursor, fields=fields)
            yield from page.tasks
            if page.next_cursor is None or not page.tasks:
                return
            cursor = page.next_cursor

    def events(self, task_id: str, *, timeout: Optional[float] = None) -> Iterator[Event]:
        """`GET /api/tasks/{id}/events`: `state` events (starting with the
        current one), `progress` events, then one `result` (the whole task)
        and the end. `timeout` bounds the wait for each next event."""
        url, headers = self._api.events_req(task_id)
        with self._http.stream("GET", url, headers=headers, timeout=_stream_timeout(timeout, self._api.timeout)) as r:
            if r.status_code >= 400:
                r.read()
                raise error_from_response(r.status_code, r.headers, r.content)
            parser = SseParser()
            for line in r.iter_lines():
                raw = parser.feed(line)
                if raw is not None:
                    yield _event(*raw)

    def wait(self, task_id: str, timeout: Optional[float] = None) -> Task:
        """Blocks until the task ends and returns it; `WaitTimeout` after
        `timeout` seconds (None: no limit). Follows the event stream, and
        reads the task again whenever the stream breaks off (or too many
        streams are open: then it polls)."""
        deadline = _deadline(timeout)
        while True:
            events = self.events(task_id, timeout=_left(deadline))
            try:
                for ev in events:
                    if ev.task is not None:
                        return ev.task
                    if _expired(deadline):
                        break
            except (httpx.TransportError, RateLimited):
                pass
            finally:
                events.close()
            task = self.get(task_id)
            pause = _after_read(task, deadline, timeout)
            if pause is None:
                return task
            time.sleep(pause)


def _expired(deadline: Optional[float]) -> bool:
    left = _left(deadline)
    return left is not None and left <= 0


def _after_read(task: Task, deadline: Optional[float], timeout: Optional[float]) -> Optional[float]:
    """For `wait`, after reading the task: None when it has ended, else the
    pause before following it again; `WaitTimeout` when time is up."""
    if task.done:
        return None
    left = _left(deadline)
    if left is not None and left <= 0:
        raise WaitTimeout(task.id, timeout or 0.0, task)
    return min(0.2, left) if left is not None else 0.2


class AsyncClient(_Base):
    """The asyncio twin of `Client`: the same methods, awaited; `events`
    and `iter_tasks` are async iterators.

    ```python
    async with AsyncClient() as sd:
        task = await sd.submit("echo", {"n": 1})
        task = await sd.wait(task.id, timeout=10)
    ```
    """

    _http_class = httpx.AsyncClient

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own:
            await self._http.aclose()

    async def _send(self, req: _Req) -> Any:
        r = await self._http.request(req.method, self._api.base_url + req.path, **self._api.kwargs(req))
        return self._api.finish(req, r)

    submit = _async(_Ops.submit)
    submit_batch = _async(_Ops.submit_batch)
    get = _async(_Ops.get)
    list = _async(_Ops.list)
    cancel = _async(_Ops.cancel)
    retry = _async(_Ops.retry)
    status = _async(_Ops.status)
    schedules = _async(_Ops.schedules)
    deliveries = _async(_Ops.deliveries)

    async def iter_tasks(
        self,
        *,
        status: Optional[Union[TaskStatus, str]] = None,
        department: Optional[str] = None,
        page_size: Optional[int] = None,
        fields: Optional[Iterable[str]] = None,
    ) -> AsyncIterator[Task]:
        """See `Client.iter_tasks`."""
        cursor = None
        while True:
            page = await self.list(status=status, department=department, limit=page_size, cursor=cursor, fields=fields)
            for t in page.tasks:
                yield t
            if page.next_cursor is None or not page.tasks:
                return
            cursor = page.next_cursor

    async def events(self, task_id: str, *, timeout: Optional[float] = None) -> AsyncIterator[Event]:
        """See `Client.events`."""
        url, headers = self._api.events_req(task_id)
        t = _stream_timeout(timeout, self._api.timeout)
        async with self._http.stream("GET", url, headers=headers, timeout=t) as r:
            if r.status_code >= 400:
                await r.aread()
                raise error_from_response(r.status_code, r.headers, r.content)
            parser = SseParser()
            async for line in r.aiter_lines():
                raw = parser.feed(line)
                if raw is not None:
                    yield _event(*raw)

    async def wait(self, task_id: str, timeout: Optional[float] = None) -> Task:
        """See `Client.wait`."""
        deadline = _deadline(timeout)
        while True:
            events = self.events(task_id, timeout=_left(deadline))
            try:
                async for ev in events:
                    if ev.task is not None:
                        return ev.task
                    if _expired(deadline):
                        break
            except (httpx.TransportError, RateLimited):
                pass
            finally:
                await events.aclose()
            task = await self.get(task_id)
            pause = _after_read(task, deadline, timeout)
            if pause is None:
                return task
            await asyncio.sleep(pause)
