"""Batch-submit load generator for bench/batch.sh (issue 17, part 3).

Closed loop: CONNS keep-alive connections each POST a batch of SIZE echo
tasks to /api/tasks/batch (SIZE 1 posts /api/tasks, the single submit),
back to back, for SECONDS after a one-second warm-up. Counts the tasks
stored (items answered 202) and refused, and prints one JSON line.
"""
import http.client
import json
import sys
import threading
import time

host, port, size, conns, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
if size == 1:
    path, body = "/api/tasks", json.dumps({"type": "echo", "args": {"n": 1}}).encode()
else:
    path = "/api/tasks/batch"
    body = json.dumps({"tasks": [{"type": "echo", "args": {"n": i}} for i in range(size)]}).encode()
headers = {"content-type": "application/json"}
stored = [0] * conns
refused = [0] * conns
requests = [0] * conns
lat = [[] for _ in range(conns)]
t0 = time.monotonic()
start, end = t0 + 1.0, t0 + 1.0 + seconds


def worker(k):
    c = http.client.HTTPConnection(host, port)
    while True:
        now = time.monotonic()
        if now >= end:
            return
        c.request("POST", path, body, headers)
        r = c.getresponse()
        data = r.read()
        done = time.monotonic()
        if now < start:
            continue
        requests[k] += 1
        lat[k].append(done - now)
        if size == 1:
            if r.status in (200, 202):
                stored[k] += 1
            else:
                refused[k] += 1
        else:
            for item in json.loads(data)["items"]:
                if item["status"] in (200, 202):
                    stored[k] += 1
                else:
                    refused[k] += 1


threads = [threading.Thread(target=worker, args=(k,)) for k in range(conns)]
for t in threads:
    t.start()
for t in threads:
    t.join()
all_lat = sorted(x for l in lat for x in l)
pct = lambda p: all_lat[min(len(all_lat) - 1, int(p * len(all_lat)))] * 1000 if all_lat else 0
print(json.dumps({
    "size": size, "conns": conns, "seconds": seconds,
    "requests_per_s": sum(requests) / seconds,
    "stored_per_s": sum(stored) / seconds,
    "refused": sum(refused),
    "p50_ms": pct(0.5), "p99_ms": pct(0.99),
}))
