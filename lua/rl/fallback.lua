-- rl.fallback{a, b, ..., on=, breaker=, name=, names=, clock=}: an ordered chain
-- usable wherever a generation source or a scorer is.
--
--   chain:generate(prompts, opts) -> samples   (members with :generate, or functions)
--   chain:score(samples, opts) -> rewards, info (scorers: functions, objects with
--                                               :score, judges, native rewards)
--
-- When a member raises an error that `on(err)` accepts, the next member is tried
-- (default: retryable errors and kinds crash, timeout, http, rate_limit; never
-- "interrupted", which always stops the run). Any other error propagates: a bug in a
-- recipe must not be hidden by a fallback. When scoring, a sample whose reward came
-- back nil (a judge that could not parse one answer) goes on to the next scorer by
-- itself.
--
-- A member that fails `breaker.failures` calls in a row (default 3) is skipped for
-- `breaker.cooldown` seconds (default 60), then tried again once (a circuit
-- breaker). If every member is open, all are tried anyway rather than failing.
--
-- Provenance: every sample gets `source` (the member's name) and `off_policy=true`
-- when it did not come from the first member (the policy); every info[i] gets
-- `source` (and `fallback=true` when not from the first scorer); info.summary totals
-- what every member called did (requests, retries, cache_hits, tokens, latency_ms:
-- see rl.score), whether it answered or raised. chain:stats()
-- returns the counts for the metrics. The breaker reads a clock, so which member
-- serves a call can depend on time: exact resume holds while no member fails.
-- Nil members (`teacher and judge`) are skipped,
-- so a chain can be written with optional parts.
local core = require "rl.core"

local M = {}
local Chain = {}
Chain.__index = Chain

local DEFAULT_KINDS = {crash = true, timeout = true, http = true, rate_limit = true}

-- The default policy: fall back on errors that a retry elsewhere may fix.
function M.default_on(err)
  if type(err) ~= "table" then return false end
  return err.retryable == true or DEFAULT_KINDS[err.kind] == true
end

local function kind_of(err)
  if type(err) == "table" and type(err.kind) == "string" then return err.kind end
  return "error"
end

local function message_of(err)
  if type(err) == "table" then return tostring(err.message or err.kind or "error") end
  return tostring(err)
end

local function member_name(m, i, names)
  if names and names[i] then return tostring(names[i]) end
  if type(m) == "table" and type(rawget(m, "name")) == "string" then return m.name end
  if type(m) == "userdata" then
    local ok, nm = pcall(function() return m.name end)
    if ok and type(nm) == "string" then return nm end
  end
  return "source" .. i
end

local function now_default()
  return require("rl.fs").monotonic()
end

function M.fallback(spec)
  if type(spec) ~= "table" then
    error(core.error{kind = "config", message = "rl.fallback expects a table {a, b, ...}"}, 2)
  end
  local maxi = 0
  for k in pairs(spec) do  -- only the largest index is kept: order does not matter
    if math.type(k) == "integer" and k > maxi then maxi = k end
  end
  local self = setmetatable({members = {}, names = {}, state = {}}, Chain)
  for i = 1, maxi do
    local m = spec[i]
    if m ~= nil and m ~= false then
      local idx = #self.members + 1
      self.members[idx] = m
      self.names[idx] = member_name(m, i, spec.names)
      self.state[idx] = {fails = 0, open_until = nil}
    end
  end
  if #self.members == 0 then
    error(core.error{kind = "config", message = "rl.fallback: no members (all were nil)"}, 2)
  end
  self.name = spec.name or "fallback"
  self.on = spec.on or M.default_on
  local br = spec.breaker or {}
  self.max_failures = br.failures or 3
  self.cooldown = br.cooldown or 60
  self.clock = spec.clock or now_default
  self.quiet = spec.quiet
  self.noticed = {}
  self:reset_stats()
  return self
end

function Chain:reset_stats()
  local s = {calls = 0, fallbacks = 0, breaker_trips = 0, samples = {}, failures = {},
             failures_by_source = {}, skipped = {}}
  for _, nm in ipairs(self.names) do
    s.samples[nm] = 0
    s.skipped[nm] = 0
    s.failures_by_source[nm] = {}
  end
  self._stats = s
end

-- Counts since creation (or the last reset): calls, samples per source, failures
-- by kind (and per source; a failed generate call counts once, a scorer counts each
-- sample it did not score), fallbacks taken (samples, when scoring), breaker trips,
-- calls skipped while a breaker was open. stats{reset=true} returns them and starts from zero.
function Chain:stats(opts)
  local s = self._stats
  local open = {}
  local t = self.clock()
  for i, nm in ipairs(self.names) do
    open[nm] = self.state[i].open_until ~= nil and t < self.state[i].open_until
  end
  local json = require "rl.json"
  local out = require("rl.batch").copy(s, true)
  out.open = open
  -- maps stay JSON objects in metrics even when empty (a failure-free source)
  for _, k in ipairs{"samples", "failures", "skipped", "open", "failures_by_source"} do
    json.object(out[k])
  end
  for _, v in pairs(out.failures_by_source) do json.object(v) end
  if opts and opts.reset then self:reset_stats() end
  return out
end

-- One line the first time each member is fallen back from: enough to know it
-- happened; the counts in stats() tell how often.
function Chain:_notice(key, msg)
  if self.quiet or self.noticed[key] then return end
  self.noticed[key] = true
  io.stderr:write(("rlhost: %s: %s\n"):format(self.name, msg))
  io.stderr:flush()
end

function Chain:_accepts(err)
  if kind_of(err) == "interrupted" then return false end
  return self.on(err) and true or false
end

-- Count failures of member i by kind; kinds is a kind or a list of kinds (one a
-- failed sample, when scoring).
function Chain:_count(i, kinds)
  local s, nm = self._stats, self.names[i]
  for _, kind in ipairs(type(kinds) == "table" and kinds or {kinds}) do
    s.failures[kind] = (s.failures[kind] or 0) + 1
    s.failures_by_source[nm][kind] = (s.failures_by_source[nm][kind] or 0) + 1
  end
end

-- Member i failed a whole call: count it (kinds as for _count) and move its breaker.
function Chain:_failed(i, kinds)
  local st, nm = self.state[i], self.names[i]
  local s = self._stats
  self:_count(i, kinds)
  st.fails = st.fails + 1
  if st.fails >= self.max_failures then
    local t = self.clock()
    if not (st.open_until and t < st.open_until) then
      s.breaker_trips = s.breaker_trips + 1
      if not self.quiet then
        io.stderr:write(("rlhost: %s: %s failed %d times in a row; skipping it for %gs\n")
          :format(self.name, nm, st.fails, self.cooldown))
      end
    end
    st.open_until = t + self.cooldown
  end
end

function Chain:_succeeded(i)
  self.state[i].fails = 0
  self.state[i].open_until = nil
end

-- Members to try, in order: those whose breaker is closed (or whose cooldown is
-- over); all of them when every breaker is open.
function Chain:_candidates()
  local t = self.clock()
  local c = {}
  for i = 1, #self.members do
    local st = self.state[i]
    if st.open_until == nil or t >= st.open_until then
      c[#c + 1] = i
    else
      self._stats.skipped[self.names[i]] = self._stats.skipped[self.names[i]] + 1
    end
  end
  if #c == 0 then
    for i = 1, #self.members do c[i] = i end
  end
  return c
end

local function mark(samples, name, off_policy)
  local n = 0
  for _, s in ipairs(samples) do
    if type(s) == "table" and s.text == nil and s[1] ~= nil then
      n = n + mark(s, name, off_policy)  -- per-prompt lists of samples
    elseif type(s) == "table" then
      s.source = name
      if off_policy then s.off_policy = true end
      n = n + 1
    end
  end
  return n
end

local function call_generate(m, prompts, opts)
  if type(m) == "function" then return m(prompts, opts) end
  return m:generate(prompts, opts)
end

function Chain:generate(prompts, opts)
  local s = self._stats
  s.calls = s.calls + 1
  local lasterr, lastname
  for _, i in ipairs(self:_candidates()) do
    local m, nm = self.members[i], self.names[i]
    local ok, res = pcall(call_generate, m, prompts, opts)
    if ok then
      self:_succeeded(i)
      if type(res) ~= "table" then
        error(core.error{kind = "internal",
                         message = ("%s: %s returned %s instead of samples")
                           :format(self.name, nm, type(res))}, 2)
      end
      local count = mark(res, nm, i > 1)
      s.samples[nm] = s.samples[nm] + count
      return res
    end
    if not self:_accepts(res) then error(res, 0) end
    local kind = kind_of(res)
    self:_failed(i, kind)
    lasterr, lastname = res, nm
    if i < #self.members then
      s.fallbacks = s.fallbacks + 1
      self:_notice(nm, ("%s failed (%s: %s); falling back to the next source")
        :format(nm, kind, message_of(res)))
    end
  end
  local e = core.error{kind = kind_of(lasterr),
                       message = ("%s: every source failed; last, %s: %s")
                         :format(self.name, lastname or "?", message_of(lasterr)),
                       retryable = type(lasterr) == "table" and lasterr.retryable or false}
  error(e, 2)
end

-- rl.score when the scoring module is there (it knows judges and native rewards);
-- otherwise functions per sample and objects with :score.
local score_impl
local function scorer_call()
  if score_impl == nil then
    local ok, mod = pcall(require, "rl.score")
    if ok and type(mod) == "function" then
      score_impl = mod
    elseif ok and type(mod) == "table" and type(mod.score) == "function" then
      score_impl = mod.score
    else
      score_impl = false
    end
  end
  return score_impl
end

local function local_score(m, samples, opts)
  if type(m) ~= "function" then return m:score(samples, opts) end
  local rewards, info = {}, {}
  for j, smp in ipairs(samples) do
    local ok, r, reason = pcall(m, smp)
    if not ok then
      if kind_of(r) == "interrupted" then error(r, 0) end
      info[j] = {status = "error", kind = kind_of(r), message = message_of(r)}
    elseif type(r) == "number" then
      rewards[j] = r
      info[j] = {status = "ok", reason = reason}
    else
      info[j] = {status = "error", kind = "missing", message = reason or "no reward"}
    end
  end
  return rewards, info
end

local function call_score(m, samples, opts)
  local f = scorer_call()
  if f then return f(m, samples, opts) end
  return local_score(m, samples, opts)
end

-- The counts (requests, cache hits, tokens, ...) of one member's call, added into the
-- chain's summary; a member that raised (rl.score with raise=) carries them in err.info.
local function add_summary(into, inf)
  return require("rl.score").add_summary(into, type(inf) == "table" and inf.summary or nil)
end

function Chain:score(samples, opts)
  local s = self._stats
  s.calls = s.calls + 1
  local n = #samples
  local rewards, info = {}, {}
  local summary = add_summary({}, nil)
  local pending = {}
  for i = 1, n do pending[i] = i end
  local cands = self:_candidates()
  for ci, i in ipairs(cands) do
    if #pending == 0 then break end
    local m, nm = self.members[i], self.names[i]
    local sub = {}
    for j, idx in ipairs(pending) do sub[j] = samples[idx] end
    local ok, r, inf = pcall(call_score, m, sub, opts)
    local still = {}
    add_summary(summary, ok and inf or (type(r) == "table" and r.info))
    if ok then
      r, inf = r or {}, inf or {}
      local got, kinds = 0, {}
      for j, idx in ipairs(pending) do
        local rv = r[j]
        local it = {}
        if type(inf[j]) == "table" then for k, v in pairs(inf[j]) do it[k] = v end end
        it.source = nm
        if i > 1 then it.fallback = true end
        if rv ~= nil then
          rewards[idx] = rv
          it.status = it.status or "ok"
          got = got + 1
        else
          it.status = "error"
          it.kind = it.kind or "missing"
          kinds[#kinds + 1] = it.kind
          still[#still + 1] = idx
        end
        info[idx] = it
      end
      s.samples[nm] = s.samples[nm] + got
      if got == 0 and #pending > 0 then
        -- Nothing at all came back: the member is as good as down (a judge whose
        -- server is gone may report each sample instead of raising).
        self:_failed(i, kinds)
      else
        self:_succeeded(i)
        self:_count(i, kinds)
      end
    else
      if not self:_accepts(r) then error(r, 0) end
      local kind = kind_of(r)
      local kinds = {}
      for _, idx in ipairs(pending) do
        info[idx] = {status = "error", kind = kind, message = message_of(r), source = nm}
        still[#still + 1] = idx
        kinds[#kinds + 1] = kind
      end
      self:_failed(i, kinds)
    end
    if #still > 0 and ci < #cands then
      s.fallbacks = s.fallbacks + #still
      local first = info[still[1]]
      local why = type(first.message) == "string" and (": " .. first.message:sub(1, 200)) or ""
      self:_notice(nm, ("%s failed on %d of %d samples (%s%s); falling back to the next scorer")
        :format(nm, #still, #pending, first.kind, why))
    end
    pending = still
  end
  info.summary = summary
  return rewards, info
end

-- Score with any scorer the way a chain does (used by rl.eval too).
M.call_score = call_score

return M
