"""Typed views of swarmd's JSON, one dataclass per schema of the OpenAPI
document (`GET /api/openapi.json`, `components.schemas`).

Each class names its schema in `__schema__`; its fields are exactly that
schema's properties (the test `tests/test_models.py` compares them with the
document of a real server and fails on any field missing or extra). Fields
the schema does not require have defaults, so an answer that leaves them out
still parses. What a newer server adds lands in `extra` rather than being
lost or raising, and an enum value this client does not know stays a plain
string; both are marked `local` (not part of the schema).
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Dict, List, Optional, Union

__all__ = [
    "Blocker",
    "BatchItem",
    "ErrorBody",
    "Event",
    "PoolStatus",
    "Priority",
    "Status",
    "Task",
    "TaskError",
    "TaskEventName",
    "TaskPage",
    "TaskSpec",
    "TaskStatus",
    "Timings",
]


class _StrEnum(str, Enum):
    def __str__(self) -> str:  # "succeeded", not "TaskStatus.SUCCEEDED"
        return str(self.value)

    @classmethod
    def parse(cls, value: Any) -> Any:
        """The member for `value`, or `value` itself when it is not one."""
        try:
            return cls(value)
        except ValueError:
            return value


class TaskStatus(_StrEnum):
    """Schema `TaskStatus`: where a task is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in _FINAL


_FINAL = {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED}


class Priority(_StrEnum):
    """Schema `Priority`."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class Blocker(_StrEnum):
    """Schema `Blocker`: what a queued task waits for."""

    DEPARTMENT_LIMIT = "department_limit"
    GLOBAL_CAP = "global_cap"
    DATABASE = "database"
    SHUTDOWN = "shutdown"
    TOKEN_BUDGET = "token_budget"
    PROVIDER_PAUSE = "provider_pause"


class TaskEventName(_StrEnum):
    """Schema `TaskEventName`: the events of `GET /api/tasks/{id}/events`."""

    STATE = "state"
    PROGRESS = "progress"
    RESULT = "result"


def _local(default: Any = None, factory: Any = None) -> Any:
    """A field of this client's own, not of the schema."""
    if factory is not None:
        return field(default_factory=factory, repr=False, compare=False, metadata={"local": True})
    return field(default=default, repr=False, compare=False, metadata={"local": True})


def parse_time(value: Optional[str]) -> Optional[datetime]:
    """RFC 3339 (`2026-12-03T12:45:22.809Z`) as an aware datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    text = value.replace("Z", "+00:00").replace("z", "+00:00")
    if sys.version_info < (3, 11):
        # Older fromisoformat takes exactly 3 or 6 fraction digits.
        head, sep, rest = text.partition(".")
        if sep:
            digits = "".join(itertools.takewhile(str.isdigit, rest))
            tz = rest[len(digits):]
            text = f"{head}.{digits[:6].ljust(6, '0')}{tz}"
    dt = datetime.fromisoformat(text)
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


class _Model:
    """`from_dict` for the dataclasses below: known keys become fields
    (through `_convert`), the rest goes to `extra`."""

    __schema__ = ""
    _convert: Dict[str, Any] = {}

    @classmethod
    def schema_fields(cls) -> List[str]:
        """The field names that mirror the schema's properties."""
        return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("local")]  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> Any:
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        names = set(cls.schema_fields())
        kwargs: Dict[str, Any] = {}
        extra: Dict[str, Any] = {}
        for key, value in data.items():
            if key in names:
                conv = cls._convert.get(key)
                kwargs[key] = conv(value) if conv is not None and value is not None else value
            else:
                extra[key] = value
        obj = cls(**kwargs)  # type: ignore[call-arg]
        if "extra" in {f.name for f in dataclasses.fields(cls)}:  # type: ignore[arg-type]
            obj.extra = extra  # type: ignore[attr-defined]
        return obj

    def to_dict(self) -> Dict[str, Any]:
        """The JSON object (enums as strings, times as RFC 3339)."""
        out: Dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.metadata.get("local"):
                continue
            out[f.name] = _plain(getattr(self, f.name))
        out.update(getattr(self, "extra", None) or {})
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, _Model):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass
class ErrorBody(_Model):
    """Schema `Error`: the JSON body of every error answer."""

    __schema__ = "Error"
    error_code: str
    message: str
    field: Optional[str] = None


@dataclass
class TaskError(_Model):
    """Schema `TaskError`: why a task did not succeed."""

    __schema__ = "TaskError"
    code: str
    message: str
    stage: Optional[str] = None


@dataclass
class Timings(_Model):
    """Schema `Timings`: milliseconds per stage (absent: not reached)."""

    __schema__ = "Timings"
    admission_ms: Optional[float] = None
    persist_ms: Optional[float] = None
    queue_ms: Optional[float] = None
    run_ms: Optional[float] = None
    complete_ms: Optional[float] = None
    total_ms: Optional[float] = None
    extra: Dict[str, Any] = _local(factory=dict)


