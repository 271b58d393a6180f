-- rl.reward.*: native reward scorers (the matching is C: host/rewards.c, the code
-- sandbox host/sandbox.c) and rl.reward.mix. Each constructor returns an object with
-- :score(samples, opts) -> rewards, info for rl.score.
--
--   exact{expected=, ignore_case=false, strip=true}  1 if the completion equals the
--                                                expected answer (default:
--                                                sample.reference or sample.answer);
--                                                strip trims and collapses whitespace
--   contains{any={..}} | {all={..}} | {fraction={..}}, ignore_case=false
--   regex{pattern=, ignore_case=false}            POSIX extended; 1 on a match
--   length{target=, unit="chars"|"words"|"tokens", tolerance=0, scale=target,
--          shape="linear"|"quadratic"|"gaussian"|"step", side="both"|"max"|"min"}
--   json{required={..}}                           valid JSON (and keys)
--   run{lang="python"|"bash"|"c", check="syntax"|"tests", tests={{stdin=, stdout=}},
--       cpu=, mem_mb=, fsize_mb=, disk_mb=, nproc=, timeout=, max_output=,
--       require_isolation=}
--     runs the completion's code (its first ``` block, else the whole text) in the
--     sandbox: syntax -> 1/0; tests -> fraction passed (a test without stdout passes
--     when the program exits 0). info[i].reason is the sandbox's typed reason for the
--     first failure ("exit", "timeout", "cpu", "memory", "file_size", "disk", "output",
--     "signal"), info[i].isolated whether namespaces applied, info[i].no_sockets
--     whether the socket filter did, info[i].disk_capped whether disk_mb bounds every
--     place it could write (see host/sandbox.h for what happens where they cannot).
--   mix{{scorer, weight}, ..., missing="nil"|"renormalize"}
--   native(name, opts)                             the constructor by name
local core = require "rl.core"
local R = require "rl.rewards"

local M = {}

local Native = {}
Native.__index = Native

local function config_error(fmt, ...)
  error(core.error { kind = "config", message = fmt:format(...) }, 3)
end

local function native(name, fn)
  return setmetatable({ name = name, source = "native:" .. name, fn = fn }, Native)
end

function Native:score(samples)
  local rewards, info = {}, {}
  for i, s in ipairs(samples) do
    local r, why, extra = self.fn(s)
    if r == nil then
      info[i] = { status = "error", kind = why and why.kind or "value",
                  message = why and why.message or "no reward", source = self.source }
    else
      rewards[i] = r
      info[i] = { status = "ok", source = self.source, reason = why }
      if extra then for k, v in pairs(extra) do info[i][k] = v end end
    end
  end
  return rewards, info
end

function Native:__tostring() return "rl.reward." .. self.name end

local function expected_of(opts)
  local e = opts.expected
  if type(e) == "function" then return e end
  if type(e) == "string" then return function() return e end end
  return function(s) return s.reference or s.answer end
end

local function text_of(s) return type(s) == "table" and s.text or tostring(s) end

function M.exact(opts)
  opts = opts or {}
  local exp = expected_of(opts)
  return native("exact", function(s)
    local e = exp(s)
    if e == nil then return nil, { kind = "value", message = "no expected answer (sample.reference)" } end
    return R.exact(text_of(s), tostring(e), opts)
  end)
end

function M.contains(opts)
  opts = opts or {}
  local mode, list = "any", opts.any
  if opts.all then mode, list = "all", opts.all elseif opts.fraction then mode, list = "fraction", opts.fraction end
  if type(list) == "string" then list = { list } end
  if type(list) ~= "table" or #list == 0 then
    config_error("rl.reward.contains: give any={...}, all={...} or fraction={...}")
  end
  return native("contains", function(s)
    local c = R.contains_count(text_of(s), list, opts)
    if mode == "any" then return c > 0 and 1 or 0 end
    if mode == "all" then return c == #list and 1 or 0 end
    return c / #list
  end)
end

function M.regex(opts)
  if type(opts) == "string" then opts = { pattern = opts } end
  if type(opts) ~= "table" or type(opts.pattern) ~= "string" then
    config_error("rl.reward.regex: 'pattern' (a POSIX extended regular expression) is required")
  end
  local re = R.regex(opts.pattern, opts)
  return native("regex", function(s) return re:match(text_of(s)) and 1 or 0 end)
end

function M.length(opts)
  opts = opts or {}
  if type(opts.target) ~= "number" then config_error("rl.reward.length: 'target' is required") end
  local unit = opts.unit or "chars"
  local p = { target = opts.target, tolerance = opts.tolerance or 0,
              scale = opts.scale or math.max(opts.target, 1), shape = opts.shape, side = opts.side }
  return native("length", function(s)
    local n
    if unit == "tokens" then
      if type(s.ids) ~= "table" then return nil, { kind = "value", message = "sample has no token ids" } end
      n = #s.ids
    else
      n = R.count(text_of(s), unit)
    end
    return R.length(n, p), nil, { length = n }
  end)
end

function M.json(opts)
  opts = opts or {}
  return native("json", function(s)
    local r, why = R.json(text_of(s), opts.required)
    return r, why
  end)
end

local function extract_code(text)
  local body = text:match("```[%w_+-]*[ \t]*\n(.-)\n?```")
  return body or text
end

local function python_path()
  local f = io.open("/usr/bin/python3", "rb")
  if f then f:close() return "/usr/bin/python3" end
  return (core.home or ".") .. "/.venv/bin/python"
