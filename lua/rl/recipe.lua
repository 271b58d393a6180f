-- rl.recipe: the model settings every shipped recipe shares, and where a run's model
-- starts and ends.
--
--   local cfg = rl.config(rl.recipe.settings{ steps = 100, ... })
--   local run = rl.run{ dir = cfg.dir, ... }
--   local start = rl.recipe.start(cfg, run.dir)            -- model=, or init='s model
--   local policy <close> = rl.model(rl.recipe.model_options(cfg, {path = start.path, lr = cfg.lr}))
--   local from = rl.recipe.restore_into(cfg, start, policy) -- builtin checkpoints only
--   ... train ...
--   rl.recipe.export(policy, run.dir)                      -- run/model/, path printed
--
-- Settings (command-line key=value): model (a builtin: model, a Hugging Face directory or
-- a short name under models/; default builtin:tiny, or what init= was trained from),
-- precision, device (auto/cpu/cuda), lora_r (0 = full fine-tune), lora_alpha (0 = 2 *
-- lora_r), lora_dropout, lora_targets ("all-linear" or "q_proj,v_proj"),
-- gradient_checkpointing, chat (render prompts with the tokenizer's chat template;
-- default: when it has one), system (a system message). They become rl.model options.
local config = require "rl.config"
local core = require "rl.core"
local fs = require "rl.fs"
local json = require "rl.json"
local checkpoint = require "rl.checkpoint"

local M = {}

local function config_error(msg, ...)
  error(core.error{kind = "config", where = "rlhost: ", message = msg:format(...)}, 0)
end

local function note(msg) io.stderr:write("rlhost: " .. msg .. "\n") end

local function rl_model(opts) return require("rl.model").model(opts) end

