-- wrk script of bench/compare.py: POST one small chat completion.
-- KP_KEY is the bearer; KP_HDRS extra headers as "k: v|k: v". Prints one WRKJSON line at the end.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("KP_KEY") or "sk-none")
for kv in string.gmatch(os.getenv("KP_HDRS") or "", "[^|]+") do
  local k, v = string.match(kv, "^%s*(.-)%s*:%s*(.-)%s*$")
  if k then wrk.headers[k] = v end
end
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":32}'

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"p50": %d, "p99": %d, "requests": %d, "duration": %d, "errors": %d, ' ..
    '"non2xx": %d}\n', latency:percentile(50), latency:percentile(99), summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status))
end