end

local LANG = {
  python = { file = "main.py", syntax = function(py) return { py, "-m", "py_compile", "main.py" } end,
             run = function(py) return { py, "main.py" } end },
  bash = { file = "main.sh", syntax = function() return { "bash", "-n", "main.sh" } end,
           run = function() return { "bash", "main.sh" } end },
  c = { file = "main.c", syntax = function() return { "cc", "-fsyntax-only", "main.c" } end,
        run = function() return { "sh", "-c", "cc -O0 -o prog main.c && exec ./prog" } end },
}

-- What info[i] reports about a sandbox run r (nil when no test ran), added to t.
local function run_info(r, t)
  if r then
    t.isolated, t.no_sockets, t.disk_capped = r.isolated, r.no_sockets, r.disk_capped
    t.stderr, t.wall_ms = r.stderr:sub(1, 500), r.wall_ms
  end
  return t
end

function M.run(opts)
  opts = opts or {}
  local lang = LANG[opts.lang or "python"]
  if not lang then config_error("rl.reward.run: 'lang' must be python, bash or c") end
  local check = opts.check or (opts.tests and "tests" or "syntax")
  if check ~= "syntax" and check ~= "tests" then config_error("rl.reward.run: 'check' must be syntax or tests") end
  local py = python_path()
  local limits = { cpu = opts.cpu, mem_mb = opts.mem_mb, fsize_mb = opts.fsize_mb, disk_mb = opts.disk_mb,
                   nproc = opts.nproc, timeout = opts.timeout, max_output = opts.max_output,
                   require_isolation = opts.require_isolation }
  local tests = opts.tests or { {} }
  return native("run", function(s)
    local code = opts.raw and text_of(s) or extract_code(text_of(s))
    local files = { [lang.file] = code }
    if check == "syntax" then
      local r = R.run(lang.syntax(py), files, "", limits)
      if r.reason == "setup" then return nil, { kind = "internal", message = r.detail } end
      return r.reason == "ok" and 1 or 0, r.reason, run_info(r, { detail = r.detail })
    end
    local passed, first, last = 0, nil, nil
    for _, t in ipairs(tests) do
      local r = R.run(lang.run(py), files, t.stdin or "", limits)
      last = r
      if r.reason == "setup" then return nil, { kind = "internal", message = r.detail } end
      local ok = r.reason == "ok"
      if ok and t.stdout then
        ok = R.exact(r.stdout, t.stdout, { strip = true })
        if ok == 0 then ok = false end
        if not ok and not first then first = { reason = "wrong_output", detail = "output differs", r = r } end
      end
      if ok then passed = passed + 1
      elseif not first then first = { reason = r.reason, detail = r.detail, r = r } end
    end
    local r = first and first.r or last
    return passed / #tests, first and first.reason or "ok",
           run_info(r, { passed = passed, total = #tests, detail = first and first.detail })
  end)
end

local Mix = {}
Mix.__index = Mix

function M.mix(parts)
  if type(parts) ~= "table" or #parts == 0 then config_error("rl.reward.mix{{scorer, weight}, ...}: no parts") end
  local list = {}
  for i, p in ipairs(parts) do
    local sc, w = p[1] or p.scorer, p[2] or p.weight or 1
    if sc == nil or type(w) ~= "number" then config_error("rl.reward.mix: part %d must be {scorer, weight}", i) end
    if not (w > -math.huge and w < math.huge) then
      config_error("rl.reward.mix: part %d's weight must be a finite number, got %s", i, tostring(w))
    end
    list[i] = { scorer = sc, weight = w }
  end
  return setmetatable({ parts = list, missing = parts.missing or "nil" }, Mix)
end

function Mix:score(samples, opts)
  local S = require "rl.score"
  local per = {}
  local summary = S.add_summary({}, nil)
  for k, p in ipairs(self.parts) do
    local o = {}
    for kk, v in pairs(opts or {}) do o[kk] = v end
    o.raise = nil
    local r, inf = S.score(p.scorer, samples, o)
    per[k] = { r = r, info = inf }
    S.add_summary(summary, inf.summary)
  end
  local rewards, info = {}, {}
  for i = 1, #samples do
    local sum, wsum, missing, parts = 0, 0, nil, {}
    for k, p in ipairs(self.parts) do
      local r = per[k].r[i]
      parts[k] = r
      if r == nil then missing = missing or per[k].info[i]
      else sum, wsum = sum + p.weight * r, wsum + p.weight end
    end
    if missing and (self.missing ~= "renormalize" or wsum == 0) then
      info[i] = { status = "error", kind = missing.kind, message = missing.message, source = "mix",
                  parts = parts }
    else
      local total = 0
      for _, p in ipairs(self.parts) do total = total + p.weight end
      rewards[i] = missing and sum / wsum * total or sum
      info[i] = { status = "ok", source = "mix", parts = parts, partial = missing and true or nil }
    end
  end
  info.summary = summary
  return rewards, info
end

function M.native(name, opts)
  local ctor = ({ exact = M.exact, contains = M.contains, regex = M.regex, length = M.length,
                  json = M.json, run = M.run })[name]
  if not ctor then
    config_error("rl.reward.native: unknown reward '%s' (exact, contains, regex, length, json, run)",
                 tostring(name))
  end
  return ctor(opts)
end

return M