--- rl.recipe.settings(defaults) -> defaults with the shared model settings added
-- (a recipe's own value for one of them wins).
function M.settings(defaults)
  local shared = {
    model = config.optional "string",  -- a short name need not exist as a path
    precision = config.optional "string",
    device = config.setting{"auto", choices = {"auto", "cpu", "cuda"}},
    lora_r = config.setting{0, min = 0},
    lora_alpha = config.setting{0.0, min = 0},
    lora_dropout = config.setting{0.0, min = 0, below = 1},
    lora_targets = "all-linear",
    gradient_checkpointing = false,
    chat = config.optional "boolean",
    system = config.optional "string",
  }
  for k, v in pairs(shared) do
    if defaults[k] == nil then defaults[k] = v end
  end
  return defaults
end

--- The `lora` rl.model option the settings describe, or nil for a full fine-tune.
function M.lora(cfg)
  if cfg.lora_r == 0 then return nil end
  local targets = cfg.lora_targets
  if targets ~= "all-linear" then
    local list = {}
    for name in targets:gmatch("[^,%s]+") do list[#list + 1] = name end
    targets = list
  end
  return {r = cfg.lora_r, alpha = cfg.lora_alpha > 0 and cfg.lora_alpha or nil,
          dropout = cfg.lora_dropout, targets = targets}
end

--- rl.model options from the settings, with `extra` (path, lr, ...) on top. Options
-- left at their defaults are not sent, so a recipe runs on engines without them.
function M.model_options(cfg, extra)
  local o = {device = cfg.device, precision = cfg.precision, chat = cfg.chat,
             system = cfg.system, lora = M.lora(cfg)}
  if cfg.threads and cfg.threads > 0 then o.threads = cfg.threads end
  if cfg.gradient_checkpointing then o.gradient_checkpointing = true end
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

-- A Hugging Face model directory (config.json), not a run (whose config.json is the
-- recipe's) or a checkpoint.
function M.is_model_dir(path)
  local st = fs.stat(path)
  return st and st.type == "dir" and fs.stat(path .. "/config.json") ~= nil
         and not fs.stat(path .. "/run.json") and not fs.stat(path .. "/manifest.json")
end

local function read_json(path)
  local text = checkpoint.read(path)
  if not text then return nil end
  local ok, v = pcall(json.decode, text)
  if ok and type(v) == "table" then return v end
  return nil
end

local function value(v)  -- JSON null is a sentinel; nil here
  if v == json.null then return nil end
  return v
end

--- rl.recipe.checkpoint_model(path) -> {dir=, base=, lora=, steps=}: what a
-- checkpoint or run directory (its newest complete checkpoint) holds: the engine's
-- save directory, the base model it was trained from, its LoRA setting.
function M.checkpoint_model(path)
  local dir = checkpoint.find(path)
  local meta = read_json(dir .. "/engine.json")
  if not meta then config_error("checkpoint %s has no readable engine.json", dir) end
  return {dir = dir, base = value(meta.base_model) or value(meta.path),
          lora = value(meta.lora), steps = value(meta.steps)}
end

-- A run directory's final export (run/model/, written by rl.recipe.export) when it is
-- as new as the run's newest checkpoint.
local function run_export(path, ck)
  local ex = read_json(path .. "/model/rlhost-export.json")
  if ex and M.is_model_dir(path .. "/model") and value(ex.steps) == ck.steps then
    return path .. "/model"
  end
  return nil
end

--- rl.recipe.start(cfg, run_dir) -> {path=, checkpoint=, lora=}: the model a run starts
-- from. Without init: cfg.model (default builtin:tiny). With init = a Hugging Face
-- directory: that directory. With init = a run or checkpoint directory: the model it
-- holds, so model= need not be repeated: its final export (run/model/), a full
-- checkpoint's hf/ directory, or, for a LoRA checkpoint, the base with the adapter
-- merged in (written once to run_dir/init-model/). Builtin checkpoints give
-- {path = base, checkpoint = dir, lora = its lora}: restore_into copies the weights.
function M.start(cfg, run_dir)
  if not cfg.init then return {path = cfg.model or "builtin:tiny"} end
  local init = cfg.init
  if M.is_model_dir(init) then return {path = init} end
  local ck = M.checkpoint_model(init)
  if not ck.base then config_error("checkpoint %s does not record its base model", ck.dir) end
  if cfg.model and cfg.model ~= ck.base and ck.base:sub(-#cfg.model - 1) ~= "/" .. cfg.model then
    note(("init=%s was trained from %s; model=%s is not used"):format(init, ck.base, cfg.model))
  end
  local export = run_export(init, ck)
  if export then return {path = export} end
  if ck.base:match("^builtin:") then
    return {path = ck.base, checkpoint = ck.dir, lora = ck.lora}
  end
  if not ck.lora then return {path = ck.dir .. "/hf"} end
  -- The merge is made once per run; init-model.json (written after it) says from what.
  local merged, mark_path = run_dir .. "/init-model", run_dir .. "/init-model.json"
  local mark = read_json(mark_path)
  if not (mark and mark.from == ck.dir and fs.stat(merged .. "/config.json")) then
    note(("merging the LoRA adapter of %s into %s for init"):format(ck.dir, ck.base))
    fs.mkdir(run_dir)
    local from <close> = rl_model(M.model_options(cfg, {path = ck.base, lora = ck.lora}))
    from:restore(ck.dir)
    from:save{dir = merged, merged = true}
    fs.write(mark_path, json.encode{from = ck.dir} .. "\n")
  end
  return {path = merged}
end

--- For a start with a checkpoint (builtin models): a handle that holds the checkpoint's
-- weights, synced into `policy` (weights only: the policy's optimizer starts fresh).
-- Returns that handle (the recipe may keep it as a KL reference) or nil.
function M.restore_into(cfg, start, policy)
  if not start.checkpoint then return nil end
  local from = rl_model(M.model_options(cfg, {path = start.path, lora = start.lora}))
  from:restore(start.checkpoint)
  from:sync(policy)
  return from
end

--- rl.recipe.open(cfg, path) -> handle: a model to evaluate: a Hugging Face directory,
-- a short name or builtin: as it is, or a run/checkpoint directory's weights (loaded
-- on the base it records, with its LoRA setting).
function M.open(cfg, path, extra)
  local st = fs.stat(path)
  local ck = st and st.type == "dir" and not M.is_model_dir(path) and M.checkpoint_model(path)
  local o = M.model_options(cfg, ck and {path = ck.base, lora = ck.lora} or {path = path})
  for k, v in pairs(extra or {}) do o[k] = v end
  local m = rl_model(o)
  if ck then m:restore(ck.dir) end
  return m
end

--- rl.recipe.export(policy, run_dir) -> dir: the final model as run_dir/model/ (for a
-- Hugging Face model a directory transformers, vLLM and peft-free code load, with any
-- LoRA adapter merged in), and one line saying where it is.
function M.export(policy, run_dir)
  local dir = run_dir .. "/model"
  policy:save{dir = dir, merged = true}
  if fs.stat(dir .. "/config.json") then
    note(("final model in %s (a Hugging Face directory: AutoModelForCausalLM."
          .. "from_pretrained, vLLM, or model=%s)"):format(dir, dir))
  else
    note(("final model in %s (builtin model weights; init=%s starts another recipe "
          .. "from this run)"):format(dir, run_dir))
  end
  return dir
end

--- The settings a recipe that runs other recipes passes on (those set on its command
-- line), as key=value strings.
function M.forward(cfg)
  local out = {}
  local keys = {"model", "precision", "device", "lora_r", "lora_alpha", "lora_dropout",
                "lora_targets", "gradient_checkpointing", "chat", "system"}
  local set = config.resolved().overridden
  for _, k in ipairs(keys) do
    if set[k] and cfg[k] ~= nil then out[#out + 1] = k .. "=" .. tostring(cfg[k]) end
  end
  return out
end

return M
