-- wrk script for bench/flood.sh: POSTs one echo task per request and
-- counts answers by status across all threads.
wrk.method = "POST"
wrk.body = '{"type":"echo","args":{"n":1}}'
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do
      total[k] = (total[k] or 0) + v
    end
  end
  for k, v in pairs(total) do
    io.write(string.format("status %d %d\n", k, v))
  end
  io.write(string.format("latency %.2f %.2f %.2f\n",
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000))
  io.write(string.format("errors %d %d %d\n",
    summary.errors.connect, summary.errors.read + summary.errors.write, summary.errors.timeout))
end
