-- wrk script of the stockguard benchmark (bench/targets.py sets the globals above this
-- line): MODE "hot" | "spread" | "flash" | "cancel" | "pay", PREFIX (unique order ids per run),
-- AUTH (the bearer key), SKU (hot and flash), SPREAD (how many spread SKUs), QUOTA
-- (requests per thread, 0 = until the duration ends), THREADS, KEYED (send an
-- Idempotency-Key), EACH_PREFIX and EACH_N (the orders to cancel or pay, each once).
local threads = {}
local counter = 0

-- Microseconds of the wall clock (os.time() has whole seconds only).
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_usec; } sg_timeval;
int gettimeofday(sg_timeval *tv, void *tz);
]]
local tv = ffi.new("sg_timeval")
local function now_us()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000000 + tonumber(tv.tv_usec)
end

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  sent = 0
  -- wrk calls request() once on its first thread before that thread starts, to count the
  -- requests a call returns (script_verify_request); that request is never sent, so it
  -- takes no order id and no place in the quota.
  unsent = tid == 0 and 1 or 0
  answered = 0
  statuses = {}
  first_us = now_us()
  last_us = first_us
  math.randomseed(tid * 7919 + 17)
end

local function headers(oid)
  local h = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. AUTH }
  if KEYED then h["Idempotency-Key"] = "k-" .. oid end
  return h
end

local function spread_lines()
  local n = math.random(1, 3)
  local seen, parts = {}, {}
  while #parts < n do
    local i = math.random(0, SPREAD - 1)
    if not seen[i] then
      seen[i] = true
      parts[#parts + 1] = string.format('{"sku":"S%05d","quantity":%d}', i, math.random(1, 3))
    end
  end
  return table.concat(parts, ",")
end

-- With a QUOTA, each thread sends exactly QUOTA requests; after that its connections
-- only ask for a path that does not exist (a 404 from the router, not counted) until the
-- last answer is in (or, should an answer be lost, a while longer) and the thread stops.
local filler = wrk.format("GET", "/bench-filler")

function request()
  sent = sent + 1
  local n = sent - unsent
  if QUOTA > 0 and n > QUOTA then
    if n > QUOTA + 2000 then wrk.thread:stop() end
    return filler
  end
  if MODE == "cancel" or MODE == "pay" then
    local i = tid + THREADS * (n - 1)
    if i >= EACH_N then i = (tid + THREADS * n) % EACH_N end
    local oid = EACH_PREFIX .. i
    if MODE == "pay" then
      local body = '{"provider":"manual","payment_id":"pay-' .. oid .. '"}'
      return wrk.format("POST", "/v1/orders/" .. oid .. "/payments", headers("p" .. oid), body)
    end
    return wrk.format("POST", "/v1/orders/" .. oid .. "/cancel", headers("c" .. oid), "{}")
  end
  local oid = PREFIX .. "-" .. tid .. "-" .. n
  local lines
  if MODE == "spread" then
    lines = spread_lines()
  else
    lines = '{"sku":"' .. SKU .. '","quantity":1}'
  end
  return wrk.format("POST", "/v1/orders", headers(oid), '{"id":"' .. oid .. '","lines":[' .. lines .. ']}')
end

function response(status, hdrs, body)
  if QUOTA > 0 and status == 404 then return end -- a filler
  answered = answered + 1
  last_us = now_us()
  statuses[status] = (statuses[status] or 0) + 1
  if QUOTA > 0 and answered >= QUOTA then wrk.thread:stop() end
end

function done(summary, latency, requests)
  local agg = {}
  local total = 0
  local first, last = nil, 0
  for _, t in ipairs(threads) do
    local f, l = t:get("first_us"), t:get("last_us")
    if first == nil or f < first then first = f end
    if l > last then last = l end
    local s = t:get("statuses")
    for code, n in pairs(s) do
      agg[code] = (agg[code] or 0) + n
      total = total + n
    end
  end
  local parts = {}
  for code, n in pairs(agg) do parts[#parts + 1] = string.format('"%d":%d', code, n) end
  io.write(string.format(
    'WRKJSON {"answering_us":%d,"requests":%d,"answered":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},"statuses":{%s}}\n',
    last - first, summary.requests, total, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, table.concat(parts, ",")))
end
