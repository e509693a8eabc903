"""Driver of bench/ratelimit.sh (issue 16, part 2): a backlog of N `openai`
tasks submitted at once (batches of 500) to a swarmd in front of a
sim-backend with a request quota; waits for every task to end, then
prints one JSON line: tasks succeeded, elapsed seconds from the first
submit to the last finish, the provider's own counts (/stats: served,
rate_limited) and the pool's provider pauses and retries."""
import http.client
import json
import sys
import time

host, port, sim_port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])


def call(p, method, path, body=None):
    c = http.client.HTTPConnection(host, p, timeout=60)
    c.request(method, path, json.dumps(body).encode() if body is not None else None,
              {"content-type": "application/json"})
    r = c.getresponse()
    data = json.loads(r.read() or b"null")
    c.close()
    return r.status, data


t0 = time.time()
ids = []
for start in range(0, n, 500):
    tasks = [{"type": "llm", "args": {"prompt": f"task {i}", "max_tokens": 8}}
             for i in range(start, min(n, start + 500))]
    status, body = call(port, "POST", "/api/tasks/batch", {"tasks": tasks})
    assert status == 200, (status, body)
    for it in body["items"]:
        assert it["status"] == 202, it
        ids.append(it["task"]["id"])
# Wait for all to end: poll the pool's counters, then read each outcome.
deadline = time.time() + 600
while time.time() < deadline:
    _, st = call(port, "GET", "/api/status")
    pool = next(p for p in st["pools"] if p["name"] == "llm")
    if pool["queued"] == 0 and pool["running"] == 0 and pool["scheduled"] == 0:
        break
    time.sleep(0.2)
last, ok, attempts = 0.0, 0, 0
for i in ids:
    _, t = call(port, "GET", f"/api/tasks/{i}")
    if t["status"] == "succeeded":
        ok += 1
    attempts += t["attempts"]
    fin = t.get("finished_at")
    if fin:
        sec = time.mktime(time.strptime(fin[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone + float("0." + fin[20:23])
        last = max(last, sec)
_, stats = call(sim_port, "GET", "/stats")
print(json.dumps({
    "tasks": n, "succeeded": ok, "attempts": attempts, "elapsed_s": round(last - t0, 3),
    "served": stats.get("served"), "rate_limited": stats.get("rate_limited"),
    "received": stats.get("received"),
    "provider_pauses": pool.get("provider_pauses"), "retries": pool.get("retries"),
}))
