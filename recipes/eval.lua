-- recipes/eval.lua — evaluate a model or checkpoint on a dataset with one or more
-- scorers, or two side by side; writes report.md, report.json and report.png.
--
--   build/rlhost recipes/eval.lua checkpoint=runs/rlaif               # one model
--   build/rlhost recipes/eval.lua checkpoint=runs/sft compare=runs/rlaif out=runs/cmp
--
-- `checkpoint` and `compare` take a checkpoint directory (ckpt-N/), a run directory
-- (its newest complete checkpoint) or a model directory (a run's model/ export, any
-- Hugging Face directory); a checkpoint is loaded on the base model it records, with
-- its LoRA setting. Without `checkpoint` the model at `model` is evaluated as it is.
-- Model settings (model=, precision=, device=, chat=, system=, ...): see
-- lua/rl/recipe.lua. Scorers: the task's native reward, exact match
-- against the reference, and, when a teacher is configured (RL_TEACHER_URL, see
-- recipes/rlaif.lua), the teacher grading with the task's rubric and, comparing two
-- models, the teacher choosing between their answers to each prompt (pairwise).
local rl = require "rl"

local SCORERS = {"native", "exact", "judge"}
local cfg = rl.config(rl.recipe.settings {
  task = rl.setting{"sort", module = "tasks"},
                                  -- recipes/tasks/<task>.lua: held-out data, rubric, reward
  checkpoint = rl.optional("string", nil, {exists = true}), -- model A
  compare = rl.optional("string", nil, {exists = true}), -- model B, side by side with A
  label = rl.optional "string",   -- names in the report (default: the paths)
  compare_label = rl.optional "string",
  data = rl.optional "string",    -- default: the task's held-out file
  limit = rl.setting{0, min = 0}, -- evaluate the first `limit` prompts (0: all)
  n = rl.setting{1, min = 1},     -- samples per prompt (pass@k for k = 1 and n)
  temperature = rl.setting{0.0, min = 0}, -- 0: greedy
  max_tokens = rl.setting{0, min = 0}, -- 0: the task's
  scorers = rl.setting{"native,exact,judge", choices = SCORERS, list = true},
                                  -- judge only when a teacher is configured
  pairwise = true,                -- with a teacher and two models: the teacher picks one
  out = rl.setting{"runs/eval", dir = true}, -- where the report goes
  title = rl.optional "string",
  teacher_url = rl.setting{type = "string", env = "RL_TEACHER_URL", requires = "teacher_model"},
  teacher_model = rl.setting{type = "string", env = "RL_TEACHER_MODEL"},
  teacher_api = rl.setting{"openai-chat", env = "RL_TEACHER_API",
                           choices = {"openai-chat", "openai-completions", "anthropic"}},
  teacher_key_env = rl.setting{type = "string", env = "RL_TEACHER_KEY_ENV"},
  teacher_timeout = rl.setting{60, above = 0},
  judge_cache = rl.optional("string", nil, {parent_exists = true}),
  rubric = rl.optional "string",  -- default: the task's
  seed = 1,
  threads = rl.setting{0, min = 0},
})

local function find(path)  -- default paths are relative to the rlhost tree
  if path:sub(1, 1) == "/" or rl.fs.stat(path) then return path end
  local alt = rl.home .. "/" .. path
  return rl.fs.stat(alt) and alt or path  -- missing either way: the reader names it
end
local task = require("tasks." .. cfg.task)
local max_tokens = cfg.max_tokens > 0 and cfg.max_tokens or task.max_tokens

-- Inputs first: a bad data file, a missing checkpoint or rubric stops here (exit 2).
local data = rl.dataset(find(cfg.data or task.heldout),
                        {formats = {"prompt", "prompt-completion", "preference"}})
local models = {}
local function check(path)  -- a missing or incomplete checkpoint is refused here
  if not rl.recipe.is_model_dir(path) then rl.checkpoint.find(path) end
  return path
end
if cfg.checkpoint then
  models[1] = {label = cfg.label or cfg.checkpoint, path = check(cfg.checkpoint)}