@dataclass
class RetryPolicy(_Model):
    """Schema `RetryPolicy`: how a task is retried after a retryable
    failure, as resolved when it was accepted."""

    __schema__ = "RetryPolicy"
    max_attempts: int
    backoff_ms: int
    max_backoff_ms: int
    extra: Dict[str, Any] = _local(factory=dict)


@dataclass
class Attempt(_Model):
    """Schema `Attempt`: one attempt in a task's `history`."""

    __schema__ = "Attempt"
    _convert = {
        "status": TaskStatus.parse,
        "error": TaskError.from_dict,
        "started_at": parse_time,
        "finished_at": parse_time,
    }
    attempt: int
    status: Union[TaskStatus, str]
    node: Optional[str] = None
    instance: Optional[str] = None
    started_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None
    run_ms: Optional[float] = None
    error: Optional[TaskError] = None
    extra: Dict[str, Any] = _local(factory=dict)


@dataclass
class Task(_Model):
    """Schema `Task`: a task as `GET /api/tasks/{id}` answers it."""

    __schema__ = "Task"
    _convert = {
        "status": TaskStatus.parse,
        "priority": Priority.parse,
        "waiting_for": Blocker.parse,
        "error": TaskError.from_dict,
        "timings": Timings.from_dict,
        "created_at": parse_time,
        "started_at": parse_time,
        "finished_at": parse_time,
        "deadline_at": parse_time,
        "run_after": parse_time,
        "retry": RetryPolicy.from_dict,
        "history": lambda h: [Attempt.from_dict(a) for a in h],
    }

    id: str
    type: str
    status: Union[TaskStatus, str]
    priority: Union[Priority, str]
    tenant: str
    department: str
    agent: str
    instance: Optional[str]
    error: Optional[TaskError]
    timeout_ms: int
    deadline_at: datetime
    created_at: datetime
    started_at: Optional[datetime]
    finished_at: Optional[datetime]
    attempts: int
    nodes: List[str]
    timings: Timings
    args: Optional[Dict[str, Any]] = None
    result: Any = None
    title: Optional[str] = None
    description: Optional[str] = None
    idempotency_key: Optional[str] = None
    waiting_for: Optional[Union[Blocker, str]] = None
    # Older servers (before task retries) send none of these three.
    retry: Optional[RetryPolicy] = None
    run_after: Optional[datetime] = None
    history: List[Attempt] = dataclasses.field(default_factory=list)
    # Completion webhooks: where the finished task goes, and how that went
    # (`pending`, `delivered`, `failed`).
    callback_url: Optional[str] = None
    callback_state: Optional[str] = None
    extra: Dict[str, Any] = _local(factory=dict)
    # From the answer's headers, not its body.
    replayed: bool = _local(False)

    @property
    def done(self) -> bool:
        """Whether the task has ended (succeeded, failed, timed out, cancelled)."""
        return isinstance(self.status, TaskStatus) and self.status.is_final

    @property
    def succeeded(self) -> bool:
        return self.status == TaskStatus.SUCCEEDED


@dataclass
class TaskPage(_Model):
    """Schema `TaskPage`: a page of `GET /api/tasks`, newest first."""

    __schema__ = "TaskPage"
    _convert = {"tasks": lambda ts: [Task.from_dict(t) for t in ts]}
    tasks: List[Task]
    next_cursor: Optional[str]
    extra: Dict[str, Any] = _local(factory=dict)


@dataclass
class TaskSpec(_Model):
    """Schema `TaskSpec`: the body of `POST /api/tasks` (and one item of a
    batch). Fields left `None` are not sent."""

    __schema__ = "TaskSpec"
    type: str
    args: Optional[Dict[str, Any]] = None
    title: Optional[str] = None
    description: Optional[str] = None
    priority: Optional[Union[Priority, str]] = None
    agent: Optional[str] = None
    timeout_ms: Optional[int] = None
    wait_ms: Optional[int] = None
    idempotency_key: Optional[str] = None
    # `{"max_attempts", "backoff_ms", "max_backoff_ms"}`, any of them.
    retry: Optional[Dict[str, Any]] = None
    # Start no earlier than this RFC 3339 time, or this many ms from now.
    run_at: Optional[str] = None
    delay_ms: Optional[int] = None
    # POST the finished task here (signed; host in `[webhooks] allow_hosts`).
    callback_url: Optional[str] = None
    # Fields of a newer server this client has no name for yet.
    extra: Dict[str, Any] = _local(factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in super().to_dict().items() if v is not None}


