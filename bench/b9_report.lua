-- wrk script for B9 (bench/b9.py): at the end, one line of JSON with the
-- counts and the latency percentiles (microseconds), after the marker B9JSON.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'B9JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"p50_us": %.0f, "p90_us": %.0f, "p99_us": %.0f, "max_us": %.0f, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
