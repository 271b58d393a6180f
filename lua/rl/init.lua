-- rl: the one table recipes use. It merges the C primitives (rl.core, rl.json,
-- rl.fs, ...) with the policy helpers written in Lua (lua/rl/*.lua).
--
-- Members load on first use: `rlhost -e ''` and short scripts pay only for what
-- they touch (loading every module up front was 40% of the start-up time).
-- pairs(rl) still lists everything.
local core = require "rl.core"

local rl = {}
for k, v in pairs(core) do rl[k] = v end

local function field(mod, name) return function() return require(mod)[name] end end
local function module(mod) return function() return require(mod) end end

local lazy = {
  json = module "rl.json",
  config = field("rl.config", "config"),
  optional = field("rl.config", "optional"), -- a setting with no default: rl.optional "string"
  setting = field("rl.config", "setting"),   -- a setting with rules: rl.setting{8, min = 1}
  fs = module "rl.fs",
  random = module "rl.random",
  -- datasets, batching, advantages, fallbacks, runs and evaluation
  dataset = field("rl.dataset", "dataset"),
  prompts = field("rl.dataset", "prompts"),
  advantages = field("rl.advantages", "advantages"),
  fallback = field("rl.fallback", "fallback"),
  run = field("rl.run", "run"),
  checkpoint = module "rl.checkpoint",
  eval = module "rl.eval",
  recipe = module "rl.recipe", -- the model settings recipes share; where a run starts and ends
  -- the engine: models, generation, training
  model = field("rl.model", "model"),
  train_step = field("rl.model", "train_step"),
  generate = field("rl.generate", "generate"),
  -- scoring: endpoints, judges, native rewards, the cache
  score = field("rl.score", "score"),
  score_summary = field("rl.score", "summary"),
  endpoint = field("rl.endpoint", "new"),
  judge = field("rl.judge", "judge"),
  reward = module "rl.reward",
  cache = module "rl.cache",
  -- servers a recipe starts (an OpenAI-compatible server as a child process)
  server = field("rl.server", "server"),
}
for _, k in ipairs{"chunks", "slice", "len", "sum", "mean", "stats", "repeat_each",
                   "flatten", "groups", "sorted_keys", "copy"} do
  lazy[k] = field("rl.batch", k)
end

return setmetatable(rl, {
  __index = function(t, k)
    local load = lazy[k]
    if load == nil then return nil end
    local v = load()
    rawset(t, k, v)
    return v
  end,
  __pairs = function(t)
    for k in pairs(lazy) do local _ = t[k] end
    return next, t, nil
  end,
})
