"""The worker helper: through swarmd (a `process` department running an
`@agent` function), and as a process spoken to over its pipes directly."""

import json
import subprocess
import sys
import textwrap

from conftest import PKG_ROOT, REPO
from swarmdirector import TaskStatus


def test_an_agent_function_runs_as_a_department(client):
    t = client.submit("fn", {"text": "one two three four", "max_words": 2}, wait_ms=5000, request_id="rq-fn")
    assert t.status == TaskStatus.SUCCEEDED, t.error
    assert t.result == {"summary": "one two", "request_id": "rq-fn"}  # the stray print did not break it
    events = list(client.events(client.submit("fn", {"text": "a b c", "pause_s": 0.5}).id, timeout=10))
    assert [e.data for e in events if e.event == "progress"] == [{"words": 3}]


def test_agent_errors_become_task_errors(client):
    cases = [
        ({"max_words": 2}, "invalid_args"),  # text missing: the args do not fit the function
        ({"text": "x", "colour": "red"}, "invalid_args"),
        ({"text": " "}, "empty_text"),  # TaskError
        ({"text": 5}, "agent_exception"),  # a bug in the agent
        ({"text": "x", "max_words": -1}, "bad_result"),  # NaN is not JSON
    ]
    for args, code in cases:
        t = client.submit("fn", args, wait_ms=5000)
        assert (t.status, t.error.code) == (TaskStatus.FAILED, code), (args, t.error)
    # One worker served all of them: errors do not cost the process.
    assert client.status().pool("fn").workers["restarts"] == 0


def talk(script, lines, timeout=10):
    """Runs a worker script with these stdin lines; its stdout lines, parsed."""
    p = subprocess.run(
        [sys.executable, "-c", script],
        input="".join(json.dumps(x) + "\n" if not isinstance(x, str) else x for x in lines),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PYTHONPATH": str(PKG_ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()], p.stderr


def test_the_protocol_over_pipes():
    script = textwrap.dedent(
        """
        import asyncio
        from swarmdirector.worker import run_worker

        async def handle(task):
            await asyncio.sleep(0.01)
            print("noise")
            task.progress(task.time_left() is not None)
            return {"type": task.type, "args": task.args, "tenant": task.tenant}

        run_worker(handle, ready={"name": "t"})
        """
    )
    out, err = talk(
        script,
        [
            {"id": "1", "type": "a", "args": {"x": 1}, "deadline_ms": 1000, "tenant": "acme"},
            "not json\n",
            "\n",
            {"id": "2", "type": "b", "args": None},
        ],
    )
    assert out[0]["ready"] is True and out[0]["name"] == "t" and isinstance(out[0]["pid"], int)
    assert out[1:] == [
        {"id": "1", "progress": True},
        {"id": "1", "result": {"type": "a", "args": {"x": 1}, "tenant": "acme"}},
        {"id": "2", "progress": False},
        {"id": "2", "result": {"type": "b", "args": {}, "tenant": None}},
    ]
    assert "noise" in err and "not a task line" in err


def test_the_example_agent_answers_as_its_readme_shows():
    agent = REPO / "examples" / "python-agent" / "agent.py"
    p = subprocess.run(
        [sys.executable, str(agent)],
        input='{"id":"1","type":"demo","args":{"progress":2}}\n',
        capture_output=True,
        text=True,
        timeout=10,
    )
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    assert lines[0]["ready"] is True
    assert lines[1:3] == [{"id": "1", "progress": {"step": 1, "of": 2}}, {"id": "1", "progress": {"step": 2, "of": 2}}]
    assert lines[3]["result"]["echo"] == {"progress": 2} and lines[3]["result"]["type"] == "demo"


def test_the_example_agent_config_runs_its_example_request(client):
    # The same request as examples/python-agent/README.md, on its `py` department.
    t = client.submit("py", {"progress": 2}, wait_ms=5000)
    assert t.status == TaskStatus.SUCCEEDED
    assert t.result["type"] == "py" and t.result["echo"] == {"progress": 2}


def test_the_worker_helper_needs_no_httpx():
    # swarmd runs workers with a cleared environment, maybe where only the
    # standard library is: importing the helper must not pull in the client.
    code = "import sys, swarmdirector.worker; assert 'httpx' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(PKG_ROOT)}, timeout=10)
