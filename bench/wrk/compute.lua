-- wrk script of the bench harness (bench/http.py drives it; see bench/README.md).
--
-- Every request is the same POST of a JSON body read from a file, so wrk
-- builds it once. Options come from the environment, because wrk passes
-- nothing else to every thread's Lua state:
--
--   BENCH_WRK_BODY   path of the request body (required)
--   BENCH_WRK_RATE   requests per second of each thread, on a fixed schedule
--                    (Debian's wrk has no -R); the harness gives paced runs
--                    one connection per thread
--   BENCH_WRK_LIMIT  responses after which the run stops (give such runs one
--                    thread: the first thread to get there ends the run)
--
-- done() prints one line "BENCH_WRK {json}" that the harness parses.

local body_path = assert(os.getenv("BENCH_WRK_BODY"), "BENCH_WRK_BODY is not set")
local file = assert(io.open(body_path, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"

local rate = tonumber(os.getenv("BENCH_WRK_RATE") or "")
if rate then
  -- wrk calls delay() before each request and waits that many whole
  -- milliseconds. Waiting until the next slot of a fixed schedule, rather
  -- than a fixed pause after each response, keeps the average rate exact
  -- whatever the latency; a slot missed is sent at once. Lua has no
  -- monotonic clock: LuaJIT's ffi reaches clock_gettime.
  local ffi = require("ffi")
  ffi.cdef([[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clock, bench_timespec *now);
  ]])
  local CLOCK_MONOTONIC = 1
  local now = ffi.new("bench_timespec")
  local period = 1000 / rate
  local due = nil

  local function clock_ms()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, now)
    return tonumber(now.tv_sec) * 1000 + tonumber(now.tv_nsec) / 1e6
  end

  -- One Lua state per thread: the connections of a thread share the
  -- schedule, each delay() taking the next slot.
  function delay()
    local t = clock_ms()
    if due == nil then
      due = t
    end
    local wait = due - t
    due = due + period
    if wait <= 0 then
      return 0
    end
    -- wrk truncates to whole milliseconds; rounding keeps the sends centred
    -- on the schedule instead of always early.
    return math.floor(wait + 0.5)
  end
end

local limit = tonumber(os.getenv("BENCH_WRK_LIMIT") or "")
if limit then
  -- wrk's main thread sleeps for the whole -d duration; SIGINT is what
  -- ends it early (it then joins the threads and calls done() as usual).
  -- Linux hands a signal sent to the process to its main thread first.
  local ffi = require("ffi")
  ffi.cdef([[
    int getpid(void);
    int kill(int pid, int sig);
  ]])
  local SIGINT = 2
  local seen = 0
  function response(status, headers, body)
    seen = seen + 1
    if seen == limit then
      wrk.thread:stop()
      ffi.C.kill(ffi.C.getpid(), SIGINT)
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_WRK {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean
  ))
end
