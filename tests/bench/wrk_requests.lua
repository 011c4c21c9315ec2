-- wrk script for the webhook benchmark: sends each pre-signed request of a file once
-- (lines of "<Stripe-Signature>\t<body>"), then stops; prints a JSON summary at the end.
-- Without a file argument it sends wrk's plain GET to the URL's path.
local requests = {}
local next_index = 1

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
  if next_index > #requests then
    wrk.thread:stop()  -- never send an event twice: a duplicate costs less than a new one
    return requests[#requests]
  end
  next_index = next_index + 1
  return requests[next_index - 1]
end

function done(summary, latency, _)
  io.write(string.format(
    '{"requests": %d, "seconds": %f, "p99_ms": %f, "non_2xx": %d, "errors": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(99) / 1000,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
