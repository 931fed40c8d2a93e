-- wrk script: replay a request mix file, one request per line, in order, round and round.
--   GET <path>
--   POST <path> <hex-encoded body>
-- Usage: [BENCH_HEADERS=FILE] wrk -s bench/lua/mix.lua URL -- MIXFILE
-- FILE: "Name: value" lines every request carries besides wrk's Host (bench.run --cdn-headers).
-- done() prints machine-readable lines starting "@@".

local requests = {}
local count = 0
local position = 0

-- setup() runs in the main Lua state: give each thread a distinct id so they start at different offsets.
local next_id = 0
function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
end

-- wrk probes the server with a connection it closes at once before the test; `openssl ocsp` then spins
-- forever on that empty connection (openssl/openssl#23934). Resolve without the probe.
function wrk.resolve(host, service)
  wrk.addrs = wrk.lookup(host, service)
end

local BYTE = {}
for i = 0, 255 do
  BYTE[string.format("%02x", i)] = string.char(i)
  BYTE[string.format("%02X", i)] = string.char(i)
end

local function unhex(text)
  return (text:gsub("..", BYTE))
end

-- The header lines of the file named by BENCH_HEADERS, if any, added to `headers`.
local function add_extra_headers(headers)
  local path = os.getenv("BENCH_HEADERS")
  if path == nil or path == "" then return end
  local file = assert(io.open(path, "r"), "cannot open headers file " .. path)
  for line in file:lines() do
    local name, value = line:match("^([^:]+): (.*)$")
    assert(name ~= nil, "not a header line in " .. path .. ": " .. line)
    headers[name] = value
  end
  file:close()
end

function init(args)
  local path = args[1]
  local file = assert(io.open(path, "r"), "cannot open mix file " .. tostring(path))
  local get_headers = {}
  local post_headers = { ["Content-Type"] = "application/ocsp-request" }
  add_extra_headers(get_headers)
  add_extra_headers(post_headers)
  local formatted = {} -- a line seen before reuses its request (mixes repeat requests)
  for line in file:lines() do
    local request = formatted[line]
    if request == nil then
      local method, target, body = line:match("^(%u+) (%S+) ?(%x*)$")
      if method == "POST" then
        request = wrk.format("POST", target, post_headers, unhex(body))
      elseif method == "GET" then
        request = wrk.format("GET", target, get_headers)
      end
      formatted[line] = request
    end
    if request ~= nil then
      requests[#requests + 1] = request
    end
  end
  file:close()
  count = #requests
  assert(count > 0, "empty mix file " .. path)
  position = (thread_id or 0) * 7919 % count
end

function request()
  position = position + 1
  if position > count then position = 1 end
  return requests[position]
end

function done(summary, latency, requests_)
  local e = summary.errors
  io.write(string.format("@@ summary requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout))
  io.write(string.format("@@ latency_us min=%d mean=%.1f stdev=%.1f max=%d", latency.min, latency.mean, latency.stdev, latency.max))
  for _, p in ipairs({ 50, 75, 90, 99, 99.9 }) do
    io.write(string.format(" p%s=%d", tostring(p), latency:percentile(p)))
  end
  io.write("\n")
end
