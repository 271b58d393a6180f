-- overhead.lua — the host-overhead workload driven through rlhost: the loop of
-- tests/bench/engine_bench.py --python-loop (same requests, same order), as a recipe.
-- tests/bench/overhead_bench.py runs both and compares their wall times.
--   build/rlhost tests/bench/overhead.lua [steps=50] [transport="worker"] ...
-- Per step s (0-based), after `load builtin:tiny seed=0 lr=1e-3`:
--   generate  PROMPTS[1..prompts], n=group, max_tokens, seed=s
--   reward    the share of vowels among the ASCII letters of each text
--   advantage reward minus its group's mean
--   train_step samples, advantages, loss="pg", clip=1.0
-- Prints one JSON object: the loop's wall and CPU time and the sum of step losses
-- (equal to the Python loop's when both did the same work).
local rl = require "rl"
local cfg = rl.config { steps = 50, prompts = 8, group = 4, max_tokens = 16, threads = 0,
                        transport = "embedded" }

local PROMPTS = { "Write a word:", "Name a colour:", "Say hello:", "Count to three:",
                  "An animal:", "A city:", "A short poem:", "Your name:" }

local m <close> = rl.model { path = "builtin:tiny", transport = cfg.transport, seed = 0,
                             lr = 1e-3, threads = cfg.threads > 0 and cfg.threads or nil }

-- Bytes, not characters: Lua and Python agree on ASCII letters exactly, so both loops
-- compute the same floats in the same order and train the same way.
local function reward(text)
  local letters, vowels = 0, 0
  for c in text:gmatch("%a") do
    letters = letters + 1
    if c:lower():find("[aeiou]") then vowels = vowels + 1 end
  end
  return letters > 0 and vowels / letters or 0.0
end

local prompts = table.move(PROMPTS, 1, cfg.prompts, 1, {})
local t0, c0 = rl.fs.monotonic(), os.clock()
local loss_sum = 0.0
for s = 0, cfg.steps - 1 do
  local samples = rl.generate(m, prompts, { n = cfg.group, max_tokens = cfg.max_tokens, seed = s })
  local adv = {}
  for g = 0, #prompts - 1 do
    local r, sum = {}, 0
    for j = 1, cfg.group do
      r[j] = reward(samples[g * cfg.group + j].text)
      sum = sum + r[j]
    end
    local mean = sum / cfg.group
    for j = 1, cfg.group do adv[g * cfg.group + j] = r[j] - mean end
  end
  local st = rl.train_step(m, samples, { loss = "pg", advantages = adv, clip = 1.0 })
  loss_sum = loss_sum + st.loss
end
local secs, cpu = rl.fs.monotonic() - t0, os.clock() - c0
print(rl.json.encode { loop_s = secs, cpu_s = cpu, loss_sum = loss_sum, steps = cfg.steps,
                       transport = cfg.transport })
