-- rl.score(scorer, samples, opts) -> rewards, info
--
-- A scorer is one of:
--   * a Lua function `function(sample) return reward [, reason] end`;
--   * an object with `:score(samples, opts) -> rewards, info` (judges, native
--     rewards, rl.reward.mix, fallback chains).
-- rewards[i] is a number or nil; info[i] is {status="ok"|"error", kind=, message=,
-- source=, cached=, raw=, latency_ms=, ...}. A missing reward always has
-- status="error" and a kind — never a silent 0.
--
-- Kinds say whose fault a failure is, which is what a fallback needs:
--   per-sample (the scorer works, this answer did not): "parse" (the judge answered
--     but no score could be read, or its reply was cut off at max_tokens; raw text
--     kept), "value" (no finite number: nil, NaN and +-inf alike, from any scorer),
--     "sandbox" setup trouble is "internal";
--   the scorer itself is unavailable: "http", "timeout", "rate_limit" (after the
--     endpoint's retries), "interrupted".
-- info.summary (also rl.score_summary()) totals the call: n, ok, failed,
-- failures={kind=count}, requests (HTTP attempts), retries, cache_hits,
-- prompt_tokens, completion_tokens, latency_ms.
--
-- Raising (opts.raise):
--   nil/false  never raise for scoring failures (the default; recipes read info);
--   true       raise when the scorer is down: no sample got a reward and at least one
--              failure is a transport kind (http/timeout/rate_limit) — the error is
--              an rl.error {kind=<most common transport kind>, retryable=,
--              failures=, info=} so a fallback chain can switch scorers;
--   "any"      raise if any sample failed with a transport kind (the rest of info is
--              attached as err.info, with the rewards as err.rewards).
-- A second Ctrl-C always raises kind "interrupted". Errors in a Lua function scorer
-- that are not rl.error tables (bugs) propagate unchanged.
local core = require "rl.core"

local M = {}

local TRANSPORT = { http = true, timeout = true, rate_limit = true }
M.TRANSPORT = TRANSPORT

local last_summary = {}

-- A reward must be a finite number: NaN or +-inf would poison a group's baseline
-- (every advantage NaN), so they are missing rewards of kind "value".
local function finite(r) return type(r) == "number" and r > -math.huge and r < math.huge end
M.finite = finite

local function not_finite(r, what)
  if type(r) ~= "number" then
    return ("%s %s, not a number"):format(what, r == nil and "nil" or type(r))
  end
  return ("%s %s, not a finite number"):format(what, r ~= r and "NaN" or tostring(r))
end

-- A reward function sees each sample through a proxy that notes whether it read
-- `text` (the generated text); one that never did and gave a whole batch the same
-- reward is almost surely scoring the dataset's answer (sample.completion is the
-- reference, not the generation): warned about once per function.
local warned = setmetatable({}, {__mode = "k"})

local function reading_proxy(s, seen)
  return setmetatable({}, {
    __index = function(_, k)
      if k == "text" then seen.text = true end
      return s[k]
    end,
    __newindex = s,
    __pairs = function() seen.text = true; return next, s, nil end,
    __len = function() return #s end,
  })
end

local function warn_constant(f, rewards, n, seen)
  if seen.text or warned[f] or n < 2 then return end
  local first = rewards[1]
  if first == nil then return end
  for i = 2, n do if rewards[i] ~= first then return end end
  warned[f] = true
  local info = debug.getinfo(f, "S")
  io.stderr:write(("rlhost: warning: the reward function at %s:%d gave all %d samples %s and "
                   .. "never read sample.text, the generated text (sample.reference and "
                   .. "sample.completion are the dataset's answer)\n")
                  :format(info.short_src, info.linedefined, n, tostring(first)))
  io.stderr:flush()
end

