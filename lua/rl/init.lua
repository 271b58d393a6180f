-- rl: the one table recipes use. It merges the C primitives (rl.core, rl.json, and
-- the modules later issues add) with the policy helpers written in Lua.
local core = require "rl.core"

local rl = {}
for k, v in pairs(core) do rl[k] = v end
rl.json = require "rl.json"
rl.config = require("rl.config").config
rl.optional = require("rl.config").optional  -- a setting with no default: rl.optional "string"

-- Datasets, batching, advantages, fallbacks, runs and evaluation (lua/rl/*.lua).
rl.fs = require "rl.fs"
rl.random = require "rl.random"
do
  local batch = require "rl.batch"
  for _, k in ipairs{"chunks", "slice", "len", "sum", "mean", "stats", "repeat_each",
                     "flatten", "groups", "sorted_keys", "copy"} do
    rl[k] = batch[k]
  end
end
rl.dataset = require("rl.dataset").dataset
rl.prompts = require("rl.dataset").prompts
rl.advantages = require("rl.advantages").advantages
rl.fallback = require("rl.fallback").fallback
rl.run = require("rl.run").run
rl.checkpoint = require "rl.checkpoint"
rl.eval = require "rl.eval"
do local m, g = require "rl.model", require "rl.generate"; rl.model, rl.train_step, rl.generate = m.model, m.train_step, g.generate end

do local s, e = require "rl.score", require "rl.endpoint"; rl.score, rl.score_summary, rl.endpoint, rl.judge, rl.reward, rl.cache = s.score, s.summary, e.new, require("rl.judge").judge, require "rl.reward", require "rl.cache" end

return rl
