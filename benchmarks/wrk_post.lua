-- POST a rotating list of JSON bodies (one per line of BODIES_FILE) and report, as one JSON
-- line, requests/s, latency percentiles and the count of each status class.
local bodies = {}
counts = {}  -- global: done() reads each thread's copy with thread:get
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(os.getenv("BODIES_FILE")) do
    table.insert(bodies, line)
  end
  counts = {["2xx"] = 0, ["429"] = 0, ["4xx"] = 0, ["5xx"] = 0}
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  i = math.random(#bodies)
end

function request()
  i = (i % #bodies) + 1
  return wrk.format(nil, nil, nil, bodies[i])
end

function response(status, headers, body)
  if status == 429 then counts["429"] = counts["429"] + 1
  elseif status >= 500 then counts["5xx"] = counts["5xx"] + 1
  elseif status >= 400 then counts["4xx"] = counts["4xx"] + 1
  else counts["2xx"] = counts["2xx"] + 1 end
end

function done(summary, latency, requests)
  local total = {["2xx"] = 0, ["429"] = 0, ["4xx"] = 0, ["5xx"] = 0}
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    for k, v in pairs(c) do total[k] = total[k] + v end
  end
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "rps": %.2f, "p50_ms": %.2f, "p95_ms": %.2f, "p99_ms": %.2f, ' ..
    '"s2xx": %d, "s429": %d, "s4xx": %d, "s5xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    total["2xx"], total["429"], total["4xx"], total["5xx"],
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
