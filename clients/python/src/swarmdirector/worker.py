"""Run a Python function as a swarmd `agent = "process"` worker.

```python
from swarmdirector.worker import run_worker, TaskError

def summarise(task):                      # task: WorkerTask
    if "text" not in task.args:
        raise TaskError("missing_text", "args.text is required")
    task.progress({"stage": "summarising"})
    return {"summary": task.args["text"][:100]}

if __name__ == "__main__":
    run_worker(summarise)
```

or, for a function that takes the task's `args` as keyword arguments:

```python
from swarmdirector.worker import agent

@agent
def summarise(text: str, max_words: int = 50) -> dict:
    return {"summary": " ".join(text.split()[:max_words])}

if __name__ == "__main__":
    summarise.run()
```

The protocol (swarmd's `crates/swarm-agents/src/process.rs`): JSON lines on
stdin/stdout. The worker prints `{"ready": true}` once; then per task it
reads `{"id", "type", "args", "title", "description", "deadline_ms",
"request_id", "task_id", "tenant"}`, may print `{"id", "progress": …}` lines,
and answers with exactly one `{"id", "result": …}` or `{"id", "error":
{"code", "message", "retryable"}}`. End of stdin means stop.

stdout carries the protocol only, so while a handler runs `sys.stdout` is
pointed at stderr: a stray `print()` in the agent's code lands in swarmd's
log instead of failing the task. Standard library only.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
import time
import traceback
from typing import IO, Any, Callable, Dict, Optional

__all__ = ["TaskError", "WorkerTask", "Agent", "agent", "run_worker"]


class TaskError(Exception):
    """Raise it to fail the task with a stable `code` (the task's
    `error.code`) and a `message`; `retryable` says whether trying again may
    succeed."""

    def __init__(self, code: str, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


class WorkerTask:
    """One task as the worker gets it."""

    def __init__(self, line: Dict[str, Any], send: Callable[[Dict[str, Any]], None]) -> None:
        self.raw = line
        self.id: str = line["id"]  # this exchange (echoed in every answer line)
        self.task_id: Optional[str] = line.get("task_id")
        self.type: Optional[str] = line.get("type")
        self.args: Dict[str, Any] = line.get("args") or {}
        self.title: Optional[str] = line.get("title")
        self.description: Optional[str] = line.get("description")
        self.request_id: Optional[str] = line.get("request_id")
        self.tenant: Optional[str] = line.get("tenant")
        self.deadline_ms: Optional[int] = line.get("deadline_ms")
        # Relative on the wire (engine and worker clocks need not agree).
        self._deadline = None if self.deadline_ms is None else time.monotonic() + self.deadline_ms / 1000
        self._send = send

    def progress(self, value: Any) -> None:
        """Reports a step; clients see it as an SSE `progress` event."""
        self._send({"id": self.id, "progress": value})

    def time_left(self) -> Optional[float]:
        """Seconds until swarmd abandons the task (and kills this worker)."""
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def __repr__(self) -> str:
        return f"WorkerTask(id={self.id!r}, type={self.type!r}, args={self.args!r})"


Handler = Callable[[WorkerTask], Any]


class Agent:
    """A function of the task's `args` (as keyword arguments) made a
    handler; made by `@agent`. Calling it still calls the function. A
    parameter named `task` gets the `WorkerTask` itself."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.signature = inspect.signature(fn)
        self.wants_task = "task" in self.signature.parameters

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def handle(self, task: WorkerTask) -> Any:
        kwargs = dict(task.args)
        if self.wants_task:
            kwargs["task"] = task
        try:
            self.signature.bind(**kwargs)
        except TypeError as e:
            # Bad input is the caller's: not retryable.
            raise TaskError("invalid_args", f"args do not fit {self.fn.__name__}{self.signature}: {e}") from None
        return self.fn(**kwargs)

    def run(self, **options: Any) -> None:
        """`run_worker(self)`."""
        run_worker(self, **options)


def agent(fn: Callable[..., Any]) -> Agent:
    """Decorator: `@agent def f(text, n=1): …` then `f.run()` serves it."""
    return Agent(fn)


def _log(msg: str) -> None:
    print(f"swarmdirector.worker[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def run_worker(
    handler: Any,
    *,
    ready: Optional[Dict[str, Any]] = None,
    stdin: Optional[IO[str]] = None,
    stdout: Optional[IO[str]] = None,
    protect_stdout: bool = True,
) -> None:
    """Serves tasks until stdin ends: `handler(task)` for each, its return
    value the result (any JSON-able value), a `TaskError` an error answer,
    any other exception the error `agent_exception` (with its traceback on
    stderr; the worker goes on). `handler` may be an `Agent` (from `@agent`)
    or a coroutine function. Do slow set-up (loading a model) before calling
    this: swarmd sends no task until the ready line. `ready` adds keys to
    that line."""
    inp = stdin or sys.stdin
    out = stdout or sys.stdout
    call = handler.handle if isinstance(handler, Agent) else handler
    # One event loop for all tasks of an async handler (made on first use),
    # so clients it keeps (HTTP sessions) live across tasks.
    loops: list = []

    def send(obj: Dict[str, Any]) -> None:
        # Serialised whole before writing, so a bad value never leaves half
        # a line; NaN is not JSON, so it is refused rather than sent.
        line = json.dumps(obj, separators=(",", ":"), allow_nan=False)
        out.write(line + "\n")
        out.flush()

    send({"ready": True, "pid": os.getpid(), **(ready or {})})
    _log("ready")
    try:
        while True:
            line = inp.readline()
            if not line:
                _log("stdin closed, exiting")
                return
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
                task = WorkerTask(msg, send)
            except (ValueError, KeyError, TypeError) as e:
                _log(f"not a task line ({e}): {line[:200]!r}")
                continue
            _serve(task, call, loops, send, protect_stdout)
    except BrokenPipeError:
        _log("stdout closed, exiting")
    finally:
        for loop in loops:
            loop.close()


def _serve(
    task: WorkerTask,
    call: Callable[[WorkerTask], Any],
    loops: list,
    send: Callable[[Dict[str, Any]], None],
    protect_stdout: bool,
) -> None:
    saved = sys.stdout
    if protect_stdout:
        sys.stdout = sys.stderr
    try:
        result = call(task)
        if inspect.isawaitable(result):
            if not loops:
                import asyncio  # only async handlers pay for it

                loops.append(asyncio.new_event_loop())
            result = loops[0].run_until_complete(result)
        answer: Dict[str, Any] = {"id": task.id, "result": result}
    except TaskError as e:
        answer = {"id": task.id, "error": {"code": e.code, "message": e.message, "retryable": e.retryable}}
    except Exception as e:  # a bug in the agent fails its task, not the worker
        _log(f"task {task.id} raised:\n{traceback.format_exc()}")
        answer = {"id": task.id, "error": {"code": "agent_exception", "message": repr(e), "retryable": False}}
    finally:
        sys.stdout = saved
    try:
        send(answer)
    except (TypeError, ValueError) as e:
        send(
            {
                "id": task.id,
                "error": {"code": "bad_result", "message": f"the result is not JSON: {e}", "retryable": False},
            }
        )
