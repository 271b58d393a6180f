-- rl.judge{endpoint=, rubric=, scale={lo,hi}, parse=, votes=, temperature=0,
--          max_tokens=, cache=, mode="pointwise"|"pairwise", system=}
--
-- A teacher model as a scorer. The rubric is a file path or a string with
-- placeholders {prompt}, {completion}, {reference} (pairwise: {prompt}, {a}, {b});
-- {lo} and {hi} give the scale. The default rubric asks for reasoning, then a final
-- [[score]].
--
-- parse: nil/"brackets" (the last [[n]]), "json" or {json="field"} (a field of the
-- last JSON object), a Lua pattern with one capture (its last match), or a function
-- text -> number|nil, why. The score must lie on the scale and is normalised to
-- [0, 1]. Anything else is a missing reward with kind "parse" and the raw text in
-- info[i].raw — never a silent 0. So is a reply cut off at max_tokens (OpenAI
-- finish_reason "length", Anthropic stop_reason "max_tokens"; info[i].finish =
-- "length"), whatever scores its text mentions on the way.
--
-- votes=k asks k times (with the judge's temperature) and takes the median of the
-- votes that parsed. Pairwise mode scores samples two by two (samples 1 and 2, 3 and
-- 4, ... must share a prompt; or each against sample.baseline / opts.baseline): it
-- asks twice with the order swapped; the winner gets 1, the loser 0, and ties,
-- including inconsistent verdicts, 0.5 each.
--
-- cache=PATH keeps scores in SQLite (rl.cache): the key hashes the endpoint's model,
-- the rubric text, the judge settings, the prompt, the completion (and reference or
-- opponent). Hits make no request. Only successful scores are stored.
local core = require "rl.core"
local util = require "rl.util"
local C = require "rl.cache"
local json = require "rl.json"

local M = {}

M.DEFAULT_RUBRIC = [==[Please act as an impartial judge and evaluate the quality of the response an AI assistant gave to the user prompt below. Consider helpfulness, correctness and clarity.{reference_note} Begin with a short explanation of your reasoning. Then, on the last line, give your rating as a number from {lo} to {hi} in double brackets, for example: "Rating: [[{mid}]]".

[The Start of the Prompt]
{prompt}
[The End of the Prompt]
{reference_block}
[The Start of the Response]
{completion}
[The End of the Response]]==]

M.DEFAULT_PAIRWISE_RUBRIC = [==[Please act as an impartial judge and compare the two responses that AI assistants gave to the user prompt below. Do not let the order of the responses, their length or the assistants' names influence you. Begin with a short explanation. Then, on the last line, give your verdict in double brackets: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, "[[C]]" for a tie.

[The Start of the Prompt]
{prompt}
[The End of the Prompt]

[The Start of Assistant A's Answer]
{a}
[The End of Assistant A's Answer]

[The Start of Assistant B's Answer]
{b}
[The End of Assistant B's Answer]]==]

local Judge = {}
Judge.__index = Judge

local function config_error(msg, ...)
  error(core.error { kind = "config", message = "rl.judge: " .. msg:format(...) }, 3)
end

local function read_rubric(r)
  if r == nil then return nil end
  if type(r) ~= "string" then config_error("'rubric' must be a string or a file path") end
  if not r:find("{", 1, true) and not r:find("\n", 1, true) then
    local f, err = io.open(r, "rb")
    if not f then config_error("cannot read the rubric file %s (%s)", r, err) end
    local s = f:read("a")
    f:close()
    return s
  end
  return r
end

-- A rubric is split once into literal text and {name} slots, so filling it per
-- sample is a table.concat (gsub with a callback per sample was the judge's largest
-- client-side cost). Unknown names stay as written; filled-in text is never rescanned.
local function compile(template)
  local parts, pos = {}, 1
  for a, name, b in template:gmatch("(){([%w_]+)}()") do
    parts[#parts + 1] = template:sub(pos, a - 1)
    parts[#parts + 1] = { name = name, raw = template:sub(a, b - 1) }
    pos = b
  end
  parts[#parts + 1] = template:sub(pos)
  return parts
end

local function fill(compiled, vars)
  local out = {}
  for i, p in ipairs(compiled) do
    if type(p) == "string" then
      out[i] = p
    else
      local v = vars[p.name]
      out[i] = v == nil and p.raw or tostring(v)
    end
  end
  return table.concat(out)
end

local function median(xs)
  table.sort(xs)
  local n = #xs
  if n % 2 == 1 then return xs[(n + 1) // 2] end
  return (xs[n // 2] + xs[n // 2 + 1]) / 2
end

local KNOWN = { endpoint = 1, rubric = 1, scale = 1, votes = 1, temperature = 1, max_tokens = 1,
                parse = 1, mode = 1, cache = 1, system = 1 }

function M.judge(opts)
  if type(opts) ~= "table" then config_error("expected a table of options") end
  util.check_options(opts, KNOWN, "rl.judge")
  local ep = opts.endpoint
  if not ep or not ep.chat then config_error("'endpoint' must be an rl.endpoint handle") end
  local mode = opts.mode or "pointwise"
  if mode ~= "pointwise" and mode ~= "pairwise" then
    config_error("'mode' must be pointwise or pairwise, not %s", tostring(mode))
  end
  local scale = opts.scale or { 1, 10 }
  local lo, hi = scale[1] or scale.lo, scale[2] or scale.hi
  if type(lo) ~= "number" or type(hi) ~= "number" or not (hi > lo)
     or not (lo > -math.huge and hi < math.huge) then
    config_error("'scale' must be {lo, hi}, finite numbers with lo < hi")
  end
  local votes = opts.votes or 1
  if math.type(votes) ~= "integer" or votes < 1 then config_error("'votes' must be a positive integer") end
  local parse = opts.parse
  if parse ~= nil and parse ~= "brackets" and parse ~= "json" and type(parse) ~= "function"
     and type(parse) ~= "string" and not (type(parse) == "table" and parse.json) then
    config_error("'parse' must be \"brackets\", \"json\", {json=field}, a Lua pattern or a function")
  end
  local rubric = read_rubric(opts.rubric) or
                 (mode == "pairwise" and M.DEFAULT_PAIRWISE_RUBRIC or M.DEFAULT_RUBRIC)
  -- A rubric that never shows the judge the answer would be graded blind.
  local need = mode == "pairwise" and { "{a}", "{b}" } or { "{completion}" }
  for _, slot in ipairs(need) do
    if not rubric:find(slot, 1, true) then
      config_error("the %s rubric %s has no %s placeholder (placeholders: %s)", mode,
                   type(opts.rubric) == "string" and not opts.rubric:find("[{\n]") and opts.rubric
                   or "(given as text)", slot, mode == "pairwise" and "{prompt} {a} {b}"
                   or "{prompt} {completion} {reference} {lo} {hi}")
    end
  end
  local self = setmetatable({
    endpoint = ep, mode = mode, lo = lo, hi = hi, votes = votes, parse = parse,
    rubric = rubric, temperature = opts.temperature or 0, max_tokens = opts.max_tokens or 1024,
    system = opts.system, model = ep:info().model,
  }, Judge)
  if opts.cache then
    self.cache = opts.cache == true and C.open("rl-judge-cache.sqlite") or
                 (type(opts.cache) == "string" and C.open(opts.cache) or opts.cache)
  end
  local pdesc = type(parse) == "table" and ("json:" .. parse.json) or
                type(parse) == "function" and "function" or tostring(parse or "brackets")
  -- Everything that changes a score goes into the key, nothing that does not.
  self.settings = json.encode({ mode = mode, lo = lo, hi = hi, votes = votes, parse = pdesc,
                                temperature = self.temperature, max_tokens = self.max_tokens,
                                system = self.system or "" }, { sort_keys = true })
  self.source = "judge:" .. self.model
  self.compiled = compile(rubric)
  self.rubric_id = C.key(rubric) -- hashed once; keys carry this instead of the text
  return self
end

function Judge:__tostring() return ("rl.judge(%s, %s)"):format(self.model, self.mode) end

-- Read a score from a reply text: number on the scale, or nil, why.
function Judge:read_score(text)
  local p = self.parse
  if p == nil or p == "brackets" or p == "json" or type(p) == "table" then
    local v, why = C.parse_score(text, { mode = (p == "json" or type(p) == "table") and "json" or "brackets",
                                         field = type(p) == "table" and p.json or "score",
                                         lo = self.lo, hi = self.hi })
    return v, why
  end
  local v, why
  if type(p) == "function" then
    v, why = p(text)
  else
    for cap in text:gmatch(p) do v = cap end
    if v == nil then why = "the pattern did not match" end
  end
  v = tonumber(v)
  if v == nil or v ~= v then return nil, why or "no number in the answer" end
  if v < self.lo or v > self.hi then
    return nil, ("score %g outside the scale [%g, %g]"):format(v, self.lo, self.hi)
  end
  return v
end

function Judge:prompt_for(s)
  local ref = s.reference or s.answer
  return fill(self.compiled, {
    prompt = s.prompt or "", completion = s.text or "", reference = ref or "",
    reference_note = ref and " Compare it with the reference answer provided." or "",
    reference_block = ref and ("\n[The Start of the Reference Answer]\n%s\n[The End of the Reference Answer]\n"):format(ref) or "",
    lo = self.lo, hi = self.hi, mid = (self.lo + self.hi) // 2,
  })
end

-- A reply that stopped at the token limit (OpenAI finish_reason "length", Anthropic
-- stop_reason "max_tokens"; rl.endpoint maps both to "length") holds no verdict, even
-- when its text mentions one in passing ("a [[2]] would mean ..., a [[9]] would").
-- Returns the reason it is unusable, or nil for a reply that ended on its own.
function Judge:cut_off(rep)
  if type(rep.finish) == "table" and rep.finish[1] == "length" then
    return ("the judge's reply was cut off at max_tokens=%d before its verdict " ..
            "(raise the judge's max_tokens)"):format(self.max_tokens)
  end
end

local function new_summary() return { requests = 0, retries = 0, cache_hits = 0, prompt_tokens = 0,
                                      completion_tokens = 0, latency_ms = 0 } end

-- Send the requests, accounting into summary.
function Judge:_ask(prompts, summary)
  if #prompts == 0 then return {} end
  local reqs = {}
  for i, p in ipairs(prompts) do
    local m = {}
    if self.system then m[1] = { role = "system", content = self.system } end
    m[#m + 1] = { role = "user", content = p }
    reqs[i] = { messages = m }
  end
  local before = self.endpoint:stats()
  local replies = self.endpoint:chat(reqs, { temperature = self.temperature, max_tokens = self.max_tokens })
  local after = self.endpoint:stats()
  summary.requests = summary.requests + (after.attempts - before.attempts)
  summary.retries = summary.retries + (after.retries - before.retries)
  summary.prompt_tokens = summary.prompt_tokens + (after.prompt_tokens - before.prompt_tokens)
  summary.completion_tokens = summary.completion_tokens + (after.completion_tokens - before.completion_tokens)
  return replies
end

-- Ask, then group the replies by the sample (or pair) that owns each prompt:
-- owner[k] names the owner of prompts[k]; votes and order swaps share an owner.
function Judge:_ask_grouped(prompts, owner, summary)
  local grouped = {}
  for k, rep in ipairs(self:_ask(prompts, summary)) do
    local o = owner[k]
    grouped[o] = grouped[o] or {}
    table.insert(grouped[o], rep)
  end
  return grouped
end

local function key_parts(self, s, extra)
  if not self.cache then return false end
  return C.key("rl.judge/1", self.model, self.rubric_id, self.settings, s.prompt or "", s.text or "",
               s.reference or s.answer or "", extra or "")
end

function Judge:_lookup(keys, summary)
  if not self.cache then return {} end
  local hits = self.cache:get(keys)
  for _, h in ipairs(hits) do if h then summary.cache_hits = summary.cache_hits + 1 end end
  return hits
end

function Judge:score(samples, opts)
  if self.mode == "pairwise" then return self:_score_pairwise(samples, opts or {}) end
  local summary = new_summary()
  local rewards, info = {}, {}
  local keys = {}
  for i, s in ipairs(samples) do keys[i] = key_parts(self, s) end
  local hits = self:_lookup(keys, summary)
  local prompts, owner = {}, {}
  for i, s in ipairs(samples) do
    local h = hits[i]
    if h then
      rewards[i] = h.reward
      info[i] = { status = "ok", cached = true, raw = h.raw, source = self.source, latency_ms = 0 }
    else
      local p = self:prompt_for(s)
      for _ = 1, self.votes do
        prompts[#prompts + 1] = p
        owner[#owner + 1] = i
      end
    end
  end
  local per = self:_ask_grouped(prompts, owner, summary)
  local puts = {}
  for i, reps in pairs(per) do
    local scores, raws, fail, parse_fail, lat, attempts, cut = {}, {}, nil, nil, 0, 0, nil
    for _, rep in ipairs(reps) do
      lat = math.max(lat, rep.latency_ms or 0)
      attempts = attempts + (rep.attempts or 0)
      if rep.ok then
        local text = rep.texts[1] or ""
        raws[#raws + 1] = text
        local v, why
        local cut_why = self:cut_off(rep)
        if cut_why then why, cut = cut_why, "length" else v, why = self:read_score(text) end
        if v then scores[#scores + 1] = v else parse_fail = parse_fail or why end
      else
        fail = fail or rep
      end
    end
    local raw = raws[#raws]
    if #scores > 0 then
      local m = median(scores)
      rewards[i] = (m - self.lo) / (self.hi - self.lo)
      info[i] = { status = "ok", cached = false, raw = raw, source = self.source, latency_ms = lat,
                  attempts = attempts, score = m, votes = #scores < #reps and scores or nil }
      if self.cache then
        puts[#puts + 1] = { key = keys[i], reward = rewards[i], raw = raw }
      end
    elseif fail then
      info[i] = { status = "error", kind = fail.kind, message = fail.message, retryable = fail.retryable,
                  http_status = fail.status, source = self.source, latency_ms = lat, attempts = attempts,
                  raw = raw }
    else
      info[i] = { status = "error", kind = "parse", message = parse_fail, raw = raw,
                  source = self.source, latency_ms = lat, attempts = attempts, finish = cut }
    end
    summary.latency_ms = math.max(summary.latency_ms, lat)
  end
  if #puts > 0 then self.cache:put(puts) end
  info.summary = summary
  return rewards, info
end

-- Verdict for sample x against y given the two orders' verdicts.
local function pair_outcome(v1, v2)
  -- v1: x shown as A; v2: x shown as B.
  if v1 == "A" and v2 == "B" then return 1, true end
  if v1 == "B" and v2 == "A" then return 0, true end
  if v1 == "T" and v2 == "T" then return 0.5, true end
  return 0.5, false -- inconsistent across orders: a tie
end

function Judge:_score_pairwise(samples, opts)
  local summary = new_summary()
  local rewards, info = {}, {}
  local pairs_ = {} -- {x=i, y=j or nil, other=text}
  local i = 1
  while i <= #samples do
    local s = samples[i]
    local base = s.baseline or opts.baseline
    if base then
      pairs_[#pairs_ + 1] = { x = i, other = base }
      i = i + 1
    else
      local t = samples[i + 1]
      if not t or t.prompt ~= s.prompt then
        error(core.error { kind = "usage", message = ("rl.judge pairwise: sample %d has no partner " ..
          "with the same prompt (pairs are 1-2, 3-4, ...; or give baseline=)"):format(i) }, 3)
      end
      pairs_[#pairs_ + 1] = { x = i, y = i + 1, other = t.text }
      i = i + 2
    end
  end
  local keys, prompts = {}, {}
  for k, pr in ipairs(pairs_) do
    local s = samples[pr.x]
    keys[k] = key_parts(self, s, "vs\0" .. tostring(pr.other))
    local a = fill(self.compiled, { prompt = s.prompt or "", a = s.text or "", b = pr.other or "" })
    local b = fill(self.compiled, { prompt = s.prompt or "", a = pr.other or "", b = s.text or "" })
    pr.prompts = { a, b }
  end
  local hits = self:_lookup(keys, summary)
  local owner = {}
  for k, pr in ipairs(pairs_) do
    if hits[k] then
      rewards[pr.x] = hits[k].reward
      info[pr.x] = { status = "ok", cached = true, raw = hits[k].raw, source = self.source }
      if pr.y then
        rewards[pr.y] = 1 - hits[k].reward
        info[pr.y] = { status = "ok", cached = true, raw = hits[k].raw, source = self.source }
      end
    else
      for _, p in ipairs(pr.prompts) do
        prompts[#prompts + 1] = p
        owner[#owner + 1] = k
      end
    end
  end
  local got = self:_ask_grouped(prompts, owner, summary)
  local puts = {}
  for k, reps in pairs(got) do
    local pr = pairs_[k]
    local verdicts, raws, fail, why, cut = {}, {}, nil, nil, nil
    for _, rep in ipairs(reps) do
      if rep.ok then
        raws[#raws + 1] = rep.texts[1] or ""
        local v, w
        local cut_why = self:cut_off(rep)
        if cut_why then w, cut = cut_why, "length" else v, w = C.parse_verdict(rep.texts[1] or "") end
        verdicts[#verdicts + 1] = v or false
        why = why or w
      else
        fail = fail or rep
      end
    end
    local raw = table.concat(raws, "\n---\n")
    local ix, iy
    if fail then
      ix = { status = "error", kind = fail.kind, message = fail.message, retryable = fail.retryable,
             source = self.source, raw = raw }
    elseif not (verdicts[1] and verdicts[2]) then
      ix = { status = "error", kind = "parse", message = why, raw = raw, source = self.source,
             finish = cut }
    else
      local r, consistent = pair_outcome(verdicts[1], verdicts[2])
      rewards[pr.x] = r
      if pr.y then rewards[pr.y] = 1 - r end
      ix = { status = "ok", cached = false, raw = raw, source = self.source,
             verdicts = { verdicts[1], verdicts[2] }, consistent = consistent }
      if self.cache then puts[#puts + 1] = { key = keys[k], reward = r, raw = raw } end
    end
    info[pr.x] = ix
    if pr.y then
      iy = {}
      for kk, vv in pairs(ix) do iy[kk] = vv end
      info[pr.y] = iy
    end
  end
  if #puts > 0 then self.cache:put(puts) end
  info.summary = summary
  return rewards, info
end

function Judge:close()
  if self.cache and self.cache.close then self.cache:close() end
  self.cache = nil
end

return M
