#!/usr/bin/env python3
"""A SwarmDirector `process` worker: JSON lines on stdin/stdout.

The protocol loop (`main`) is generic; `handle` is the agent. To plug in an
existing Python agent, replace `handle` with a call into it. Standard
library only.

Protocol (see README.md):
  worker -> {"ready": true}                                   once, at start
  engine -> {"id", "type", "args", "title", "description",
             "deadline_ms", "request_id", "task_id", "tenant"}  one per task
  worker -> {"id", "progress": {...}}                         zero or more
  worker -> {"id", "result": ...}                             then exactly one
         or {"id", "error": {"code", "message", "retryable"}}

stdout carries the protocol only: log to stderr.

This demo's `args` (all optional), for tests and experiments:
  sleep_ms    wait this long before answering
  progress    send this many progress lines first
  fail        answer with an error (a string is used as the message)
  retryable   with `fail`: mark the error retryable
  crash       exit (status 3) in the middle of the task
  hang        never answer
  bad_output  write a line that is not JSON
  stderr_kb   write this many KiB to stderr first (logging must not block)
Otherwise the result echoes the task: {"echo": args, "type", "title",
"description", "request_id", "deadline_ms", "pid"}.
"""

import json
import os
import sys
import time

# Returned by `handle` when it has already written what it wanted (the
# `bad_output` demo): main then sends no result line.
NO_ANSWER = object()


class TaskError(Exception):
    """An error result: `code` is stable, `message` for humans."""

    def __init__(self, code, message, retryable=False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


def log(msg):
    print(f"agent.py[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def send(obj):
    # One line per message, flushed at once: the engine waits for it.
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def handle(task, progress):
    """The agent: returns a JSON-able result or raises TaskError."""
    args = task.get("args") or {}
    if args.get("stderr_kb"):
        for _ in range(int(args["stderr_kb"])):
            print("x" * 1023, file=sys.stderr)
        sys.stderr.flush()
    for i in range(int(args.get("progress", 0))):
        progress({"step": i + 1, "of": int(args["progress"])})
    if args.get("sleep_ms"):
        time.sleep(args["sleep_ms"] / 1000)
    if args.get("crash"):
        log("crashing as asked")
        os._exit(3)
    if args.get("hang"):
        log("hanging as asked")
        while True:
            time.sleep(3600)
    if args.get("bad_output"):
        sys.stdout.write("this is not JSON\n")
        sys.stdout.flush()
        return NO_ANSWER
    if args.get("fail"):
        message = args["fail"] if isinstance(args["fail"], str) else "failed as asked"
        raise TaskError("agent_failed", message, bool(args.get("retryable")))
    return {
        "echo": args,
        "type": task.get("type"),
        "title": task.get("title"),
        "description": task.get("description"),
        "request_id": task.get("request_id"),
        "deadline_ms": task.get("deadline_ms"),
        "pid": os.getpid(),
    }


def main():
    send({"ready": True, "pid": os.getpid()})
    log("ready")
    while True:
        line = sys.stdin.readline()
        if not line:
            log("stdin closed, exiting")
            return
        if not line.strip():
            continue
        task = json.loads(line)
        task_id = task["id"]

        def progress(value, task_id=task_id):
            send({"id": task_id, "progress": value})

        try:
            result = handle(task, progress)
            if result is NO_ANSWER:
                continue
            send({"id": task_id, "result": result})
        except TaskError as e:
            send({"id": task_id, "error": {"code": e.code, "message": e.message, "retryable": e.retryable}})
        except Exception as e:  # a bug in the agent fails its task, not the worker
            log(f"task {task_id} raised {e!r}")
            send({"id": task_id, "error": {"code": "agent_exception", "message": repr(e), "retryable": False}})


if __name__ == "__main__":
    main()
