"""Driver of bench/webhooks.sh (issue 17, part 4): a receiver (threaded
http.server answering 204) and N echo tasks with a callback_url to it,
submitted in batches of 500. Prints one JSON line: deliveries received,
duplicates, and the lag from each task's finish (its finished_at) to the
receiver's arrival, p50/p99/max, and deliveries per second."""
import http.client
import http.server
import json
import sys
import threading
import time
from datetime import datetime

port, recv_port, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
arrivals, lock = {}, threading.Lock()
dups = [0]


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        now = time.time()
        msg = json.loads(body)
        with lock:
            key = self.headers["webhook-id"]
            if key in arrivals:
                dups[0] += 1
            else:
                arrivals[key] = (now, msg["data"]["finished_at"])
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


srv = http.server.ThreadingHTTPServer(("127.0.0.1", recv_port), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{recv_port}/hook"
t0 = time.time()
for start in range(0, n, 500):
    tasks = [{"type": "echo", "args": {"i": i}, "callback_url": url} for i in range(start, min(n, start + 500))]
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", "/api/tasks/batch", json.dumps({"tasks": tasks}), {"content-type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, r.read()
    r.read()
    c.close()
deadline = time.time() + 300
while time.time() < deadline and len(arrivals) < n:
    time.sleep(0.1)
srv.shutdown()
lags = sorted(a - datetime.fromisoformat(f.replace("Z", "+00:00")).timestamp() for a, f in arrivals.values())
first = min(a for a, _ in arrivals.values())
last = max(a for a, _ in arrivals.values())
q = lambda p: lags[min(len(lags) - 1, int(p * len(lags)))] * 1000
print(json.dumps({
    "tasks": n, "received": len(arrivals), "duplicates": dups[0],
    "lag_p50_ms": round(q(0.5), 1), "lag_p99_ms": round(q(0.99), 1), "lag_max_ms": round(lags[-1] * 1000, 1),
    "deliveries_per_s": round(len(arrivals) / max(1e-9, last - first), 1), "total_s": round(last - t0, 2),
}))
