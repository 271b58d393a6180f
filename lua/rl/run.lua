-- rl.run{dir=, resume=, checkpoint_every=, keep_last=, total=, ...} -> run: a run
-- directory with the resolved config, per-step metrics, progress, crash-safe
-- checkpoints and plots.
--
--   local run = rl.run{dir = "runs/x", resume = true, checkpoint_every = 10}
--   run:model(policy); run:dataset(data); run:state{stats = my_table}
--   for step in run:steps(cfg.steps) do
--     local samples = run:time("generate", rl.generate, policy, data:next(8), {n = 4})
--     ...
--     run:log{reward = rl.mean(rewards), loss = stats.loss}
--   end
--
-- Options:
--   dir               the run directory (created when needed)
--   resume            continue from the newest complete checkpoint, if any
--   checkpoint_every  checkpoint every k steps (besides the last step and a SIGINT)
--   keep_last         keep only the newest k usable checkpoints (default: all); one
--                     that does not verify is reported once and left alone
--   total             steps, when run:steps() is called without a number
--   allow_config_change  resume even though config.json differs (else a config
--                     error); or a list of keys that may differ, e.g. {"steps"} to
--                     extend a finished run
--   overwrite         start afresh in a directory that holds an earlier run
--   plot              write metrics.png with scripts/plot.py at the end (default true)
--   log_samples       samples per step run:log_samples keeps in samples.jsonl: the
--                     step's first k (with groups of k, the first prompt's group;
--                     default 8; 0: none, -1: all)
--   tensorboard       also write the metrics as TensorBoard events in <dir>/tensorboard/
--                     (scripts/tensorboard_export.py) at every checkpoint and at the end
--   seed              math.random is seeded with it when the run starts afresh
--                     (default: the config's `seed` if it has one, else 0), since
--                     Lua seeds it randomly and exact resume needs the same draws
--   progress          progress on stderr (default true): one updating line on a
--                     terminal, else a plain line every `progress_every` steps
--
-- Files: run.json (format version), config.json, metrics.jsonl (one JSON object
-- per step, keys sorted; wall-clock times only under "time", so runs can be
-- compared without them), samples.jsonl (run:log_samples), ckpt-<step>/ (see
-- rl.checkpoint), metrics.png, tensorboard/.
--
-- Exact resume: a checkpoint holds everything registered plus math.random's state;
-- metrics lines past the checkpoint's step are dropped on resume, so each step
-- appears once and a killed-and-resumed run writes what an uninterrupted one does.
-- A damaged line (not JSON) is not dropped silently: it moves to
-- metrics.jsonl.damaged with a warning naming its line number.
-- Registration (run:model, run:dataset, run:state) must happen before run:steps().
local batch = require "rl.batch"
local ckpt = require "rl.checkpoint"
local core = require "rl.core"
local fs = require "rl.fs"
local json = require "rl.json"
local util = require "rl.util"

local M = {}
M.FORMAT = 1
local Run = {}
Run.__index = Run

local config_error = util.config_error

local function warn(msg)
  io.stderr:write("rlhost: warning: " .. msg .. "\n")
  io.stderr:flush()
end

local function note(msg)
  io.stderr:write("rlhost: " .. msg .. "\n")
  io.stderr:flush()
end

-- Plain tables (JSON-safe copies; empty tables as objects) of the resolved config.
local function plain(v)
  if type(v) ~= "table" then return v end
  local r = {}
  for k, x in pairs(v) do r[k] = plain(x) end
  if next(r) == nil then return json.object() end
  return r
end

local function flatten(t, prefix, out)
  if type(t) ~= "table" then out[prefix] = json.encode(t); return out end
  for k, v in pairs(t) do
    local key = prefix == "" and tostring(k) or (prefix .. "." .. tostring(k))
    if type(v) == "table" and next(v) ~= nil then
      flatten(v, key, out)
    else
      out[key] = json.encode(v)
    end
  end
  return out
end

local function config_diff(old, new)
  local a, b = flatten(old, "", {}), flatten(new, "", {})
  local keys = {}
  for k in pairs(a) do keys[k] = true end
  for k in pairs(b) do keys[k] = true end
  local diffs = {}
  for _, k in ipairs(batch.sorted_keys(keys)) do
    if a[k] ~= b[k] then
      diffs[#diffs + 1] = ("%s: %s -> %s"):format(k, a[k] or "(unset)", b[k] or "(unset)")
    end
  end
  return diffs
end

-- The command-line setting that makes the recipe pass rl.run option `opt` (the
-- shipped recipes map fresh=true to overwrite, resume=true to resume), so a hint
-- names something the user can type; else the option for the recipe's author.
local SETTING_FOR = {overwrite = {"fresh", "overwrite"}, resume = {"resume"}, dir = {"dir"}}
local function how(opt, value)
  local resolved = require("rl.config").resolved()
  local cfg = resolved and resolved.config or {}
  for _, k in ipairs(SETTING_FOR[opt]) do
    local v = rawget(cfg, k)
    if v ~= nil and type(v) == type(value) then return ("%s=%s"):format(k, tostring(value)) end
  end
  return ("rl.run{%s = %s} in the recipe"):format(opt, type(value) == "string"
                                                    and ("%q"):format(value) or tostring(value))
end
M.how = how

local function has_method(obj, name)
  local ok, f = pcall(function() return obj[name] end)
  return ok and type(f) == "function"
end

function M.run(opts)
  if type(opts) ~= "table" or type(opts.dir) ~= "string" or opts.dir == "" then
    config_error("rl.run needs a table with dir = \"path\"")
  end
  for k in pairs(opts) do
    local known = {dir = 1, resume = 1, checkpoint_every = 1, keep_last = 1, total = 1,
                   allow_config_change = 1, overwrite = 1, plot = 1, progress = 1,
                   progress_every = 1, seed = 1, tensorboard = 1, log_samples = 1}
    if not known[k] then config_error("rl.run: unknown option '%s'", tostring(k)) end
  end
  local self = setmetatable({}, Run)
  self.dir = opts.dir:gsub("(.)/+$", "%1")
  -- A file or a dangling symlink where the directory should be would fail only when
  -- the first step starts, after the model loaded: say so now.
  local why = util.dir_problem(self.dir)
  if why then
    config_error("rl.run: dir must be a directory or a path that can be created; %s", why)
  end
  self.resume = opts.resume and true or false
  self.every = opts.checkpoint_every
  self.keep_last = opts.keep_last
  self.total = opts.total
  self.opts = opts
  self.step = 0
  self.parts = {models = {}, cursors = {}, tables = {}}
  self.names = {}
  self.times = {}
  self.ckpt_known = {}     -- checkpoint path -> true (usable) or why not, for prune
  self.ckpt_reported = {}  -- unusable checkpoints already reported

  -- Read-only checks first: a run directory we must not touch stays as it was.
  local runjson = ckpt.read(self.dir .. "/run.json")
  if runjson then
    local ok, rj = pcall(json.decode, runjson)
    if not ok or type(rj) ~= "table" or math.type(rj.format) ~= "integer" then
      config_error("%s/run.json is not a valid run description", self.dir)
    end
    if rj.format > M.FORMAT then
      config_error("%s was written by a newer rlhost (run format %d; this one reads up to %d)",
                   self.dir, rj.format, M.FORMAT)
    end
  end
  local resolved = require("rl.config").resolved()
  self.config = plain(resolved and resolved.config or {})
  self.seed = opts.seed
  if self.seed == nil and math.type(rawget(self.config, "seed")) == "integer" then
    self.seed = self.config.seed
  end
  self.seed = self.seed or 0
  if math.type(self.seed) ~= "integer" then config_error("rl.run: seed must be an integer") end
  self.keep_samples = opts.log_samples == nil and 8 or opts.log_samples
  if math.type(self.keep_samples) ~= "integer" or self.keep_samples < -1 then
    config_error("rl.run: log_samples must be an integer >= -1 (-1: all), got %s",
                 tostring(opts.log_samples))
  end
  -- Seeded here, not in steps(): a recipe may still seed after rl.run{} as it likes;
  -- a resumed run replaces this state with the checkpoint's.
  math.randomseed(self.seed)
  local old_text = ckpt.read(self.dir .. "/config.json")
  local has_run = old_text or fs.stat(self.dir .. "/metrics.jsonl") or #ckpt.list(self.dir) > 0
  if has_run and not self.resume and not opts.overwrite then
    config_error("%s already holds a run: run with %s to continue it or %s to start again",
                 self.dir, how("resume", true), how("overwrite", true))
  end
  if old_text and self.resume then
    local ok, old = pcall(json.decode, old_text)
    local diffs = ok and config_diff(old, self.config) or {"config.json is not valid JSON"}
    local allow = opts.allow_config_change
    if type(allow) == "table" then  -- a list of keys that may change (e.g. {"steps"})
      local may, kept, allowed = {}, {}, {}
      for _, k in ipairs(allow) do may[k] = true end
      for _, d in ipairs(diffs) do
        if may[d:match("^([^:]+):")] then allowed[#allowed + 1] = d else kept[#kept + 1] = d end
      end
      if #allowed > 0 and #kept == 0 then
        note(("config changed where allowed: %s"):format(table.concat(allowed, "; ")))
      end
      diffs, allow = kept, false
    end
    if #diffs > 0 then
      if not allow then
        config_error("%s was run with another config; resume refused: run with %s to start "
                     .. "it again, or %s for a new run beside it (a recipe lets settings change "
                     .. "on resume with rl.run{allow_config_change = {...}}):\n  %s", self.dir,
                     how("overwrite", true), how("dir", self.dir .. "-2"),
                     table.concat(diffs, "\n  "))
      end
      warn(("config changed since the run started: %s"):format(table.concat(diffs, "; ")))
    end
  end
  return self
end

-- run:state{name = table_or_object, ...}: what checkpoints save. Objects with
-- :save/:restore (models) save into a directory; objects with :state/:set_state
-- (datasets) save their cursor; plain tables are saved as JSON and restored in
-- place (fields replaced), so the recipe's references stay valid.
function Run:state(t)
  if self.started then
    error(core.error{kind = "usage", message = "run:state: register before run:steps()"}, 2)
  end
  for _, name in ipairs(batch.sorted_keys(t)) do
    local obj = t[name]
    if type(name) ~= "string" or not name:match("^[%w_][%w_%-%.]*$") or ckpt.reserved[name] then
      config_error("run:state: bad name '%s'", tostring(name))
    end
    if self.names[name] then config_error("run:state: '%s' is registered twice", name) end
    self.names[name] = true
    if has_method(obj, "save") and has_method(obj, "restore") then
      table.insert(self.parts.models, {name, obj})
    elseif has_method(obj, "state") and has_method(obj, "set_state") then
      table.insert(self.parts.cursors, {name, obj})
    elseif type(obj) == "table" then
      table.insert(self.parts.tables, {name, obj})
    else
      config_error("run:state: '%s' is a %s; register tables, models or datasets", name, type(obj))
    end
  end
  return self
end

function Run:model(m, name) return self:state{[name or "model"] = m} end
function Run:dataset(ds, name) return self:state{[name or "data"] = ds} end

-- run:time(phase, fn, ...) -> fn(...): adds the call's wall time to this step's
-- time.<phase> in metrics.
function Run:time(phase, fn, ...)
  local t0 = fs.monotonic()
  local r = table.pack(fn(...))
  self.times[phase] = (self.times[phase] or 0) + (fs.monotonic() - t0)
  return table.unpack(r, 1, r.n)
end

-- run:phase(name) -> stop(): the same, for code that is not one function call.
function Run:phase(phase)
  local t0 = fs.monotonic()
  return function()
    self.times[phase] = (self.times[phase] or 0) + (fs.monotonic() - t0)
  end
end

-- run:log{...}: fields for this step's metrics line (merged; written when the
-- step ends, with `step` and `time` added).
function Run:log(fields)
  self.pending = self.pending or {}
  for k, v in pairs(fields) do self.pending[k] = v end
end

function Run:path(name) return self.dir .. "/" .. name end

-- Numbers JSON cannot spell (NaN loss) become null rather than failing the run.
local function finite(v)
  if type(v) == "number" and (v ~= v or v == math.huge or v == -math.huge) then return json.null end
  if type(v) ~= "table" then return v end
  local r = {}
  for k, x in pairs(v) do r[k] = finite(x) end
  if json.isobject(v) then json.object(r) end
  return r
end

local function mean_of(acc)
  local out = json.object()
  for _, k in ipairs(batch.sorted_keys(acc)) do out[k] = acc[k][1] / acc[k][2] end
  return next(out) and out or nil
end

-- What TRL logs about completions: lengths, the share cut at max_tokens, tokens
-- (tokens/s goes under "time" when the step ends: wall-clock numbers stay there).
local function completion_metrics(samples)
  local n, tokens, mn, mx, clipped = 0, 0, math.huge, -math.huge, 0
  for _, s in ipairs(samples) do
    if type(s.ids) == "table" then
      local len = #s.ids
      n, tokens = n + 1, tokens + len
      mn, mx = math.min(mn, len), math.max(mx, len)
    end
    if s.finish == "length" then clipped = clipped + 1 end
  end
  local m = {clipped_ratio = #samples > 0 and clipped / #samples or nil}
  if n > 0 then
    m.completion_length = {mean = tokens / n, min = mn, max = mx}
    m.tokens = tokens
  end
  return m
end

-- Mean reward by the scorer that gave it (a fallback chain's members) and by part
-- of a weighted sum (rl.reward.mix: part1, part2, ...), and the fraction of groups
-- whose rewards all agree (no signal for group-relative advantages).
local function reward_metrics(rewards, info, n, group)
  local by, parts = {}, {}
  for i = 1, n do
    local inf, r = info[i], rewards[i]
    if type(inf) == "table" then
      if r ~= nil and type(inf.source) == "string" then
        local b = by[inf.source] or {0, 0}
        b[1], b[2] = b[1] + r, b[2] + 1
        by[inf.source] = b
      end
      for k, v in pairs(type(inf.parts) == "table" and inf.parts or {}) do
        local key = "part" .. tostring(k)
        local b = parts[key] or {0, 0}
        b[1], b[2] = b[1] + v, b[2] + 1
        parts[key] = b
      end
    end
  end
  local m = {reward_by_source = mean_of(by), reward_parts = mean_of(parts)}
  if group and group > 1 and n >= group and n % group == 0 then
    local zero = 0
    for g = 0, n // group - 1 do
      local first, same = nil, true
      for i = g * group + 1, (g + 1) * group do
        local r = rewards[i]
        if r ~= nil then
          if first == nil then first = r elseif r ~= first then same = false end
        end
      end
      if same then zero = zero + 1 end
    end
    m.frac_reward_zero_std = zero / (n // group)
  end
  return m
end

-- run:log_samples(samples, {rewards=, info=, advantages=, group=}): this step's
-- completion and reward metrics (completion_length{mean,min,max}, clipped_ratio,
-- tokens and time.tokens_per_s over the step's generate phase, reward_by_source,
-- reward_parts, frac_reward_zero_std) into the metrics line, and up to `log_samples` of the samples into samples.jsonl, one
-- JSON object each: step, prompt, completion (the generated text), reference,
-- reward, reward_source, reason, advantage, version, finish, length (tokens),
-- source (the generator), group, off_policy. Written when the step ends, so a
-- resumed run keeps each step's samples once.
function Run:log_samples(samples, o)
  o = o or {}
  local rewards, info, adv = o.rewards or {}, o.info or {}, o.advantages or {}
  local m = completion_metrics(samples)
  self.step_tokens = (self.step_tokens or 0) + (m.tokens or 0)
  self:log(m)
  self:log(reward_metrics(rewards, info, #samples, o.group))
  local keep = self.keep_samples < 0 and #samples or math.min(self.keep_samples, #samples)
  self.pending_samples = self.pending_samples or {}
  for i = 1, keep do
    local s, inf = samples[i], info[i] or {}
    self.pending_samples[#self.pending_samples + 1] = {
      prompt = s.prompt, completion = s.text, reference = s.reference, reward = rewards[i],
      reward_source = inf.source, reason = inf.reason or inf.message, advantage = adv[i],
      version = s.version, finish = s.finish, length = type(s.ids) == "table" and #s.ids or nil,
      source = s.source, group = s.group, off_policy = s.off_policy}
  end
end

function Run:_write_samples(step)
  local list = self.pending_samples
  self.pending_samples = nil
  if not list or #list == 0 then return end
  if not self.samples_file then
    self.samples_file = assert(io.open(self:path("samples.jsonl"), "ab"))
  end
  for _, rec in ipairs(list) do
    rec = finite(rec)
    rec.step = step
    self.samples_file:write(json.encode(rec, {sort_keys = true, replace_invalid_utf8 = true}), "\n")
  end
  self.samples_file:flush()
end

-- Line numbers as "3" or "2, 5 and 9" (the first ten, then a count).
local function line_list(ns)
  local shown = {}
  for i = 1, math.min(#ns, 10) do shown[i] = tostring(ns[i]) end
  local s = table.concat(shown, ", ")
  if #ns > 10 then return s .. (" and %d more"):format(#ns - 10) end
  return (s:gsub(", (%d+)$", " and %1"))
end

-- On resume, metrics.jsonl keeps the lines of steps up to the checkpoint's. A last
-- line without "\n" was cut short by the process dying mid-write (its step comes
-- after the checkpoint, which is taken only once the line is on disk) and is dropped.
-- Any other line that is not a JSON object with an integer step is damage (a bad
-- disk, a hand edit): it is moved, as it was, to metrics.jsonl.damaged (appended;
-- written before metrics.jsonl is rewritten, so it is never lost) and the warning
-- names its line numbers.
function Run:_truncate_metrics(upto, name)
  local path = self:path(name or "metrics.jsonl")
  local text = ckpt.read(path)
  if not text then return end
  local keep, damaged, where = {}, {}, {}
  local n = 0
  for line in text:gmatch("([^\n]*)\n") do
    n = n + 1
    local ok, rec = pcall(json.decode, line)
    if ok and type(rec) == "table" and math.type(rec.step) == "integer" then
      if rec.step <= upto then keep[#keep + 1] = line .. "\n" end
    else
      damaged[#damaged + 1] = line .. "\n"
      where[#where + 1] = n
    end
  end
  if #damaged > 0 then
    local aside = path .. ".damaged"
    fs.write(aside, (ckpt.read(aside) or "") .. table.concat(damaged))
    warn(("%s: %s %s %s damaged (not a JSON object with a step); moved to %s")
      :format(path, #where == 1 and "line" or "lines", line_list(where),
              #where == 1 and "is" or "are", aside))
  end
  local new = table.concat(keep)
  if new ~= text then fs.write(path, new) end
end

function Run:_start()
  if self.started then return end
  self.started = true
  -- Checkpoints found unusable are reported once per run: here when resuming skips
  -- them, else by the first prune that meets them.
  local found = self.resume and ckpt.latest(self.dir, function(msg, path)
    if path then self.ckpt_reported[path] = true end
    warn(msg)
  end) or nil
  if self.resume and not found and #ckpt.list(self.dir) > 0 then
    -- Starting afresh would overwrite the checkpoints and metrics a user may still
    -- recover from (a copy cut short, a hand edit): refuse, touching nothing.
    config_error("%s holds checkpoints but none is usable (see the warnings above); resume "
                 .. "refused: move them away, or run with %s to start again", self.dir,
                 how("overwrite", true))
  end
  if found then
    ckpt.restore(found, self.parts, warn)  -- may raise (another model): nothing written yet
    self.step = found.step
    self.ckpt_known[found.path] = true
  end
  -- From here on the directory is ours to write, and only ours: a second process
  -- appending to the same metrics and checkpoints would corrupt both.
  fs.mkdir(self.dir)
  self.lock = fs.lock(self:path(".lock"))
  if not self.lock then
    config_error("%s is in use by another rlhost process (its .lock is held)", self.dir)
  end
  if self.opts.overwrite and not self.resume then
    for _, c in ipairs(ckpt.list(self.dir)) do fs.remove(c.path) end
    fs.remove(self:path("metrics.jsonl"))
    fs.remove(self:path("metrics.png"))
    fs.remove(self:path("samples.jsonl"))
    fs.remove(self:path("tensorboard"))
  end
  for _, name in ipairs(ckpt.clean(self.dir)) do
    warn(("removed %s/%s left by an interrupted write"):format(self.dir, name))
  end
  if not fs.stat(self:path("run.json")) then
    fs.write(self:path("run.json"), json.encode({format = M.FORMAT, rlhost = core.version},
                                                {sort_keys = true}) .. "\n")
  end
  fs.write(self:path("config.json"), json.encode(self.config, {indent = true}) .. "\n")
  self:_truncate_metrics(self.step)
  self:_truncate_metrics(self.step, "samples.jsonl")
  self.metrics = assert(io.open(self:path("metrics.jsonl"), "ab"))
  if found then
    note(("resuming %s from %s (step %d)"):format(self.dir, found.name, found.step))
  end
  self.first_step = self.step
  self.t_start = fs.monotonic()
  self.tty = fs.isatty(2)
end

local function fmt_secs(s)
  if s ~= s or s == math.huge then return "?" end
  s = math.floor(s + 0.5)
  if s < 60 then return s .. "s" end
  if s < 3600 then return ("%dm%02ds"):format(s // 60, s % 60) end
  return ("%dh%02dm"):format(s // 3600, (s % 3600) // 60)
end

local function reward_of(rec)
  local r = rec.reward
  if type(r) == "table" then r = r.mean end
  return type(r) == "number" and r or nil
end

function Run:_progress(rec, step_secs)
  if self.opts.progress == false then return end
  local n = self.total
  local done = self.step - self.first_step
  local elapsed = fs.monotonic() - self.t_start
  local eta = n and done > 0 and (n - self.step) * elapsed / done or nil
  local parts = {("step %d%s"):format(self.step, n and ("/" .. n) or ""),
                 "elapsed " .. fmt_secs(elapsed)}
  if eta then parts[#parts + 1] = "eta " .. fmt_secs(eta) end
  local r = reward_of(rec)
  if r then parts[#parts + 1] = ("reward %.4g"):format(r) end
  if type(rec.loss) == "number" then parts[#parts + 1] = ("loss %.4g"):format(rec.loss) end
  local ns = rec.samples
  if type(ns) == "number" and step_secs > 0 then
    parts[#parts + 1] = ("%.1f samples/s"):format(ns / step_secs)
  end
  local line = table.concat(parts, "  ")
  if self.tty then
    io.stderr:write("\r\27[K" .. line)
    self.open_line = true
  else
    local every = self.opts.progress_every or math.max(1, (n or 10) // 10)
    if self.step == self.first_step + 1 or self.step == n or self.step % every == 0 then
      io.stderr:write(line .. "\n")
    end
  end
  io.stderr:flush()
end

function Run:_end_line()
  if self.open_line then io.stderr:write("\n"); self.open_line = false end
end

-- checkpoint now (normally the step loop does it).
function Run:checkpoint()
  if self.metrics then
    self.metrics:flush()
    fs.fsync(self:path("metrics.jsonl"))
  end
  if self.samples_file then
    self.samples_file:flush()
    fs.fsync(self:path("samples.jsonl"))
  end
  local t0 = fs.monotonic()
  if self.ckpt_bytes then
    local ok, free = pcall(fs.free_space, self.dir)
    if ok and free < self.ckpt_bytes * 1.1 then
      warn(("%s has %d MiB free; the last checkpoint took %d MiB")
        :format(self.dir, free >> 20, self.ckpt_bytes >> 20))
    end
  end
  local final = ("%s/ckpt-%d"):format(self.dir, self.step)
  if self.ckpt_known[final] ~= true and fs.stat(final) then
    -- not one this run wrote and newer than the one it resumed from: it did not verify
    warn(("replacing %s, which is not usable, with this step's checkpoint"):format(final))
  end
  local path, bytes = ckpt.write(self.dir, self.step, self.parts)
  self.ckpt_bytes = bytes
  self.last_ckpt = self.step
  -- A checkpoint happens after its step's metrics line: its time shows in the
  -- next step's time.checkpoint.
  self.ckpt_secs = (self.ckpt_secs or 0) + (fs.monotonic() - t0)
  self.ckpt_known[path] = true
  local _, unusable = ckpt.prune(self.dir, self.keep_last, self.ckpt_known)
  for _, u in ipairs(unusable) do
    if not self.ckpt_reported[u.path] then
      self.ckpt_reported[u.path] = true
      warn(("checkpoint %s is not usable (%s); left in place, not counted toward keep_last")
        :format(u.path, u.why))
    end
  end
  self:_tensorboard()
  return path
end

-- TensorBoard events for the steps logged so far (a failure is a note: the metrics
-- are safe in metrics.jsonl, and the export can be rerun by hand).
function Run:_tensorboard()
  if not self.opts.tensorboard then return end
  local ok, why = M.python_tool("tensorboard_export.py", {self.dir})
  if not ok and not self.tb_warned then
    self.tb_warned = true
    warn("TensorBoard events not written: " .. why)
  end
end

function Run:_end_step()
  local k = self.step
  local rec = self.pending or {}
  self.pending = nil
  local step_secs = fs.monotonic() - self.t_step
  local times = {}
  for ph, v in pairs(self.times) do times[ph] = v end
  if self.ckpt_secs then times.checkpoint, self.ckpt_secs = self.ckpt_secs, nil end
  times.step = step_secs
  if self.step_tokens and (times.generate or 0) > 0 then
    times.tokens_per_s = self.step_tokens / times.generate
  end
  self.step_tokens = nil
  times.elapsed = fs.monotonic() - self.t_start
  self.times = {}
  rec = finite(rec)
  rec.step = k
  rec.time = times
  self.metrics:write(json.encode(rec, {sort_keys = true}), "\n")
  self.metrics:flush()
  self:_write_samples(k)
  local interrupted = core.interrupted()
  local due = (self.every and self.every > 0 and k % self.every == 0) or k == self.total
              or interrupted
  if due then self:checkpoint() end
  self:_progress(rec, step_secs)
  if interrupted and k ~= self.total then  -- on the last step the run is complete anyway
    self:_end_line()
    error(core.error{kind = "interrupted", where = "rlhost: ",
                     message = ("interrupted after step %d; checkpoint %s/ckpt-%d written "
                                .. "(run again with %s to continue)")
                       :format(k, self.dir, k, how("resume", true))}, 0)
  end
end

function Run:_finish()
  if self.finished then return end
  self.finished = true
  self:_end_line()
  if self.metrics then self.metrics:close(); self.metrics = nil end
  if self.samples_file then self.samples_file:close(); self.samples_file = nil end
  if self.last_ckpt ~= self.step then self:_tensorboard() end
  if self.opts.plot ~= false then self:plot() end
  if self.lock then self.lock:release(); self.lock = nil end
  if self.opts.progress ~= false then
    note(("run %s: %d steps done; metrics in %s"):format(self.dir, self.step,
                                                          self:path("metrics.jsonl")))
  end
end

-- Run scripts/<script> with the project's .venv Python. Returns true, or false
-- with a one-line reason (no Python, a missing package, a failure): plots and
-- exports are a convenience, never a reason to fail a run.
function M.python_tool(name, args)
  local home = core.home or "."
  local venv = os.getenv("RLHOST_VENV")
  if not venv then
    venv = home .. "/.venv"
    if not fs.stat(venv .. "/bin/python") then
      local f = ckpt.read(home .. "/venv")
      if f then venv = f:gsub("%s+$", "") end
    end
  end
  local py, script = venv .. "/bin/python", home .. "/scripts/" .. name
  if not fs.stat(py) then return false, "no " .. py end
  if not fs.stat(script) then return false, "no " .. script end
  local q = function(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
  local cmd = {q(py), q(script)}
  for _, a in ipairs(args) do cmd[#cmd + 1] = q(a) end
  local p = io.popen(table.concat(cmd, " ") .. " 2>&1")
  local out = p:read("a")
  local ok = p:close()
  if not ok then return false, out:match("([^\n]+)\n?$") or (name .. " failed") end
  return true
end

function M.plot(args) return M.python_tool("plot.py", args) end

-- Write metrics.png (a missing Python or matplotlib is a note, not a failure).
function Run:plot()
  local ok, why = M.plot({self.dir})
  if not ok then note("plots skipped: " .. why) end
  return ok
end

-- for step in run:steps(n): steps after the resumed one up to n. Ending a step
-- writes its metrics line, checkpoints when due, and stops with an "interrupted"
-- error after a checkpoint if SIGINT arrived. A `break` ends the step normally.
function Run:steps(n)
  n = n or self.total
  if n ~= nil and (math.type(n) ~= "integer" or n < 0) then
    config_error("run:steps: the number of steps must be an integer >= 0, got %s", tostring(n))
  end
  self.total = n
  self:_start()
  local run = self
  local in_step = false
  local function iter()
    if in_step then
      in_step = false
      run:_end_step()
    end
    if n and run.step >= n then
      run:_finish()
      return nil
    end
    run.step = run.step + 1
    run.times = {}
    run.t_step = fs.monotonic()
    in_step = true
    return run.step
  end
  local closing = setmetatable({}, {__close = function(_, err)
    if err ~= nil or run.finished then return end
    if in_step then  -- left by `break`: the step's work is done
      in_step = false
      run:_end_step()
      if run.last_ckpt ~= run.step then run:checkpoint() end
    end
    run:_finish()
  end})
  return iter, nil, nil, closing
end

return M
