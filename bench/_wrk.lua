-- wrk script of bench/api.py (one wrk thread: one Lua state, so the counters are exact).
-- BENCH_DATA: a file of lines "METHOD\tPATH\tTOKEN\tBODY"; "{n}" in PATH or BODY becomes a
-- per-request counter (unique order ids). The lines are taken in turn; with BENCH_ONCE=1 each
-- line is sent once and the thread stops when they run out (holds captured or voided once).
-- BENCH_IDS_OUT: write every authorizationId answered to this file (capture/void targets).
-- done() prints one line "BENCHJSON {...}" with the counts, the latency percentiles (us) and
-- the status codes seen.
local lines = {}
local run = os.getenv("BENCH_RUN") or "r"
for l in io.lines(os.getenv("BENCH_DATA")) do
  local m, p, t, b = l:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
  lines[#lines + 1] = {m, p, t, b}
end
local once = os.getenv("BENCH_ONCE") == "1"
local ids_out = os.getenv("BENCH_IDS_OUT")
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  n = 0
  codes = {}
  ids = {}
end

function request()
  n = n + 1
  if once and n > #lines then
    wrk.thread:stop()
  end
  local l = lines[(n - 1) % #lines + 1]
  local tag = run .. "-" .. n
  local path = l[2]:gsub("{n}", tag)
  local headers = {["Authorization"] = "Bearer " .. l[3]}
  local body = nil
  if l[4] ~= "" then
    body = l[4]:gsub("{n}", tag)
    headers["Content-Type"] = "application/json"
  end
  return wrk.format(l[1], path, headers, body)
end

function response(status, headers, body)
  codes[status] = (codes[status] or 0) + 1
  if ids_out and status == 201 then
    local id = body:match('"authorizationId"%s*:%s*"([^"]+)"')
    if id then ids[#ids + 1] = id end
  end
end

function done(summary, latency, requests)
  local all = {}
  local out = nil
  if ids_out then out = io.open(ids_out, "w") end
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("codes")) do all[tostring(k)] = (all[tostring(k)] or 0) + v end
    if out then
      for _, id in ipairs(t:get("ids")) do out:write(id, "\n") end
    end
  end
  if out then out:close() end
  local parts = {}
  for k, v in pairs(all) do parts[#parts + 1] = string.format('"%s": %d', k, v) end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "mean_us": %.1f, "errors": {"connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d}, "codes": {%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.status,
    e.timeout, table.concat(parts, ", ")))
end
