-- recipes/sft.lua — supervised fine-tuning on prompt/completion pairs: the warm
-- start for RL (recipes/rlaif.lua starts from its run directory with init=...).
--
--   build/rlhost recipes/sft.lua                      # the sort task, runs/sft/
--   build/rlhost recipes/sft.lua steps=300 dir=runs/sft-long data=my.jsonl
--   build/rlhost recipes/sft.lua model=smollm2-135m-instruct lora_r=16 data=my.jsonl
--
-- Data: JSON Lines or a JSON array of "prompt" and "completion" rows (strings, or chat
-- messages: trained on the completion) or "messages" rows (conversations: trained on
-- every assistant message); other fields are ignored here. With a model whose
-- tokenizer has a chat template, prompts are rendered with it (README, "Datasets and
-- chat templates").
-- The run directory holds config.json, metrics.jsonl (loss per step), checkpoints
-- ckpt-<step>/, metrics.png and, at the end, model/: the trained model (for a Hugging
-- Face model a directory transformers loads, any LoRA adapter merged in).
-- Model settings (model=, lora_r=, precision=, device=, chat=, ...): see lua/rl/recipe.lua.
local rl = require "rl"

local cfg = rl.config(rl.recipe.settings {
  task = rl.setting{"sort", module = "tasks"}, -- recipes/tasks/<task>.lua names the default data
  init = rl.optional("string", nil, {exists = true}),
                                  -- start from this checkpoint, run or model directory
  data = rl.optional "string",    -- default: the task's training file
  examples = rl.setting{0, min = 0}, -- train on the first k examples only (0: all)
  eval_data = rl.optional "string", -- held-out prompts for eval_reward (default: the task's)
  dir = rl.setting{"runs/sft", dir = true},
  steps = rl.setting{150, min = 0},
  batch = rl.setting{32, min = 1}, -- examples per optimizer step
  micro_batch = rl.setting{32, min = 1}, -- examples per forward/backward (gradient accumulation)
  lr = rl.setting{2e-3, min = 0},
  schedule = rl.setting{"constant", choices = {"constant", "linear", "cosine"}},
                                  -- or "linear", "cosine" (over `steps`)
  warmup = rl.setting{0, min = 0},
  weight_decay = rl.setting{0.0, min = 0},
  clip = rl.setting{1.0, min = 0}, -- max global gradient norm
  seed = 1,                       -- initial weights, data order
  threads = rl.setting{0, min = 0}, -- torch threads; 0 = one per core
  transport = rl.setting{"embedded", choices = {"embedded", "worker"}},
                                  -- or "worker" (the engine in a child process)
  eval_every = rl.setting{25, min = 0}, -- held-out greedy reward every k steps (0: never)
  eval_prompts = rl.setting{200, min = 1},
  checkpoint_every = rl.setting{50, min = 0},
  keep_last = rl.setting{2, min = 0}, -- checkpoints kept (the newest verified ones; 0: all)
  plot = true,                    -- metrics.png at the end (needs matplotlib in .venv)
  tensorboard = false,            -- also TensorBoard events in <dir>/tensorboard/ (tensorboard --logdir runs/)
  resume = true,                  -- continue the run in `dir` if there is one
  fresh = false,                  -- start again in `dir`, removing its checkpoints
})

-- Paths in the defaults are relative to the rlhost tree, so the recipe runs from
-- any directory; a path that exists relative to the current directory wins.
local function find(path)
  if path:sub(1, 1) == "/" or rl.fs.stat(path) then return path end
  local alt = rl.home .. "/" .. path
  return rl.fs.stat(alt) and alt or path  -- missing either way: the reader names it
end
local task = require("tasks." .. cfg.task)

-- Check what is cheap to check before loading anything: a bad data file stops the
-- run here (file and line named, exit status 2) and the run directory stays as it was.
local opts = {shuffle = true, seed = cfg.seed, formats = {"prompt-completion", "messages"}}
local data = rl.dataset(find(cfg.data or task.train), opts)
local heldout, eval_scorer = nil, {"native", task.reward}
if cfg.eval_every > 0 and cfg.data and not cfg.eval_data then
  -- The task's held-out prompts and reward would measure another task than data=
  -- trains: hold out the end of the given data, scored against its own answers
  -- (with the task's reward only when task= says the data is that task's).
  local by_task = require("rl.config").resolved().overridden.task
  if not by_task then eval_scorer = {"exact", rl.reward.exact{}} end
  data, heldout = rl.eval.hold_out_given(data, {
    path = cfg.data, n = cfg.eval_prompts, dataset_opts = opts,
    scored_by = by_task and ("by the " .. cfg.task .. " task's reward")
                or "by exact match with their reference"})
elseif cfg.eval_every > 0 then
  heldout = rl.dataset(find(cfg.eval_data or task.heldout),
                       {formats = {"prompt", "prompt-completion", "preference"}})
end
if cfg.examples > 0 and cfg.examples < #data then
  data = rl.dataset(rl.slice(data:all(), 1, cfg.examples), opts)
end

-- The run directory: refused here if it holds another config's run (more steps, or
-- the directory moved, are fine: resuming extends the run).
local run = rl.run{dir = cfg.dir, resume = cfg.resume and not cfg.fresh, overwrite = cfg.fresh,
                   checkpoint_every = cfg.checkpoint_every, keep_last = cfg.keep_last,
                   plot = cfg.plot, tensorboard = cfg.tensorboard,
                   allow_config_change = {"steps", "resume", "fresh", "threads", "plot", "dir",
                                          "tensorboard"}}

-- The model, from scratch (builtin:) or pretrained weights (a Hugging Face directory),
-- or what init= holds (its run or checkpoint records the model: no model= needed).
local start = rl.recipe.start(cfg, run.dir)
local policy <close> = rl.model(rl.recipe.model_options(cfg, {
  path = start.path, lr = cfg.lr, seed = cfg.seed, weight_decay = cfg.weight_decay,
  schedule = cfg.schedule, warmup = cfg.warmup,
  total_steps = cfg.schedule ~= "constant" and cfg.steps or nil, transport = cfg.transport,
}))
-- A builtin checkpoint: weights only (a fresh optimizer), copied from a second handle.
local from <close> = rl.recipe.restore_into(cfg, start, policy)

-- Without a chat template (builtin: models) a conversation must be one exchange: name
-- the row that is not now, before the run directory is written.
local info = policy:info()
if data.conversational and not info.chat then
  data:check_single_turn(("model %s has none"):format(info.path))
end

-- Greedy held-out reward and exact-match rate (logged as eval_reward, eval_exact):
-- the same measure recipes/rlaif.lua logs, so the two runs' curves line up.
local eval_rows = heldout and rl.slice(heldout:all(), 1, math.min(cfg.eval_prompts, #heldout))
local function evaluate()
  local r = rl.eval.run{source = policy, data = eval_rows, scorers = {eval_scorer},
                        gen = {max_tokens = task.max_tokens, temperature = 0, stop = task.stop,
                               seed = 0}}
  return r[1].mean, r[1].pass_at["1"]
end

-- What a checkpoint holds: the weights with their optimizer state, and the data
-- cursor, so a resumed run sees the same batches an uninterrupted one would.
run:model(policy)
run:dataset(data)

for step in run:steps(cfg.steps) do
  -- model:backward trains on a row's completion, or a conversation's assistant turns.
  local examples = data:next(cfg.batch)
  -- Every example weighs the same ("seq-mean" over the whole batch), so summing the
  -- micro-batches' gradients gives exactly the full batch's gradient.
  local stop = run:phase("train")
  for mb in rl.chunks(examples, cfg.micro_batch) do
    policy:backward(mb, {loss = "sft", agg = "seq-mean", total_samples = #examples})
  end
  local stats = policy:step{clip = cfg.clip}
  stop()
  local rec = {loss = stats.loss, grad_norm = stats.grad_norm, lr = stats.lr,
               entropy = stats.entropy, tokens = stats.tokens, samples = #examples,
               epoch = data:state().epoch}
  if heldout and (step % cfg.eval_every == 0 or step == cfg.steps) then
    rec.eval_reward, rec.eval_exact = run:time("eval", evaluate)
  end
  run:log(rec)
end
rl.recipe.export(policy, run.dir)
