-- recipes/rlaif.lua — reinforcement learning from AI feedback, GRPO-style.
--
--   build/rlhost recipes/rlaif.lua init=runs/sft                 # from the SFT warm start
--   build/rlhost recipes/rlaif.lua model=smollm2-135m-instruct lora_r=16 task=... kl=0.05
--   RL_TEACHER_URL=http://127.0.0.1:8000/v1 RL_TEACHER_MODEL=qwen2.5-7b-instruct \
--     build/rlhost recipes/rlaif.lua init=runs/sft steps=200 lr=1e-4
--
-- Each step: sample a group of completions per prompt from the policy, score them
-- (a teacher model grading with the task's rubric, else the task's native reward),
-- turn the scores into group-relative advantages, and take one policy-gradient step
-- accumulated over micro-batches. Every knob below is a key=value override.
--
-- The teacher: RL_TEACHER_URL (an OpenAI-compatible /v1 base URL or Anthropic's),
-- RL_TEACHER_MODEL (required with it), RL_TEACHER_API (openai-chat | openai-completions
-- | anthropic) and the API key in the environment variable the endpoint reads
-- (OPENAI_API_KEY, ANTHROPIC_API_KEY, or the one RL_TEACHER_KEY_ENV names). Keys never
-- reach the run directory.
--
-- Model settings (model=, lora_r=, precision=, device=, chat=, ...): see
-- lua/rl/recipe.lua. With init= the model is the one init holds (model= not needed).
-- The end of the run writes model/ in the run directory: the final model (a Hugging
-- Face directory for HF models, any LoRA adapter merged in).
local rl = require "rl"

local TEACHER_APIS = {"openai-chat", "openai-completions", "anthropic"}
local cfg = rl.config(rl.recipe.settings {
  task = rl.setting{"sort", module = "tasks"},
                                  -- recipes/tasks/<task>.lua: data, rubric, native reward
  init = rl.optional("string", nil, {exists = true}),
                                  -- warm start: a checkpoint, run or model directory (runs/sft)
  data = rl.optional "string",    -- training prompts (default: the task's)
  eval_data = rl.optional "string", -- held-out prompts for eval_reward (default: the task's)
  dir = rl.setting{"runs/rlaif", dir = true},
  steps = rl.setting{100, min = 0},
  prompts = rl.setting{16, min = 1}, -- prompts per step
  group = rl.setting{8, min = 1}, -- samples per prompt: the baseline is the group's mean
  micro_batch = rl.setting{32, min = 1}, -- samples per forward/backward (gradient accumulation)
  epochs = rl.setting{1, min = 1}, -- passes over each step's samples (PPO reuses them)
  minibatches = rl.setting{1, min = 1}, -- optimizer updates per pass
  loss = rl.setting{"pg", choices = {"pg", "ppo"}},
                                  -- "pg" (REINFORCE with a group baseline) or "ppo" (clipped)
  clip_low = rl.setting{0.2, min = 0}, clip_high = rl.setting{0.2, min = 0},
                                  -- PPO's ratio clip range
  lr = rl.setting{3e-4, min = 0},
  warmup = rl.setting{0, min = 0}, -- steps of linear lr warm-up (a fresh Adam's first
                                  -- steps move every weight by about lr)
  weight_decay = rl.setting{0.0, min = 0},
  clip = rl.setting{1.0, min = 0}, -- max global gradient norm
  kl = rl.setting{0.0, min = 0},  -- weight of the KL penalty to the reference (the init)
  temperature = rl.setting{1.0, min = 0}, -- sampling temperature (exploration)
  max_tokens = rl.setting{0, min = 0}, -- 0: the task's
  baseline = rl.setting{"group", choices = {"group", "rloo"}}, -- or "rloo" (leave-one-out)
  normalize = rl.setting{"std", choices = {"std", "mean", "none"}},
                                  -- "std" (GRPO), "mean" (Dr. GRPO), "none"
  skip_zero_var = true,           -- groups whose samples all scored the same teach nothing
  train_off_policy = false,       -- train on samples the fallback generator (teacher) wrote
  generator = rl.setting{"policy", choices = {"policy", "worker"}},
                                  -- "policy" (in process) or "worker" (a child process synced
                                  -- before every generation; a crash falls back to the teacher)
  gen_timeout = rl.setting{120, above = 0}, -- seconds a worker generator may take per call
  gen_retries = rl.setting{1, min = 0}, -- fresh-worker retries of a crashed call before
                                  -- the teacher
  teacher_url = rl.setting{type = "string", env = "RL_TEACHER_URL", requires = "teacher_model"},
  teacher_model = rl.setting{type = "string", env = "RL_TEACHER_MODEL"},
  teacher_api = rl.setting{"openai-chat", env = "RL_TEACHER_API", choices = TEACHER_APIS},
  teacher_key_env = rl.setting{type = "string", env = "RL_TEACHER_KEY_ENV"},
  teacher_timeout = rl.setting{60, above = 0}, -- seconds per request attempt
  teacher_concurrency = rl.setting{16, min = 1},
  teacher_retries = rl.setting{4, min = 0}, -- retries per request (429, 5xx, resets) with backoff
  breaker_cooldown = rl.setting{30, min = 0}, -- seconds a source that keeps failing is skipped
  judge_cache = rl.optional("string", nil, {parent_exists = true}),
                                  -- SQLite file of judge scores (reruns ask nothing)
  rubric = rl.optional "string",  -- default: the task's
  eval_every = rl.setting{25, min = 0}, -- held-out greedy reward every k steps (0: never)
  eval_prompts = rl.setting{200, min = 1},
  checkpoint_every = rl.setting{25, min = 0},
  keep_last = rl.setting{2, min = 0}, -- checkpoints kept (the newest verified ones; 0: all)
  plot = true,                    -- metrics.png at the end (needs matplotlib in .venv)
  log_samples = rl.setting{8, min = -1}, -- samples per step kept in <dir>/samples.jsonl (0: none, -1: all)
  tensorboard = false,            -- also TensorBoard events in <dir>/tensorboard/ (tensorboard --logdir runs/)
  resume = true,                  -- continue the run in `dir` if there is one
  fresh = false,                  -- start again in `dir`, removing its checkpoints
  seed = 1,
  threads = rl.setting{0, min = 0}, -- torch threads; 0 = one per core
})

local function find(path)  -- default paths are relative to the rlhost tree
  if path:sub(1, 1) == "/" or rl.fs.stat(path) then return path end
  local alt = rl.home .. "/" .. path
  return rl.fs.stat(alt) and alt or path  -- missing either way: the reader names it
end
local function note(msg) io.stderr:write("rlhost: " .. msg .. "\n") end
local task = require("tasks." .. cfg.task)
local max_tokens = cfg.max_tokens > 0 and cfg.max_tokens or task.max_tokens

-- Cheap checks first (data files, rubric, teacher settings): bad input stops the
-- run with exit status 2 before a model loads or the run directory is touched.
local prompt_rows = {"prompt", "prompt-completion", "preference"}  -- rows with a prompt
local data = rl.dataset(find(cfg.data or task.train), {shuffle = true, seed = cfg.seed,
                                                       formats = prompt_rows})
local heldout
if cfg.eval_every > 0 and cfg.data and not cfg.eval_data then
  -- The task's held-out prompts are another set than data= trains on: hold out the
  -- end of the given data instead (scored with the task's reward, as training is).
  data, heldout = rl.eval.hold_out_given(data, {
    path = cfg.data, n = cfg.eval_prompts,
    dataset_opts = {shuffle = true, seed = cfg.seed, formats = prompt_rows},
    scored_by = ("with the %s task's reward"):format(cfg.task)})
elseif cfg.eval_every > 0 then
  heldout = rl.dataset(find(cfg.eval_data or task.heldout), {formats = prompt_rows})
end

-- The teacher, when one is configured: it grades samples with the rubric (the
-- judge) and stands in for a failing local generator.
local teacher, judge
if cfg.teacher_url then
  teacher = rl.endpoint{url = cfg.teacher_url, model = cfg.teacher_model, api = cfg.teacher_api,
                        api_key_env = cfg.teacher_key_env, timeout = cfg.teacher_timeout,
                        concurrency = cfg.teacher_concurrency, max_retries = cfg.teacher_retries}
  judge = rl.judge{endpoint = teacher, rubric = find(cfg.rubric or task.rubric), scale = {0, 10},
                   cache = cfg.judge_cache}
else
  note(("no teacher configured (RL_TEACHER_URL): scoring with the %s task's native reward")
       :format(cfg.task))
end

-- The run directory: refused here if it holds another config's run (more steps, or
-- the directory moved, are fine: resuming extends the run).
local run = rl.run{dir = cfg.dir, resume = cfg.resume and not cfg.fresh, overwrite = cfg.fresh,
                   checkpoint_every = cfg.checkpoint_every, keep_last = cfg.keep_last,
                   plot = cfg.plot, tensorboard = cfg.tensorboard, log_samples = cfg.log_samples,
                   allow_config_change = {"steps", "resume", "fresh", "threads", "plot", "dir",
                                          "tensorboard", "log_samples"}}

-- Scoring: the judge first; samples it cannot score (server down, an answer with no
-- readable score) go to the native reward. rl.fallback prints one line the first
-- time it falls back and counts every sample by source for the metrics.
local scorer = rl.fallback{judge, task.reward, names = {judge and "judge", "native"},
                          breaker = {cooldown = cfg.breaker_cooldown}}

-- The policy starts from `init` (the model it holds) or `model`, with a fresh
-- optimizer. The KL reference is that starting point: the policy's own frozen copy
-- (with LoRA, the same weights with the adapter switched off), or, for a builtin
-- checkpoint, the second handle its weights were copied from.
local start = rl.recipe.start(cfg, run.dir)
local policy <close> = rl.model(rl.recipe.model_options(cfg, {
  path = start.path, lr = cfg.lr, seed = cfg.seed, weight_decay = cfg.weight_decay,
  reference = cfg.kl > 0 and not start.checkpoint}))
local reference <close> = rl.recipe.restore_into(cfg, start, policy)

-- Generation: the policy itself, or a worker process holding a copy of its weights;
-- either way the teacher (when configured) takes over if it fails. Samples the
-- teacher writes are marked off_policy.
local local_gen = policy
if cfg.generator == "worker" then
  local worker = rl.model(rl.recipe.model_options(cfg, {
    path = start.path, transport = "worker", timeout = cfg.gen_timeout, seed = cfg.seed}))
  -- The worker gets the policy's weights before every generation (a few MB through
  -- /dev/shm). A worker that died is restarted by the next call with its initial
  -- weights, so the sync is what makes its samples the policy's. A worker that dies
  -- during the call gets one more try on a fresh, synced worker before the step's
  -- samples come from the teacher: a crash is usually a one-off, and off-policy
  -- samples cost a step of training.
  local function generate_once(prompts, opts)
    if not pcall(policy.sync, policy, worker) then policy:sync(worker) end
    return worker:generate(prompts, opts)
  end
  local_gen = function(prompts, opts)
    for _ = 1, cfg.gen_retries do
      local ok, res = pcall(generate_once, prompts, opts)
      if ok then return res end
      if not (rl.is_error(res, "crash") or rl.is_error(res, "timeout")) then error(res, 0) end
      note(("generator worker failed (%s); retrying on a fresh worker"):format(res.message))
    end
    return generate_once(prompts, opts)
  end
end
local generator = rl.fallback{local_gen, teacher, names = {"policy", teacher and "teacher"},
                              breaker = {cooldown = cfg.breaker_cooldown}}

-- A checkpoint holds the policy (weights, optimizer), the data cursor and Lua's
-- random state: a run killed at any point resumes exactly where it stopped.
run:model(policy)
run:dataset(data)

-- KL(policy || reference) of each sample, summed over its tokens: the penalty that
-- keeps the policy near the warm start. It is taken from the reward (as InstructGPT
-- does).
local function kl_per_sample(samples)
  local mine = {}
  local need = {}
  for i, s in ipairs(samples) do
    if s.logprobs and cfg.temperature == 1.0 then mine[i] = s.logprobs else need[#need + 1] = i end
  end
  if #need > 0 then  -- teacher samples, or log-probs recorded at another temperature
    local sub = {}
    for j, i in ipairs(need) do sub[j] = samples[i] end
    local lp = policy:logprobs(sub)
    for j, i in ipairs(need) do mine[i] = lp[j] end
  end
  local ref = reference and reference:logprobs(samples)
              or select(2, policy:logprobs(samples, {reference = true}))
  local out = {}
  for i = 1, #samples do
    local d = 0.0
    for t = 1, #ref[i] do d = d + (mine[i][t] - ref[i][t]) end
    out[i] = d
  end
  return out
end

-- Greedy held-out reward and exact-match rate: the numbers the run is judged by,
-- logged as eval_reward and eval_exact every eval_every steps.
local eval_rows = heldout and rl.slice(heldout:all(), 1, math.min(cfg.eval_prompts, #heldout))
local function evaluate()
  local r = rl.eval.run{source = policy, data = eval_rows, scorers = {{"native", task.reward}},
                        gen = {max_tokens = max_tokens, temperature = 0, stop = task.stop,
                               seed = 0}}
  return r[1].mean, r[1].pass_at["1"]
end

for step in run:steps(cfg.steps) do
  -- 1. Sample. The seed comes from (seed, step), so a resumed run draws the same samples.
  local stop = run:phase("generate")
  local samples = rl.generate(generator, data:next(cfg.prompts),
                              {n = cfg.group, max_tokens = max_tokens, stop = task.stop,
                               temperature = cfg.temperature, seed = cfg.seed * 1000003 + step})
  stop()

  -- 2. Score: one reward per sample in [0, 1]; nil when nothing could score it.
  stop = run:phase("score")
  local rewards, scored = rl.score(scorer, samples, {raise = true})
  stop()

  -- 3. Advantages. The KL penalty comes off the reward first; then each sample is
  -- compared with the other samples of its prompt, so the model learns which of its
  -- own answers were better, whatever the prompt's difficulty.
  stop = run:phase("kl")
  local shaped, kls = rewards, nil
  if cfg.kl > 0 then
    kls = kl_per_sample(samples)
    shaped = {}
    for i = 1, #samples do
      if rewards[i] ~= nil then shaped[i] = rewards[i] - cfg.kl * kls[i] end
    end
  end
  stop()
  local adv, ainfo = rl.advantages(shaped, {group = cfg.group, baseline = cfg.baseline,
                                            normalize = cfg.normalize,
                                            skip_zero_var = cfg.skip_zero_var, n = #samples})
  -- Off-policy samples (the teacher's) train only when asked: the policy-gradient
  -- estimate assumes the policy wrote them.
  local off = 0
  for i, s in ipairs(samples) do
    if s.off_policy then
      off = off + 1
      if not cfg.train_off_policy then adv[i] = nil end
    end
  end
  -- What the model wrote and what it got for it: samples.jsonl, and the completion
  -- and reward metrics (lengths, clipped_ratio, tokens/s, reward_by_source, ...).
  run:log_samples(samples, {rewards = rewards, info = scored, advantages = adv, group = cfg.group})

  -- 4. Update: gradients accumulate over micro-batches and are normalised by the
  -- whole batch's token count, so the result does not depend on micro_batch.
  stop = run:phase("train")
  local train = {}
  for i, s in ipairs(samples) do
    if adv[i] ~= nil then s.advantage = adv[i]; train[#train + 1] = s end
  end
  local stats, clipped = {}, 0
  if #train > 0 then
    local missing = {}
    for _, s in ipairs(train) do if not s.ids then missing[#missing + 1] = s end end
    if #missing > 0 then  -- teacher text: PPO's ratio needs its log-probs under the policy
      local lp = policy:logprobs(missing, {temperature = cfg.temperature})
      for j, s in ipairs(missing) do s.logprobs = lp[j] end
    end
    local per = math.ceil(#train / cfg.minibatches)
    for _ = 1, cfg.epochs do
      for first = 1, #train, per do
        local mini = rl.slice(train, first, math.min(first + per - 1, #train))
        local tokens = 0
        for _, s in ipairs(mini) do tokens = tokens + #(s.ids or s.logprobs) end
        for mb in rl.chunks(mini, cfg.micro_batch) do
          local a = {}
          for j, s in ipairs(mb) do a[j] = s.advantage end
          local b = policy:backward(mb, {
            loss = cfg.loss, advantages = a, total_tokens = tokens,
            temperature = cfg.temperature > 0 and cfg.temperature or nil,
            clip_low = cfg.clip_low, clip_high = cfg.clip_high})
          clipped = clipped + b.clip_frac * #mb / (#train * cfg.epochs)
        end
        local lr = cfg.lr * math.min(1, step / math.max(1, cfg.warmup))
        stats = policy:step{clip = cfg.clip, lr = lr}
      end
    end
  end
  stop()

  -- 5. Metrics: what happened this step, with the fallbacks' counts.
  local r = rl.stats(rewards, #samples)
  local exact = 0
  for i = 1, #samples do if rewards[i] == 1 then exact = exact + 1 end end
  local rec = {reward = r.mean, reward_std = r.std, exact = exact / #samples,
               unscored = r.missing, samples = #samples, trained = #train, off_policy = off,
               zero_var_groups = ainfo.zero_var, loss = stats.loss, grad_norm = stats.grad_norm,
               entropy = stats.entropy, lr = stats.lr,
               clip_frac = cfg.loss == "ppo" and clipped or nil,
               version = policy:info().version,
               kl = kls and rl.mean(kls) or nil}
  local sc, gen = scorer:stats{reset = true}, generator:stats{reset = true}
  rec.scored_by, rec.score_fallbacks, rec.score_failures = sc.samples, sc.fallbacks, sc.failures
  rec.generated_by, rec.gen_fallbacks, rec.gen_failures = gen.samples, gen.fallbacks, gen.failures
  if heldout and (step % cfg.eval_every == 0 or step == cfg.steps) then
    rec.eval_reward, rec.eval_exact = run:time("eval", evaluate)
  end
  run:log(rec)
end
rl.recipe.export(policy, run.dir)
