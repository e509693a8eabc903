#!/usr/bin/env python3
# The evidence behind the balancing section of BENCHMARKS.md: a replica of
# swarm_sched::balance p2c (`cost` in balancer.rs) run against the
# sim-backend model of bench/balancing.sh, today and with the proposed cost.
# It reproduces the measured share to the slow instance (1.8-1.9%) and
# p2c p99 (271-276 ms). `python3 bench/balancing-model.py`
# Peak EWMA (tau 10 s, decaying toward 0); instances 3 x 50+U(0,10) ms, one 250+U(0,50) ms, knee 8.
import heapq, math, random
def run(rate, slots_div, secs=20.0, seed=1, tau=10.0):
    rnd = random.Random(seed)
    base = [(50, 10)] * 3 + [(250, 50)]
    est = [0.100] * 4; stamp = [0.0] * 4; out = [0] * 4; inflight = [0] * 4
    picks = [0] * 4; lat = []
    ev = []  # (time, instance, rtt)
    def get(i, now): return est[i] * math.exp(-(now - stamp[i]) / tau)
    def cost(i, now): return get(i, now) * (1 + out[i] / slots_div)
    t = 0.0; n = int(secs * rate)
    for k in range(n):
        t = k / rate
        while ev and ev[0][0] <= t:
            tt, i, rtt = heapq.heappop(ev)
            d = math.exp(-(tt - stamp[i]) / tau); cur = est[i] * d
            est[i] = rtt if rtt > cur else cur + rtt * (1 - d); stamp[i] = tt
            out[i] -= 1; inflight[i] -= 1
        a = rnd.randrange(4); b = rnd.randrange(3); b += b >= a
        i = b if cost(b, t) < cost(a, t) else a
        picks[i] += 1; out[i] += 1; inflight[i] += 1
        b0, j = base[i]
        s = (b0 + rnd.uniform(0, j)) / 1000 * max(1, inflight[i] / 8) + 0.001
        heapq.heappush(ev, (t + s, i, s)); lat.append(s)
    lat.sort()
    return picks[3] / n, lat[int(0.99 * len(lat))] * 1000
for rate in (90, 300):
    for div, name in ((1, "today: est*(o+1)"), (8, "proposed: est*(1+o/8)")):
        r = [run(rate, div, seed=s) for s in range(5)]
        print(f"{rate}/s {name:24s} slow share {sum(x[0] for x in r)/5*100:4.1f}%  p99 {sum(x[1] for x in r)/5:5.0f} ms")
