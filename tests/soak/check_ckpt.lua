-- tests/soak/check_ckpt.lua — the soak's check that a run's newest checkpoint loads
-- and holds the run's final weights.
--
--   build/rlhost tests/soak/check_ckpt.lua dir=RUN out=SCRATCH [eval_prompts=8]
--
-- It restores the newest checkpoint that verifies (manifest sizes and SHA-256s)
-- into a fresh model, saves that model again into `out` (the soak compares the
-- bytes: a lossless load), and repeats recipes/rlaif.lua's greedy held-out
-- evaluation on it. Greedy decoding on the CPU is deterministic, so the soak can
-- compare eval_reward/eval_exact with the last metrics line, which the recipe
-- computed on the final weights in memory just before writing that checkpoint.
-- One JSON line on stdout.
local rl = require "rl"

local cfg = rl.config {
  dir = "",
  out = "",
  task = "sort",
  model = "builtin:tiny",
  seed = 1,
  eval_prompts = 200,
  max_tokens = 0,
  threads = 1,
}
-- The task modules live under recipes/, which is on the path only for recipes there.
package.path = rl.home .. "/recipes/?.lua;" .. package.path
local task = require("tasks." .. cfg.task)
local function find(path)
  if path:sub(1, 1) == "/" or rl.fs.stat(path) then return path end
  return rl.home .. "/" .. path
end

local c = rl.checkpoint.latest(cfg.dir)
if not c then error("no checkpoint in " .. cfg.dir .. " verifies") end
local m <close> = rl.model{path = cfg.model, seed = cfg.seed, threads = cfg.threads}
m:restore(c.path .. "/model")
m:save(cfg.out)

local heldout = rl.dataset(find(task.heldout))
local rows = rl.slice(heldout:all(), 1, math.min(cfg.eval_prompts, #heldout))
local max_tokens = cfg.max_tokens > 0 and cfg.max_tokens or task.max_tokens
local r = rl.eval.run{source = m, data = rows, scorers = {{"native", task.reward}},
                      gen = {max_tokens = max_tokens, temperature = 0, stop = task.stop, seed = 0}}
io.stdout:write(rl.json.encode({step = c.step, path = c.path, version = m:info().version,
                                eval_reward = r[1].mean, eval_exact = r[1].pass_at["1"]},
                               {sort_keys = true}), "\n")
