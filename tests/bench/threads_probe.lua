-- How many cores the engine really uses: CPU time against wall time, and how the CPU
-- time splits between the engine's calling thread and torch's other threads, for a
-- train step and a generate call. The split does not depend on how loaded the machine
-- is: with threads = 2, a fully parallel phase has half its CPU time on the other
-- thread; a serial one (Python, framework overhead per token) has none there.
--
--   build/rlhost tests/bench/threads_probe.lua [model=builtin:small] [transport=embedded]
--                [threads=2] [len=96] [tokens=16] [reps=2]
--
-- Prints one JSON object per phase and repetition on stdout.
local rl = require "rl"
local fs = require "rl.fs"
local json = require "rl.json"
local cfg = rl.config { model = "builtin:small", transport = "embedded", threads = 2, len = 96,
                        tokens = 16, reps = 2 }

local m = rl.model { path = cfg.model, threads = cfg.threads, transport = cfg.transport,
                     lr = 1e-5 }
local info = m:info()
local function self_pid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("n")
  f:close()
  return pid
end
local pid = cfg.transport == "worker" and info.pid or self_pid()
local tick = 100 -- USER_HZ on Linux

-- {tid = cpu seconds} for every thread of pid
local function threads()
  local out = {}
  local p = io.popen("cat /proc/" .. pid .. "/task/*/stat 2>/dev/null")
  for line in p:lines() do
    local tid, rest = line:match("^(%d+) %(.-%) (.*)$")
    if tid then
      local f = {}
      for x in rest:gmatch("%S+") do f[#f + 1] = x end
      out[tonumber(tid)] = (tonumber(f[12]) + tonumber(f[13])) / tick -- utime, stime
    end
  end
  p:close()
  return out
end

local function measure(phase, fn)
  local before, t0 = threads(), fs.monotonic()
  fn()
  local wall, after = fs.monotonic() - t0, threads()
  local total, main, busy = 0, 0, 0
  for tid, c in pairs(after) do
    local d = c - (before[tid] or 0)
    total = total + d
    if tid == pid then main = d end
    if d > 0.05 * wall then busy = busy + 1 end
  end
  print(json.encode { phase = phase, transport = cfg.transport, model = cfg.model,
                      threads = info.threads, wall_s = wall, cpu_s = total,
                      cpu_per_wall = total / wall, other_threads_share = (total - main) / total,
                      busy_threads = busy })
end

local samples = {}
for i = 1, 8 do
  local p, c = {}, {}
  for j = 1, 16 do p[j] = 3 + (i * 7 + j) % 200 end
  for j = 1, cfg.len do c[j] = 3 + (i * 13 + j * 5) % 200 end
  samples[i] = { prompt_ids = p, ids = c }
end
local adv = { 1, -1, 0.5, -0.5, 1, -1, 0.5, -0.5 }
m:train_step(samples, { loss = "pg", advantages = adv }) -- warm-up
for _ = 1, cfg.reps do
  measure("train_step", function() m:train_step(samples, { loss = "pg", advantages = adv }) end)
  measure("generate", function()
    m:generate({ "a", "b", "c", "d", "e", "f", "g", "h" }, { max_tokens = cfg.tokens, seed = 1 })
  end)
end
