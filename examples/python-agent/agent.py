#!/usr/bin/env python3
"""A SwarmDirector `process` worker built on `swarmdirector.worker`.

`handle` is the agent; `run_worker` speaks the protocol (JSON lines on
stdin/stdout, see README.md). To plug in an existing Python agent, call into
it from `handle`, or decorate a function of the task's args with
`@agent` (see README.md). Log to stderr: stdout carries the protocol.

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

import os
import sys
import time

# In a checkout, use the package beside this example (clients/python), so
# the example runs without `pip install ./clients/python`; elsewhere, the
# installed one.
_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python", "src")
if os.path.isdir(os.path.join(_SRC, "swarmdirector")):
    sys.path.insert(0, _SRC)

from swarmdirector.worker import TaskError, run_worker  # noqa: E402


def log(msg):
    print(f"agent.py[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def handle(task):
    """The agent: returns a JSON-able result or raises TaskError."""
    args = task.args
    if args.get("stderr_kb"):
        for _ in range(int(args["stderr_kb"])):
            print("x" * 1023, file=sys.stderr)
        sys.stderr.flush()
    for i in range(int(args.get("progress", 0))):
        task.progress({"step": i + 1, "of": int(args["progress"])})
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
        # Past the helper, straight onto the protocol channel (which the
        # helper points `sys.stdout` away from while a task runs).
        sys.__stdout__.write("this is not JSON\n")
        sys.__stdout__.flush()
    if args.get("fail"):
        message = args["fail"] if isinstance(args["fail"], str) else "failed as asked"
        raise TaskError("agent_failed", message, bool(args.get("retryable")))
    return {
        "echo": args,
        "type": task.type,
        "title": task.title,
        "description": task.description,
        "request_id": task.request_id,
        "deadline_ms": task.deadline_ms,
        "pid": os.getpid(),
    }


if __name__ == "__main__":
    run_worker(handle)
