"""Driver of bench/converge.sh (issue 16, part 1, the real run): a closed
loop of CLIENTS submitters against one swarmd department (`http` agent in
front of a sim-backend whose knee is KNEE in flight at BASE ms), each
submitting a task with `wait_ms` and, once it ends, the next, for SECONDS.
A sampler reads the pool's limit every 20 ms. Prints one JSON line: when
the limit first entered, and then stayed in, ±20% of the knee (in base
round trips from the first submission), the p99 of the provider's latency
for calls started after round trip 3 (run_ms), goodput, and the limit's
path (samples at round trips 0-10)."""
import http.client
import json
import sys
import threading
import time

host, port, clients, seconds, knee, base_ms = (
    sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]),
    int(sys.argv[5]), float(sys.argv[6]))
stop = time.time() + seconds
t0 = time.time()
runs = []  # (started after t0 s, run_ms)
lock = threading.Lock()
errors = []


def conn():
    return http.client.HTTPConnection(host, port, timeout=120)


def client():
    c = conn()
    body = json.dumps({"type": "provider", "args": {"prompt": "x"}, "timeout_ms": 60000,
                       "wait_ms": 60000}).encode()
    while time.time() < stop:
        try:
            c.request("POST", "/api/tasks", body, {"content-type": "application/json"})
            r = c.getresponse()
            t = json.loads(r.read())
        except Exception as e:  # a dropped keep-alive: reconnect
            errors.append(str(e))
            c = conn()
            continue
        if r.status not in (200, 201, 202) or t.get("status") != "succeeded":
            errors.append(f"{r.status} {t.get('status')} {t.get('error') or t.get('error_code')}")
            continue
        run = t["timings"]["run_ms"]
        with lock:
            runs.append((time.time() - t0 - run / 1000.0, run))


limits = []  # (s since t0, limit)


def sampler():
    c = conn()
    while time.time() < stop:
        c.request("GET", "/api/status")
        st = json.loads(c.getresponse().read())
        p = next(p for p in st["pools"] if p["name"] == "provider")
        limits.append((time.time() - t0, p["limit"]["limit"]))
        time.sleep(0.02)


threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
s = threading.Thread(target=sampler, daemon=True)
s.start()
for t in threads:
    t.start()
for t in threads:
    t.join()
s.join()
rtt = base_ms / 1000.0
lo, hi = 0.8 * knee, 1.2 * knee
first = next((t for t, l in limits if lo <= l <= hi), None)
# Stays: the last time it was outside the band, then in it for good.
outside = [t for t, l in limits if not (lo <= l <= hi)]
settled = None
if limits and lo <= limits[-1][1] <= hi:
    settled = max(outside) if outside else 0.0
after = sorted(r for t, r in runs if t >= 3 * rtt)
p99 = after[int(0.99 * (len(after) - 1))] if after else None
path = []
for k in range(0, 11):
    near = [l for t, l in limits if t <= k * rtt]
    path.append(near[-1] if near else None)
print(json.dumps({
    "tasks": len(runs), "errors": len(errors), "error_sample": errors[:3],
    "goodput_per_s": round(len(runs) / seconds, 1),
    "rounds_to_band": None if first is None else round(first / rtt, 1),
    "rounds_settled": None if settled is None else round(settled / rtt, 1),
    "p99_run_ms": p99, "limit_min": min(l for _, l in limits), "limit_max": max(l for _, l in limits),
    "limit_end": limits[-1][1], "path": path,
}))
