"""The models stay in step with the OpenAPI document of a real swarmd."""

import dataclasses
import json
import urllib.request

import pytest

from swarmdirector import models
from swarmdirector.errors import parse_retry_after
from swarmdirector._sse import SseParser

MODELS = [
    models.Task,
    models.TaskError,
    models.Timings,
    models.TaskPage,
    models.TaskSpec,
    models.ErrorBody,
    models.Status,
    models.PoolStatus,
    models.BatchItem,
    models.RetryPolicy,
    models.Attempt,
]
ENUMS = [models.TaskStatus, models.Priority, models.Blocker, models.TaskEventName]


@pytest.fixture(scope="module")
def schemas(server):
    with urllib.request.urlopen(server.url + "/api/openapi.json") as r:
        return json.load(r)["components"]["schemas"]


def props(schemas, name):
    """The properties and required names of a schema (`allOf` merged)."""
    s = schemas[name]
    parts = s.get("allOf", [s])
    out, req = {}, set()
    for p in parts:
        if "$ref" in p:
            sub, subreq = props(schemas, p["$ref"].rsplit("/", 1)[1])
            out.update(sub)
            req |= subreq
        else:
            out.update(p.get("properties", {}))
            req |= set(p.get("required", []))
    return out, req


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_model_fields_match_the_schema(schemas, cls):
    if cls.__schema__ not in schemas and cls is models.BatchItem:
        pytest.skip("this swarmd has no POST /api/tasks/batch yet (no BatchItem schema)")
    properties, required = props(schemas, cls.__schema__)
    ours = set(cls.schema_fields())
    theirs = set(properties)
    assert not theirs - ours, f"{cls.__name__} lacks fields of schema {cls.__schema__}: {sorted(theirs - ours)}"
    assert not ours - theirs, f"{cls.__name__} has fields schema {cls.__schema__} does not: {sorted(ours - theirs)}"
    # A field the server may leave out must parse when absent.
    for f in dataclasses.fields(cls):
        name = f.metadata.get("json", f.name)
        if name in theirs and name not in required:
            assert (
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            ), f"{cls.__name__}.{f.name} is optional in the schema but has no default"


@pytest.mark.parametrize("enum", ENUMS, ids=lambda c: c.__name__)
def test_enums_match_the_schema(schemas, enum):
    assert sorted(m.value for m in enum) == sorted(schemas[enum.__name__]["enum"])


def test_a_task_round_trips_and_keeps_what_it_does_not_know():
    raw = {
        "id": "019abcde-0123-7def-8123-456789abcdef",
        "type": "echo",
        "status": "scheduled",  # a state this client does not know yet
        "priority": "normal",
        "tenant": "default",
        "department": "echo",
        "agent": "echo",
        "instance": None,
        "error": {"code": "x", "message": "y", "stage": "run"},
        "timeout_ms": 1,
        "deadline_at": "2026-12-03T12:45:22.8Z",
        "created_at": "2026-12-03T12:45:22.809Z",
        "started_at": None,
        "finished_at": None,
        "attempts": 0,
        "nodes": [],
        "timings": {"admission_ms": 0.3},
        "run_at": "2026-12-03T13:00:00Z",
    }
    t = models.Task.from_dict(raw)
    assert t.status == "scheduled" and not t.done
    assert t.error.code == "x" and t.timings.admission_ms == 0.3
    assert t.created_at.microsecond == 809000 and t.created_at.utcoffset().total_seconds() == 0
    assert t.extra == {"run_at": "2026-12-03T13:00:00Z"}
    back = t.to_dict()
    assert back["status"] == "scheduled" and back["run_at"] == raw["run_at"]
    assert back["created_at"] == "2026-12-03T12:45:22.809000Z"


def test_retry_after_reads_seconds_and_http_dates():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = 1_000_000_000.0  # 2001-09-09T01:46:40Z
    assert parse_retry_after("Sun, 09 Sep 2001 01:46:50 GMT", now=now) == 10.0


def test_sse_parser_joins_data_lines_and_skips_comments():
    p = SseParser()
    lines = [": keep-alive", "event: progress", "data: {\"a\":", "data: 1}", "id: 7", ""]
    out = [e for e in map(p.feed, lines) if e]
    assert out == [("progress", "{\"a\":\n1}", "7")]
    assert p.feed("") is None  # a stray blank line is no event
