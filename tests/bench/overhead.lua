-- overhead.lua — the host-overhead workload driven through rlhost: `steps` rounds of
-- generate + train_step on builtin:tiny. tests/bench/overhead_bench.py runs the very
-- same requests from a plain Python loop over the engine and compares wall times.
--   build/rlhost tests/bench/overhead.lua [steps=50] [transport="worker"] ...
-- Prints one JSON object: the loop's wall time and a checksum of the step losses
-- (equal to the Python loop's when both did the same work).
local rl = require "rl"
local cfg = rl.config { steps = 50, prompts = 8, group = 4, max_tokens = 32, seed = 0,
                        threads = 0, lr = 1e-4, transport = "embedded" }

local m <close> = rl.model { path = "builtin:tiny", transport = cfg.transport, seed = cfg.seed,
                             lr = cfg.lr, threads = cfg.threads > 0 and cfg.threads or nil }

-- Reward: the share of lowercase ASCII letters in the text; advantage: reward minus
-- its group's mean. The Python loop computes the same floats in the same order.
local function reward(text)
  if #text == 0 then return 0.0 end
  local _, k = text:gsub("[a-z]", "")
  return k / #text
end

local t0, c0 = rl.fs.monotonic(), os.clock()
local loss_sum, tokens = 0.0, 0
for s = 0, cfg.steps - 1 do
  local prompts = {}
  for j = 0, cfg.prompts - 1 do prompts[j + 1] = ("task %d-%d: "):format(s, j) end
  local samples = rl.generate(m, prompts, { n = cfg.group, max_tokens = cfg.max_tokens,
                                            seed = cfg.seed + s })
  local adv = {}
  for g = 0, cfg.prompts - 1 do
    local r, sum = {}, 0.0
    for j = 1, cfg.group do
      r[j] = reward(samples[g * cfg.group + j].text)
      sum = sum + r[j]
    end
    local mean = sum / cfg.group
    for j = 1, cfg.group do adv[g * cfg.group + j] = r[j] - mean end
  end
  local st = rl.train_step(m, samples, { loss = "pg", advantages = adv, clip = 1.0 })
  loss_sum = loss_sum + st.loss
  tokens = tokens + st.tokens
end
local secs, cpu = rl.fs.monotonic() - t0, os.clock() - c0
print(rl.json.encode { loop_s = secs, cpu_s = cpu, loss_sum = loss_sum, tokens = tokens,
                       steps = cfg.steps, transport = cfg.transport })
