-- rl.model: the local engine's model handle (host/lmodel.c) and its methods.
--
--   local m <close> = rl.model { path = "builtin:tiny", transport = "worker", lr = 1e-4 }
--   local samples = m:generate({ "2+2=" }, { n = 4, max_tokens = 16 })   -- flat list
--   local stats = m:train_step(samples, { loss = "pg", advantages = adv, clip = 1.0 })
--   trainer:sync(generator)            -- trainer's weights into the generator
--
-- path: "builtin:tiny", a Hugging Face directory, or a short name such as
-- "smollm2-135m-instruct" (a directory under $RLHOST_MODELS or <home>/models, built by
-- `make models`). lora = {r=16, alpha=32, dropout=0, targets="all-linear" or
-- {"q_proj","v_proj"}} trains a LoRA adapter (peft) instead of the weights: only the
-- adapter is trainable, checkpointed (PEFT's adapter/ layout) and synced to generators
-- (load them with the same lora), and reference=true is the base model with the
-- adapter off. The other load options are listed in scripts/PROTOCOL.md.
--
-- Transports: "embedded" (default: the engine in this process's Python) or "worker"
-- (a child process per handle). `timeout` (seconds, per request; a call's own
-- `timeout` option overrides it) applies to workers only: an in-process call cannot
-- be cut short. A worker past its deadline is stopped (kind="timeout"); a worker that
-- dies fails the call (kind="crash"). Either way the next call starts a new worker
-- with the original load options: what the old one held since (trained or synced
-- weights, optimizer state, version) is lost, so sync a generator again, and
-- info().restarts says it happened.
--
-- Precision and memory: `precision` ("fp32", the CPU default; "bf16-mixed": float32
-- master weights, bfloat16 autocast; "bf16": pure bfloat16; "fp16-mixed": CUDA only,
-- with a gradient scaler) and `gradient_checkpointing = true` (recompute activations in
-- the backward pass); `threads` defaults to the cores the process may use.
--
-- The C handle carries requests to the engine (scripts/PROTOCOL.md) over the chosen
-- transport; the methods here shape them. Option names and values are checked by the
-- engine, which names the field at fault (kind="config"); a bad request leaves the
-- handle usable.
local C = require "rl.cmodel"
local null = require("rl.json").null

local M = {}
local methods = C.methods

local raise = require("rl.util").raise  -- errors name the recipe line

local function copy(t)
  local out = {}
  if t ~= nil then
    if type(t) ~= "table" then
      raise("config", "options must be a table, got a " .. type(t))
    end
    for k, v in pairs(t) do out[k] = v end
  end
  return out
end

-- What the engine reads of a sample: token ids when the engine made it, else prompt,
-- text and finish (a text cut at max_tokens, finish="length", gets no EOS: it did not
-- end there); the log-probs recorded at generation only where the loss uses them
-- (ppo), since encoding every token's float is most of a request's cost. Everything
-- else a sample carries (source, group, a dataset's extra fields) stays in Lua.
-- Dataset rows go as they are: a prompt's messages stand for its text, a row's
-- completion for text, and a `messages` row is a conversation (rlengine/chat.py).
local function engine_samples(samples, with_logprobs)
  if type(samples) ~= "table" then return samples end -- the engine names the error
  local out = {}
  for i = 1, #samples do
    local s = samples[i]
    local lp = with_logprobs and type(s) == "table" and s.logprobs or nil
    if type(s) ~= "table" then
      out[i] = s
    elseif s.ids ~= nil or s.prompt_ids ~= nil then
      out[i] = { prompt_ids = s.prompt_ids, ids = s.ids, logprobs = lp }
    elseif s.text == nil and s.completion == nil and s.messages ~= nil then
      out[i] = { messages = s.messages, logprobs = lp }
    else
      local text = s.text
      if text == nil then text = s.completion end
      out[i] = { prompt = s.messages or s.prompt, text = text, finish = s.finish,
                 logprobs = lp }
    end
  end
  return out
end

-- Advantages may have holes (nil = no reward, no gradient); JSON needs null there.
local function dense(adv, n)
  if type(adv) ~= "table" then return adv end
  local out = {}
  for i = 1, n do
    local a = adv[i]
    if a == nil then a = null end
    out[i] = a
  end
  return out
end

--- model:generate(prompts, opts) -> samples
-- prompts: a list of strings or message lists. Returns a flat, prompt-major list of
-- n samples per prompt: samples[(i-1)*n + j] = {prompt= (as rendered), messages=,
-- text=, prompt_ids=, ids=, logprobs=, finish=, version=, source="model", group=i}.
-- rl.generate adds the rest.
function methods:generate(prompts, opts)
  local req = copy(opts)
  req.prompts = prompts
  local r = self:_call("generate", req)
  local out, k = {}, 0
  for i, group in ipairs(r.samples) do
    -- The engine says how it rendered each prompt (an engine that does not: as given).
    local p = r.prompts and r.prompts[i] or prompts[i]
    local msgs = r.messages and r.messages[i]
    if msgs == null then msgs = nil end
    for _, s in ipairs(group) do
      s.prompt, s.messages, s.source, s.group = p, msgs, "model", i
      k = k + 1
      out[k] = s
    end
  end
  return out
end

--- model:logprobs(samples, opts) -> logprobs, ref_logprobs
function methods:logprobs(samples, opts)
  local req = copy(opts)
  req.samples = engine_samples(samples)
  local r = self:_call("logprobs", req)
  return r.logprobs, r.ref_logprobs
end

--- model:next_logprobs(prompts, candidates, opts) -> reply
-- The log-probs of each candidate string as the next token after each prompt (a
-- judge's verdict distribution; scripts/PROTOCOL.md, op next_logprobs): reply.logprobs
-- [i][c] for prompt i and candidate c, reply.mass[i] (their summed probability),
-- reply.top[i] (the most likely next token), reply.first_only (candidates scored by
-- their first token).
function methods:next_logprobs(prompts, candidates, opts)
  local req = copy(opts)
  req.prompts, req.candidates = prompts, candidates
  return self:_call("next_logprobs", req)
end

--- model:backward(samples, opts) -> stats: accumulate gradients for a micro-batch.
function methods:backward(samples, opts)
  local req = copy(opts)
  req.samples = engine_samples(samples, req.loss == "ppo")
  if type(samples) == "table" then req.advantages = dense(req.advantages, #samples) end
  return self:_call("backward", req)
end

--- model:step(opts) -> stats: clip, optimizer update, zero gradients; version + 1.
function methods:step(opts)
  return self:_call("step", copy(opts))
end

local STEP_KEYS = { clip = true, lr = true }

--- model:train_step(samples, opts) -> stats: backward on all samples, then step.
-- opts mixes both: clip and lr go to the step, timeout to both, the rest to backward.
function methods:train_step(samples, opts)
  local b, s = {}, {}
  for k, v in pairs(copy(opts)) do
    if STEP_KEYS[k] then s[k] = v
    elseif k == "timeout" then b[k], s[k] = v, v
    else b[k] = v end
  end
  local bs = self:backward(samples, b)
  local stats = self:step(s)
  stats.clip_frac, stats.samples = bs.clip_frac, bs.samples
  return stats
end

local function dir_opts(dir, what)
  if type(dir) == "table" then return copy(dir) end
  return { dir = dir }
end

--- model:save(dir) -> {files=, version=}; model:restore(dir) -> {version=}
-- model:save{dir=, merged=true}: a standalone model instead of a checkpoint (for HF
-- models a directory transformers loads, any LoRA adapter folded in).
function methods:save(dir) return self:_call("save", dir_opts(dir)) end
function methods:restore(dir) return self:_call("restore", dir_opts(dir)) end

--- model:info() -> {params=, version=, device=, ..., transport=, pid=, restarts=}
function methods:info()
  local r = self:_call("info", {})
  r.transport, r.pid, r.restarts = self:_transport()
  return r
end

--- source:sync(target, ...) -> version
-- Push this model's weights into each target handle (typically a trainer into its
-- generators). The weights go through one file (in /dev/shm when there is one) that
-- this model writes once and each target reads once; the last target removes it.
-- Targets take this model's version, so their samples say which weights made them.
function methods:sync(...)
  local n = select("#", ...)
  if n == 0 then
    raise("usage", "sync: give the model(s) to copy the weights into")
  end
  for i = 1, n do
    local t = select(i, ...)
    if getmetatable(t) ~= getmetatable(self) then
      raise("usage", ("sync: argument %d is not a model handle"):format(i))
    end
  end
  local ex = self:_call("export", {})
  for i = 1, n do
    local t = select(i, ...)
    t:_call("import", { path = ex.path, version = ex.version, remove = (i == n) })
  end
  return ex.version
end

--- rl.model(options) -> handle
-- A model read from a directory is announced in one line with its load time (the
-- engine's libraries draw no progress bars of their own); builtin: models are instant.
function M.model(opts)
  local t0 = require("rl.fs").monotonic()
  local m = C.open(opts)
  local path = type(opts) == "table" and opts.path
  local st = type(path) == "string" and require("rl.fs").stat(path)
  if st and st.type == "dir" then
    local ok, info = pcall(m.info, m)
    local what = ok and type(info.params) == "number"
                 and (" (%.1fM parameters, %s)"):format(info.params / 1e6, tostring(info.device))
                 or ""
    io.stderr:write(("rlhost: loaded model %s%s in %.1fs\n")
                    :format(path, what, require("rl.fs").monotonic() - t0))
    io.stderr:flush()
  end
  return m
end

--- rl.train_step(model, samples, opts) -> stats
function M.train_step(model, samples, opts)
  return model:train_step(samples, opts)
end

M.methods = methods
M.python_started = C.python_started
return M