local function call_function(f, samples)
  local rewards, info = {}, {}
  local seen = {}
  for i, sample in ipairs(samples) do
    local s = reading_proxy(sample, seen)
    local t0 = os.clock()
    local ok, r, reason = pcall(f, s)
    if not ok then
      if core.is_error(r) then
        info[i] = { status = "error", kind = r.kind, message = r.message, source = "function" }
      else
        error(r, 0) -- a bug in the recipe's reward function: stop here, loudly
      end
    elseif finite(r) then
      rewards[i] = r
      info[i] = { status = "ok", source = "function", reason = reason,
                  latency_ms = (os.clock() - t0) * 1000 }
    else
      local msg = not_finite(r, "returned")
      if reason ~= nil and r == nil then msg = tostring(reason)
      elseif reason ~= nil then msg = msg .. " (" .. tostring(reason) .. ")" end
      info[i] = { status = "error", kind = "value", source = "function", message = msg }
    end
  end
  warn_constant(f, rewards, #samples, seen)
  return rewards, info
end

function M.score(scorer, samples, opts)
  opts = opts or {}
  if type(samples) ~= "table" then
    error(core.error { kind = "usage", message = "rl.score(scorer, samples): samples must be a list" }, 2)
  end
  local rewards, info
  local st = type(scorer)
  if st == "function" then
    rewards, info = call_function(scorer, samples)
  elseif (st == "table" or st == "userdata") and scorer.score then
    rewards, info = scorer:score(samples, opts)
  else
    error(core.error { kind = "usage", message = "rl.score: scorer must be a function or have :score" }, 2)
  end
  rewards, info = rewards or {}, info or {}
  local summary = info.summary or {}
  summary.n, summary.ok, summary.failed = #samples, 0, 0
  summary.failures = {}
  M.add_summary(summary, nil) -- every count present, 0 when the scorer made none
  local transport, interrupted = {}, false
  for i = 1, #samples do
    local r, inf = rewards[i], info[i]
    if type(inf) ~= "table" then inf = {}; info[i] = inf end
    if r ~= nil and not finite(r) then
      rewards[i] = nil
      inf.status, inf.kind, inf.message = "error", "value", not_finite(r, "the reward is")
    elseif r == nil and inf.status ~= "error" then
      inf.status, inf.kind = "error", inf.kind or "value"
      inf.message = inf.message or "the scorer returned no reward"
    elseif r ~= nil then
      inf.status = "ok"
    end
    if inf.status == "ok" then
      summary.ok = summary.ok + 1
    else
      summary.failed = summary.failed + 1
      local k = inf.kind or "value"
      inf.kind = k
      summary.failures[k] = (summary.failures[k] or 0) + 1
      if TRANSPORT[k] then transport[k] = (transport[k] or 0) + 1 end
      if k == "interrupted" then interrupted = true end
    end
  end
  info.summary = summary
  last_summary = summary
  if interrupted then
    error(core.error { kind = "interrupted", message = "scoring interrupted by a second SIGINT",
                       retryable = false }, 0)
  end
  if opts.raise then
    local top, topn, ntrans = nil, 0, 0
    for k, c in pairs(transport) do
      ntrans = ntrans + c
      if c > topn or (c == topn and k < top) then top, topn = k, c end
    end
    if top and (opts.raise == "any" or summary.ok == 0) then
      local msg
      for i = 1, #samples do
        if info[i].kind == top then msg = info[i].message break end
      end
      error(core.error { kind = top, retryable = true, failures = summary.failures, info = info,
                         rewards = rewards, where = "rl.score: ",
                         message = ("%d of %d samples unscored (%s)"):format(ntrans, #samples,
                                                                          msg or top) }, 0)
    end
  end
  return rewards, info
end

function M.summary() return last_summary end

local COUNTS = { "requests", "retries", "cache_hits", "prompt_tokens", "completion_tokens",
                 "latency_ms" }

-- Add the counts of one scorer's info.summary into `into` (for scorers made of
-- scorers: fallback chains, weighted sums). Members are called one after another, so
-- their latencies add up too. Returns `into`.
function M.add_summary(into, from)
  for _, k in ipairs(COUNTS) do
    into[k] = (into[k] or 0) + (type(from) == "table" and tonumber(from[k]) or 0)
  end
  return into
end

return M
