-- rl.help: `rlhost RECIPE --help` (also -h, help, and `rlhost --help RECIPE`): the
-- recipe's header comment and every setting of its rl.config{} with type, default
-- and the comment beside it, printed without running the recipe past rl.config;
-- and the names TRL users type (learning_rate, num_generations, ...) mapped to
-- rlhost's in "unknown setting" errors.
--
--   help.main(path) -> exit status    -- called by the host (host/main.c)
--   help.alias(key, known) -> hint or nil
local M = {}

-- TRL (and transformers' TrainingArguments) names -> the rlhost settings that do the
-- same, first one present in the recipe wins; `note` says what differs.
M.ALIASES = {
  learning_rate = {"lr"},
  num_generations = {"group"},
  max_steps = {"steps"},
  num_train_epochs = {"steps", note = "rlhost counts optimizer steps, not epochs"},
  max_completion_length = {"max_tokens"},
  max_new_tokens = {"max_tokens"},
  beta = {"kl"},
  kl_coef = {"kl"},
  per_device_train_batch_size = {"micro_batch", note = "samples per forward/backward"},
  gradient_accumulation_steps = {"batch", "prompts", note =
    "rlhost takes the batch per optimizer step and micro_batch=; accumulation follows"},
  warmup_steps = {"warmup"},
  max_grad_norm = {"clip"},
  lr_scheduler_type = {"schedule"},
  output_dir = {"dir"},
  model_name_or_path = {"model"},
  dataset_name = {"data"},
  train_file = {"data"},
  eval_steps = {"eval_every"},
  save_steps = {"checkpoint_every"},
  save_total_limit = {"keep_last"},
  num_iterations = {"epochs"},
  epsilon = {"clip_low"},
  epsilon_high = {"clip_high"},
  scale_rewards = {"normalize"},
  report_to = {"tensorboard"},
  logging_dir = {"dir"},
  resume_from_checkpoint = {"resume", "init"},
  temperature = {"temperature"},
}

-- alias(key, known) -> " (TRL's 'learning_rate' is 'lr' here)" or nil when the key
-- is not a name rlhost knows from TRL.
function M.alias(key, known)
  local a = M.ALIASES[key]
  if not a then return nil end
  for _, name in ipairs(a) do
    if known[name] ~= nil then
      return (" (TRL's '%s' is '%s' here%s)"):format(key, name, a.note and ("; " .. a.note) or "")
    end
  end
  if a[1] == key then
    return (" (this recipe has no '%s' setting; see its --help)"):format(key)
  end
  return (" (TRL's '%s' is '%s' in rlhost, but this recipe has no such setting; "
          .. "see its --help)"):format(key, a[1])
end

local HELP_WORDS = {["--help"] = true, ["-h"] = true, help = true}
M.HELP_WORDS = HELP_WORDS

-- The comment block at the top of the file, without the comment marks.
local function header(lines)
  local out = {}
  for _, line in ipairs(lines) do
    local text = line:match("^%-%-+ ?(.*)$")
    if not text then break end
    out[#out + 1] = text
  end
  return out
end

-- key -> comment from the rl.config{...} block's lines ("key = value, -- comment"),
-- with comment-only lines that follow a setting joined to its comment; and the keys
-- in the order the block lists them.
local function comments(lines, anchor)
  anchor = anchor or "config%s*[{(]"
  local first
  for i, line in ipairs(lines) do
    if line:match(anchor) and not line:match("^%s*%-%-") then first = i; break end
  end
  local notes, order = {}, {}
  if not first then return notes, order end
  -- base: the depth of the settings table's own keys (rl.config{ is 1,
  -- rl.config(rl.recipe.settings { is 2)
  local depth, base, last = 0, nil, nil  -- last: the keys of the previous setting line
  for i = first, #lines do
    local line = lines[i]
    local code, comment = line:match("^(.-)%-%-%s?(.*)$")
    code = code or line
    if depth == base or i == first then
      local start = i == first and (code:match("{()", code:find(anchor) or 1) or #code + 1) or 1
      -- the line's own settings: nested tables and calls (rl.setting{...}) flattened
      local flat = code:sub(start):gsub("%b{}", "{}"):gsub("%b()", "()")
      local keys = {}
      for key in ("," .. flat):gmatch(",%s*([%a_][%w_]*)%s*=") do keys[#keys + 1] = key end
      local c = comment and comment:gsub("%s+$", "")
      if #keys > 0 then
        local env = code:match("os%.getenv%s*%(?%s*[\"']([%w_]+)")
        for _, key in ipairs(keys) do
          order[#order + 1] = key
          notes[key] = env and ("(from $%s) %s"):format(env, c or "") or c
        end
        last = keys
      elseif c and code:match("^%s*$") and last then
        -- a comment line under a setting continues (or is) its comment
        for _, key in ipairs(last) do notes[key] = notes[key] and (notes[key] .. " " .. c) or c end
      else
        last = nil
      end
    end
    local from = i == first and (code:find(anchor) or 1) or 1
    for c in code:sub(from):gmatch("[{}()]") do
      depth = depth + ((c == "{" or c == "(") and 1 or -1)
    end
    base = base or depth
    if depth <= 0 or depth < base then break end
  end
  return notes, order
end

local function typename(v)
  if math.type(v) then return math.type(v) end
  return type(v)
end

-- type, default text of a declared setting: a plain default, rl.optional(type
-- [, default]) or a declaration table with type=/default=/help= fields.
-- The rules of an rl.setting declaration in a few words: ">= 1", "one of pg, ppo".
local function rules(v)
  local out = {}
  for _, r in ipairs{{"min", ">="}, {"above", ">"}, {"max", "<="}, {"below", "<"}} do
    local x = rawget(v, r[1])
    if x ~= nil then out[#out + 1] = r[2] .. " " .. tostring(x) end
  end
  local choices = rawget(v, "choices")
  if type(choices) == "table" then
    local names = {}
    for i, c in ipairs(choices) do names[i] = tostring(c) end
    out[#out + 1] = (rawget(v, "list") and "list of " or "one of ") .. table.concat(names, ", ")
  end
  for _, k in ipairs{"file", "dir", "exists"} do
    if rawget(v, k) then out[#out + 1] = "a " .. (k == "exists" and "path" or k) end
  end
  return #out > 0 and (", " .. table.concat(out, ", ")) or ""
end

local function describe(v)
  if type(v) == "table" then
    local t = rawget(v, "type")
    local d = rawget(v, "default")
    local shown = d == nil and "(unset)" or (type(d) == "string" and ("%q"):format(d) or tostring(d))
    local help = rawget(v, "help")
    local env = rawget(v, "env")
    if type(env) == "string" then help = ("(from $%s) %s"):format(env, help or "") end
    if type(t) == "string" then return t .. rules(v), shown, help end
    return "table", "{...}", help
  end
  if type(v) == "string" then return "string", ("%q"):format(v) end
  return typename(v), tostring(v)
end

local function read_lines(path)
  local f, err = io.open(path, "r")
  if not f then return nil, err end
  local lines = {}
  for line in f:lines() do lines[#lines + 1] = line end
  f:close()
  return lines
end

-- text(path, lines, defaults) -> the help text.
function M.text(path, lines, defaults)
  local out = {}
  for _, h in ipairs(header(lines)) do out[#out + 1] = h end
  if #out > 0 then out[#out + 1] = "" end
  if not defaults then
    out[#out + 1] = ("%s has no rl.config{} settings to list."):format(path)
    return table.concat(out, "\n") .. "\n"
  end
  local notes, order = comments(lines)
  local seen, keys = {}, {}
  for _, k in ipairs(order) do
    if defaults[k] ~= nil and not seen[k] then seen[k] = true; keys[#keys + 1] = k end
  end
  local rest = {}
  for k in pairs(defaults) do
    if type(k) == "string" and not seen[k] then rest[#rest + 1] = k end
  end
  table.sort(rest)
  -- Settings the recipe did not write itself: rl.recipe.settings' shared model ones
  -- (their comments are in lua/rl/recipe.lua) or computed keys.
  local shared_file = package.searchpath("rl.recipe", package.path)
  local shared_lines = shared_file and read_lines(shared_file)
  local shared_notes, shared_order = {}, {}
  if shared_lines then shared_notes, shared_order = comments(shared_lines, "shared%s*=%s*{") end
  local in_shared = {}
  for _, k in ipairs(shared_order) do in_shared[k] = true end
  local heading_at
  for _, k in ipairs(rest) do
    if in_shared[k] then heading_at = heading_at or #keys + 1; notes[k] = shared_notes[k] end
    keys[#keys + 1] = k
  end
  out[#out + 1] = "settings (set any with key=value after the recipe):"
  local rows, w1, w2 = {}, 0, 0
  for _, k in ipairs(keys) do
    local typ, default, help = describe(defaults[k])
    rows[#rows + 1] = {k .. " (" .. typ .. ")", default, help or notes[k] or ""}
    w1 = math.max(w1, math.min(#rows[#rows][1], 30))
    w2 = math.max(w2, math.min(#default, 22))
  end
  for i, r in ipairs(rows) do
    if i == heading_at then
      out[#out + 1] = "model settings (shared by the recipes: lua/rl/recipe.lua):"
    end
    local line = ("  %-" .. w1 .. "s  %-" .. w2 .. "s  %s"):format(r[1], r[2], r[3])
    out[#out + 1] = (line:gsub("%s+$", ""))
  end
  return table.concat(out, "\n") .. "\n"
end


local STOP = {}  -- the error value that ends the recipe at rl.config

-- main(path) -> exit status: run the recipe until it calls rl.config (which prints
-- the help and stops it there), with every primitive that acts on the world (a
-- run directory, a model, a dataset, an endpoint) stopping it instead: nothing
-- is written, loaded or sent, whatever the recipe does before rl.config.
function M.main(path)
  local lines, err = read_lines(path)
  if not lines then
    io.stderr:write(("rlhost: cannot read recipe %s: %s\n"):format(path, err))
    return 2
  end
  local rl = require "rl"
  local saved, defaults = {}, nil
  local function stop_at(name)
    return function() error(setmetatable({at = name}, STOP), 0) end
  end
  local guarded = {"run", "model", "dataset", "endpoint", "judge", "generate", "score",
                   "prompts", "cache"}
  for _, name in ipairs(guarded) do saved[name] = rl[name]; rawset(rl, name, stop_at(name)) end
  saved.config = rl.config
  rawset(rl, "config", function(d)
    defaults = d
    error(setmetatable({at = "config"}, STOP), 0)
  end)
  local chunk, lerr = loadfile(path)
  local ok, e = true, nil
  if chunk then ok, e = pcall(chunk) else ok, e = false, lerr end
  for name, f in pairs(saved) do rawset(rl, name, f) end
  if not ok and getmetatable(e) ~= STOP then
    io.stderr:write(("rlhost: %s\n"):format(tostring(e)))
    return 2
  end
  io.stdout:write(M.text(path, lines, defaults))
  if not defaults and e and e.at then
    io.stdout:write(("(it calls rl.%s before any rl.config, so its settings are not known)\n")
                    :format(e.at))
  end
  io.stdout:flush()
  return 0
end

return M