else
  models[1] = {label = cfg.label or cfg.model or "builtin:tiny", path = cfg.model or "builtin:tiny"}
end
if cfg.compare then
  models[2] = {label = cfg.compare_label or cfg.compare, path = check(cfg.compare)}
  if models[2].label == models[1].label then models[2].label = models[2].label .. " (B)" end
end

local teacher
if cfg.teacher_url then
  teacher = rl.endpoint{url = cfg.teacher_url, model = cfg.teacher_model, api = cfg.teacher_api,
                        api_key_env = cfg.teacher_key_env, timeout = cfg.teacher_timeout}
end
local available = {
  native = function()  -- the task's own reward (a one-member chain names it in the report)
    return rl.fallback{task.reward, names = {"native:" .. cfg.task}}
  end,
  exact = function() return rl.reward.exact{} end,  -- the completion equals the reference
  judge = function()
    return teacher and rl.judge{endpoint = teacher, rubric = find(cfg.rubric or task.rubric),
                                scale = {0, 10}, cache = cfg.judge_cache}
  end,
}
local scorers = {}
for name in cfg.scorers:gmatch("[^,%s]+") do  -- names rl.config checked against SCORERS
  local s = available[name]()
  if s then scorers[#scorers + 1] = {name, s} end
end
if cfg.scorers:find("judge") and not teacher then
  io.stderr:write("rlhost: no teacher configured (RL_TEACHER_URL): the judge scorer is left out\n")
end

local rows = data:all()
if cfg.limit > 0 and #rows > cfg.limit then rows = rl.slice(rows, 1, cfg.limit) end
local gen = {max_tokens = max_tokens, temperature = cfg.temperature, stop = task.stop,
             seed = cfg.seed}
local k = cfg.n > 1 and {1, cfg.n} or {1}

-- One handle at a time, on the base model and LoRA setting each checkpoint records.
local report, samples_of, generations = {}, {}, {}
for _, m in ipairs(models) do
  local policy <close> = rl.recipe.open(cfg, m.path, {seed = cfg.seed})
  local r, samples, scores = rl.eval.run{source = policy, data = rows, scorers = scorers,
                                         n = cfg.n, k = k, gen = gen, model = m.label}
  for _, row in ipairs(r) do report[#report + 1] = row end
  samples_of[#samples_of + 1] = samples
  generations[#generations + 1] = {model = m.label, samples = samples, scores = scores}
end

-- Pairwise: for every prompt the teacher sees A's and B's answers (in both orders)
-- and picks one; a model's score is its win rate (ties count half).
if teacher and cfg.pairwise and #models == 2 then
  local pj = rl.judge{endpoint = teacher, mode = "pairwise", cache = cfg.judge_cache}
  local pairs_, a, b = {}, samples_of[1], samples_of[2]
  for i = 1, #a do pairs_[#pairs_ + 1] = a[i]; pairs_[#pairs_ + 1] = b[i] end
  local rewards, info = rl.score(pj, pairs_)
  for side = 1, 2 do
    local rs, inf = {}, {}
    for i = 1, #a do rs[i], inf[i] = rewards[2 * i - 2 + side], info[2 * i - 2 + side] end
    local row = rl.eval.summary(rs, inf, {n = cfg.n, k = k, pass = 1.0, count = #a})
    row.model, row.scorer, row.n = models[side].label, "pairwise", cfg.n
    report[#report + 1] = row
  end
end

local title = cfg.title or ("%s on %s (%d prompts, n=%d, temperature %g)")
  :format(#models == 2 and "comparison" or "evaluation", cfg.data or task.heldout, #rows, cfg.n,
          cfg.temperature)
local paths, md = rl.eval.report(report, {dir = cfg.out, title = title,
                                          generations = generations})
io.stdout:write(md)
io.stderr:write(("rlhost: report in %s%s; every generation in %s\n")
                :format(paths.md, paths.png and (" and " .. paths.png) or "", paths.samples))
