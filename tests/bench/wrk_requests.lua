-- wrk script for the webhook benchmark: sends each pre-signed request of a file once
-- (lines of "<Stripe-Signature>\t<body>"), then stops; prints a JSON summary at the end,
-- with "sent": how many requests of the file went out, and "repeats": how many answers
-- said the event was a duplicate (the server had it already). Without a file argument it sends
-- wrk's plain GET to the URL's path.
local threads = {}
local requests = {}
sent = 0  -- globals: read by done() through thread:get
repeats = 0

function setup(thread)
  threads[#threads + 1] = thread
end

function init(args)
  if args[1] == nil then
    return
  end
  for line in io.lines(args[1]) do
    local signature, body = line:match("^([^\t]*)\t(.*)$")
    requests[#requests + 1] = wrk.format("POST", nil,
      {["Stripe-Signature"] = signature, ["Content-Type"] = "application/json"}, body)
  end
end

function request()
  if #requests == 0 then
    return wrk.request()
  end
  if sent == #requests then
    -- Never send an event twice (a repeat costs less than a new one): the last requests
    -- in flight go to the health endpoint, and the thread stops.
    wrk.thread:stop()
    return wrk.format("GET", "/healthz")
  end
  sent = sent + 1
  return requests[sent]
end

function response(_, _, body)
  if body:find('"outcome":"duplicate"', 1, true) then
    repeats = repeats + 1
  end
end

function done(summary, latency, _)
  local total_sent, total_repeats = 0, 0
  for _, thread in ipairs(threads) do
    total_sent = total_sent + thread:get("sent")
    total_repeats = total_repeats + thread:get("repeats")
  end
  io.write(string.format(
    '{"requests": %d, "sent": %d, "repeats": %d, "seconds": %f, "p99_ms": %f, "non_2xx": %d, "errors": %d}\n',
    summary.requests, total_sent, total_repeats, summary.duration / 1e6, latency:percentile(99) / 1000,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