@dataclass
class PoolStatus(_Model):
    """Schema `PoolStatus`: one department in `GET /api/status`. Nested
    snapshots (limiter, latency, balancer, …) stay plain dicts."""

    __schema__ = "PoolStatus"
    _convert = {"waiting_for": Blocker.parse}
    name: str
    agent: str
    limit: Dict[str, Any]
    concurrency: int
    running: int
    queued: int
    queued_by_priority: Dict[str, int]
    queued_by_tenant: Dict[str, int]
    waiting_for: Optional[Union[Blocker, str]]
    queued_by_blocker: Dict[str, int]
    children_queued: int
    queue_capacity: int
    oldest_queued_ms: int
    queue_target_ms: float
    shedding: bool
    drain_per_s: float
    latency_ms: Dict[str, Any]
    instances: List[str]
    accepted: int
    rejected: int
    rejections: Dict[str, Any]
    succeeded: int
    failed: int
    timed_out: int
    expired_in_queue: int
    cancelled: int
    children: int
    child_outcomes: Dict[str, Any]
    balancer: Optional[Dict[str, Any]] = None
    workers: Optional[Dict[str, Any]] = None
    # Task retries (older servers send none).
    scheduled: int = 0
    retries: int = 0
    retries_refused: int = 0
    # Provider rate limits (older servers send none).
    provider_pauses: int = 0
    paused_ms: int = 0
    # Token budgets (older servers send none): per window (`minute`,
    # `day`) its `limit`, `spent`, `reserved` and `remaining`.
    tokens: Optional[Dict[str, Any]] = None
    token_pauses: int = 0
    extra: Dict[str, Any] = _local(factory=dict)


@dataclass
class Status(_Model):
    """Schema `StatusView` (`Status` and the HTTP side): `GET /api/status`."""

    __schema__ = "StatusView"
    _convert = {"pools": lambda ps: [PoolStatus.from_dict(p) for p in ps]}
    version: str
    node_id: str
    uptime_s: float
    database: Dict[str, Any]
    pools: List[PoolStatus]
    live_tasks: int
    global_: Dict[str, Any] = field(default_factory=dict, metadata={"json": "global"})
    resources: Dict[str, Any] = field(default_factory=dict)
    cpu_pool: Dict[str, Any] = field(default_factory=dict)
    transitions: Dict[str, Any] = field(default_factory=dict)
    draining: bool = False
    # Tenants' token budgets, by tenant (older servers send none).
    tenant_tokens: Dict[str, Any] = field(default_factory=dict)
    connections: Dict[str, Any] = field(default_factory=dict)
    long_requests: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = _local(factory=dict)

    @classmethod
    def schema_fields(cls) -> List[str]:
        return [_json_name(f) for f in dataclasses.fields(cls) if not f.metadata.get("local")]

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Status":
        data = dict(data)
        if "global" in data:
            data["global_"] = data.pop("global")
        names = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("local")}
        kwargs = {k: v for k, v in data.items() if k in names}
        if kwargs.get("pools") is not None:
            kwargs["pools"] = cls._convert["pools"](kwargs["pools"])
        obj = cls(**kwargs)
        obj.extra = {k: v for k, v in data.items() if k not in names}
        return obj

    def pool(self, name: str) -> PoolStatus:
        """The department called `name` (KeyError if there is none)."""
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)


def _json_name(f: "dataclasses.Field[Any]") -> str:
    return f.metadata.get("json", f.name)


@dataclass
class BatchItem(_Model):
    """Schema `BatchItem`: one answer of `POST /api/tasks/batch`, in the
    order of the request. `status` is what the task would have got alone:
    `202` stored, `200` an idempotent replay of a task that ended, else the
    error's status, with `error` (and `retry_after`, seconds, for a
    refusal)."""

    __schema__ = "BatchItem"
    _convert = {"task": Task.from_dict, "error": ErrorBody.from_dict}
    status: int
    task: Optional[Task] = None
    replayed: bool = False
    error: Optional[ErrorBody] = None
    retry_after: Optional[float] = None
    extra: Dict[str, Any] = _local(factory=dict)
    index: int = _local(0)  # its place in the request

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def id(self) -> Optional[str]:
        return self.task.id if self.task is not None else None


@dataclass
class Event:
    """One server-sent event of a task: `state` (a dict with `id`,
    `status`, `instance`, `attempts`, `error`, maybe `waiting_for`),
    `progress` (the agent's value as it sent it), or `result` (the whole
    `Task`, the last event)."""

    event: Union[TaskEventName, str]
    data: Any
    id: Optional[str] = None

    @property
    def task(self) -> Optional[Task]:
        """The finished task, for a `result` event."""
        return self.data if isinstance(self.data, Task) else None

    @property
    def status(self) -> Optional[Union[TaskStatus, str]]:
        """The state's status, for a `state` (or `result`) event."""
        if isinstance(self.data, Task):
            return self.data.status
        if self.event == TaskEventName.STATE and isinstance(self.data, dict):
            return TaskStatus.parse(self.data.get("status"))
        return None
