-- rl.judge{endpoint= | model=, rubric=, scale={lo,hi}, parse=, votes=, temperature=0,
--          max_tokens=, cache=, mode="pointwise"|"pairwise", system=,
--          verdict="text"|"logprobs", choices=, min_mass=0.5, top_logprobs=20,
--          seed=0, timeout=}
--
-- A teacher model as a scorer: an HTTP endpoint (rl.endpoint) or a local model run by
-- the engine (rl.model; typically its own worker, rl.model{path=, transport="worker"},
-- so judge and policy do not share an interpreter). The rubric is a file path or a
-- string with placeholders {prompt}, {completion}, {reference} (pairwise: {prompt},
-- {a}, {b}); {lo} and {hi} give the scale. The default rubric asks for reasoning, then
-- a final [[score]].
--
-- verdict="text" (the default): the judge writes an answer (a local model greedily at
-- temperature 0, all prompts in one generate call) and the verdict is parsed from it.
-- parse: nil/"brackets" (the last [[n]]), "json" or {json="field"} (a field of the
-- last JSON object), a Lua pattern with one capture (its last match), or a function
-- text -> number|nil, why. The score must lie on the scale and is normalised to
-- [0, 1]. Anything else is a missing reward with kind "parse" and the raw text in
-- info[i].raw — never a silent 0. So is a reply cut off at max_tokens (OpenAI
-- finish_reason "length", Anthropic stop_reason "max_tokens"; info[i].finish =
-- "length"), whatever scores its text mentions on the way.
--
-- verdict="logprobs" (G-Eval: Liu et al. 2023): the rubric ends where the verdict goes
-- ("Rating (1-9): ", "Answer yes or no: ") and the score is the expected value under
-- the judge's next-token distribution over the verdict tokens, renormalised:
-- sum_c p(c) v(c) / sum_c p(c). choices maps verdict strings to values on the scale
-- ({yes = 1, no = 0}; several strings may share a value: {yes = 1, Yes = 1, ...});
-- without it an integer scale of single digits (0 <= lo < hi <= 9) is read as the
-- digits "lo".."hi" (default scale {1, 9}). info[i].mass is the probability that fell
-- on the verdict tokens; below min_mass (default 0.5: a verdict must be more likely
-- than not, else the renormalised score describes a minority of what the judge would
-- say) the sample is a kind "parse" failure naming the judge's most likely token. A
-- local model reads the candidates' log-probs directly (model:next_logprobs); an
-- endpoint is asked for one token with its top_logprobs (OpenAI chat: logprobs=true,
-- top_logprobs=; completions: logprobs=), a returned token counting for the verdict it
-- equals after leading whitespace — tokens outside the top ones count as 0, so the
-- mass is a lower bound there. Votes do not apply (the expectation already averages).
--
-- votes=k asks k times (with the judge's temperature) and takes the median of the
-- votes that parsed. Pairwise mode scores samples two by two (samples 1 and 2, 3 and
-- 4, ... must share a prompt; or each against sample.baseline / opts.baseline): it
-- asks twice with the order swapped; the winner gets 1, the loser 0, and ties,
-- including inconsistent verdicts, 0.5 each. With verdict="logprobs" the first shown
-- sample's reward is the mean over both orders of its renormalised P(A) (shown first)
-- and P(B) (shown second). info[i].verdicts holds the two orders' verdicts ("A", "B",
-- "T") either way, for position-bias measurements (recipes/judge_check.lua).
--
-- A local judge's failures are per-sample typed failures like an endpoint's: a worker
-- past its deadline (timeout= here or the handle's) is kind "timeout", a worker that
-- died "crash", out of memory "oom"; configuration errors (a prompt longer than the
-- model's context) and bugs raise.
--
-- cache=PATH keeps scores in SQLite (rl.cache): the key hashes the judge's identity
-- (an endpoint's model name; a local model's path, version and a fingerprint of its
-- weights: its next-token log-probs on a fixed probe, so retrained or other weights
-- never hit old scores), the rubric text, the judge settings, the prompt, the
-- completion (and reference or opponent). Hits make no request. Only successful scores
-- are stored.
local core = require "rl.core"
local util = require "rl.util"
local C = require "rl.cache"
local json = require "rl.json"

local M = {}

-- The default rubrics (MT-Bench's judge prompts): an instruction, then the blocks
-- that show the judge the prompt and the answer(s). The logprobs verdict reads the
-- next token after the rubric, so its rubrics end where the verdict goes.
local POINTWISE_ASK = "Please act as an impartial judge and evaluate the quality of the response an AI assistant gave to the user prompt below. Consider helpfulness, correctness and clarity.{reference_note}"
local POINTWISE_BLOCKS = "\n\n" .. [==[[The Start of the Prompt]
{prompt}
[The End of the Prompt]
{reference_block}
[The Start of the Response]
{completion}
[The End of the Response]]==]
local PAIRWISE_ASK = "Please act as an impartial judge and compare the two responses that AI assistants gave to the user prompt below. Do not let the order of the responses, their length or the assistants' names influence you."
local PAIRWISE_BLOCKS = "\n\n" .. [==[[The Start of the Prompt]
{prompt}
[The End of the Prompt]

[The Start of Assistant A's Answer]
{a}
[The End of Assistant A's Answer]

[The Start of Assistant B's Answer]
{b}
[The End of Assistant B's Answer]]==]

M.DEFAULT_RUBRIC = POINTWISE_ASK .. [==[ Begin with a short explanation of your reasoning. Then, on the last line, give your rating as a number from {lo} to {hi} in double brackets, for example: "Rating: [[{mid}]]".]==] .. POINTWISE_BLOCKS

M.DEFAULT_PAIRWISE_RUBRIC = PAIRWISE_ASK .. [==[ Begin with a short explanation. Then, on the last line, give your verdict in double brackets: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, "[[C]]" for a tie.]==] .. PAIRWISE_BLOCKS

M.DEFAULT_LOGPROBS_RUBRIC = POINTWISE_ASK .. POINTWISE_BLOCKS ..
  "\n\nRate the response from {lo} (worst) to {hi} (best). Rating ({lo}-{hi}): "

M.DEFAULT_LOGPROBS_PAIRWISE_RUBRIC = PAIRWISE_ASK .. PAIRWISE_BLOCKS ..
  "\n\nWhich answer is better? Answer A or B: "

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

local KNOWN = { endpoint = 1, model = 1, rubric = 1, scale = 1, votes = 1, temperature = 1,
                max_tokens = 1, parse = 1, mode = 1, cache = 1, system = 1, verdict = 1,
                choices = 1, min_mass = 1, top_logprobs = 1, seed = 1, timeout = 1 }

-- Failures of a local judge that are the sample's or the moment's, reported per sample
-- like an endpoint's; anything else (config, usage, internal: a bad setting or a bug)
-- raises.
local MODEL_FAILURES = { timeout = true, crash = true, oom = true, nonfinite = true,
                         state = true, interrupted = true }

local function model_failure(err)
  if not (core.is_error(err) and MODEL_FAILURES[err.kind]) then error(err, 0) end
  return { ok = false, kind = err.kind, message = err.message, retryable = err.retryable }
end

local function is_model(m)
  return (type(m) == "userdata" or type(m) == "table") and type(m.next_logprobs) == "function"
     and type(m.generate) == "function"
end

-- Where a judge's prompts go. A source has id (its cache identity), ask(prompts,
-- summary) -> replies shaped as rl.endpoint:chat's, and next_tokens(prompts, summary)
-- -> per prompt {ok=true, probs={[choice]=p}, top=} or a failure {ok=false, kind=, ...}.
local function endpoint_source(self, ep)
  local info = ep:info()
  local src = { id = info.model, name = info.model }
  local function counted(summary, f)
    local before = ep:stats()
    local replies = f()
    local after = ep:stats()
    for _, k in ipairs { "prompt_tokens", "completion_tokens" } do
      summary[k] = summary[k] + (after[k] - before[k])
    end
    summary.requests = summary.requests + (after.attempts - before.attempts)
    summary.retries = summary.retries + (after.retries - before.retries)
    return replies
  end
  local function requests(prompts)
    local reqs = {}
    for i, p in ipairs(prompts) do
      local m = {}
      if self.system then m[1] = { role = "system", content = self.system } end
      m[#m + 1] = { role = "user", content = p }
      reqs[i] = { messages = m }
    end
    return reqs
  end
  function src.ask(prompts, summary)
    return counted(summary, function()
      return ep:chat(requests(prompts), { temperature = self.temperature, max_tokens = self.max_tokens })
    end)
  end
  -- One token with its top log-probs (OpenAI chat: choices[].logprobs.content[1]
  -- .top_logprobs = [{token, logprob}]; completions: choices[].logprobs.top_logprobs[1]
  -- = {token: logprob}).
  function src.next_tokens(prompts, summary)
    local completions = info.api == "openai-completions"
    local replies = counted(summary, function()
      local o = { temperature = 0, max_tokens = 1 }
      if completions then
        local reqs = {}
        for i, p in ipairs(prompts) do reqs[i] = { prompt = (self.system and self.system .. "\n\n" or "") .. p } end
        o.extra = { logprobs = self.top_logprobs }
        return ep:complete(reqs, o)
      end
      o.extra = { logprobs = true, top_logprobs = self.top_logprobs }
      return ep:chat(requests(prompts), o)
    end)
    local out = {}
    for i, rep in ipairs(replies) do
      if not rep.ok then
        out[i] = rep
      else
        local lp = rep.logprobs and rep.logprobs[1]
        local tops = {}
        if type(lp) == "table" and completions and type(lp.top_logprobs) == "table"
           and type(lp.top_logprobs[1]) == "table" then
          for tok, l in pairs(lp.top_logprobs[1]) do tops[#tops + 1] = { token = tok, logprob = l } end
        elseif type(lp) == "table" and type(lp.content) == "table" and type(lp.content[1]) == "table"
               and type(lp.content[1].top_logprobs) == "table" then
          tops = lp.content[1].top_logprobs
        end
        if #tops == 0 then
          out[i] = { ok = false, kind = "parse", raw = rep.texts and rep.texts[1],
                     message = "the endpoint's reply has no top log-probs (does the server " ..
                               "support logprobs/top_logprobs?)" }
        else
          local probs, best = {}, nil
          for _, t in ipairs(tops) do
            local tok, l = t.token, tonumber(t.logprob)
            if type(tok) == "string" and l then
              if not best or l > best.logprob then best = { token = tok, logprob = l } end
              local c = tok:gsub("^%s+", "")
              if self.values[c] then probs[c] = (probs[c] or 0) + math.exp(l) end
            end
          end
          -- The top token lands in info[i].raw: scrubbed like the texts are.
          out[i] = { ok = true, probs = probs, top = best and ep:_scrub(best.token),
                     top_p = best and math.exp(best.logprob) }
        end
      end
    end
    return out
  end
  return src
end

-- A weights fingerprint that needs nothing but the model: its next-token log-probs at
-- a fixed probe (4 decimals). It changes with the path, seed, dtype, training or a sync
-- alike; a thread-count rounding flip only costs a cache miss.
local function fingerprint(m)
  local digits = {}
  for d = 0, 9 do digits[#digits + 1] = tostring(d) end
  local ok, r = pcall(m.next_logprobs, m, { "rlhost judge fingerprint, 2 + 2 = " }, digits)
  if not ok then return "none" end
  local parts = {}
  for k, l in ipairs(r.logprobs[1]) do parts[k] = ("%.4f"):format(l) end
  return C.key(table.concat(parts, ","), r.top[1] or "")
end

local function model_source(self, m)
  local info = m:info()
  local src = { name = ("%s@%s"):format(info.path, info.version) }
  src.id = ("%s@%s#%s"):format(info.path, info.version, fingerprint(m))
  local clock = require("rl.fs").monotonic
  -- Chat templates: until the engine renders message prompts, the system text goes
  -- before the rubric (the one seam to change when it does).
  local function texts(prompts)
    if not self.system then return prompts end
    local out = {}
    for i, p in ipairs(prompts) do out[i] = self.system .. "\n\n" .. p end
    return out
  end
  local function call_opts(o) o.timeout = self.timeout; return o end
  function src.ask(prompts, summary)
    local t0 = clock()
    summary.requests = summary.requests + 1
    local ok, got = pcall(m.generate, m, texts(prompts),
                          call_opts { n = 1, max_tokens = self.max_tokens,
                                      temperature = self.temperature, seed = self.seed })
    local lat = (clock() - t0) * 1000
    local out = {}
    for i = 1, #prompts do
      if ok then
        local s = got[i]
        summary.prompt_tokens = summary.prompt_tokens + #(s.prompt_ids or {})
        summary.completion_tokens = summary.completion_tokens + #(s.ids or {})
        out[i] = { ok = true, texts = { s.text }, finish = { s.finish }, latency_ms = lat, attempts = 1 }
      else
        out[i] = model_failure(got)
        out[i].latency_ms = lat
      end
    end
    return out
  end
  function src.next_tokens(prompts, summary)
    summary.requests = summary.requests + 1
    local ok, r = pcall(m.next_logprobs, m, texts(prompts), self.choice_list, call_opts {})
    local out = {}
    for i = 1, #prompts do
      if ok then
        local probs = {}
        for k, c in ipairs(self.choice_list) do probs[c] = math.exp(r.logprobs[i][k]) end
        out[i] = { ok = true, probs = probs, top = r.top[i], top_p = math.exp(r.top_logprob[i]) }
      else
        out[i] = model_failure(r)
      end
    end
    return out
  end
  return src
end

-- The verdict strings a logprobs judge reads and their values on the scale.
local function read_choices(opts, mode, lo, hi)
  if mode == "pairwise" then
    if opts.choices then config_error("'choices' is for pointwise judges (pairwise reads A and B)") end
    return { A = 1, B = 0 }
  end
  if opts.choices ~= nil then
    if type(opts.choices) ~= "table" or next(opts.choices) == nil then
      config_error("'choices' must be a table of verdict strings to scores, e.g. {yes = 1, no = 0}")
    end
    for c, v in pairs(opts.choices) do
      if type(c) ~= "string" or c == "" or type(v) ~= "number" or v < lo or v > hi then
        config_error("'choices' maps non-empty verdict strings to scores on the scale [%g, %g]; " ..
                     "%s = %s is not one", lo, hi, tostring(c), tostring(v))
      end
    end
    return opts.choices
  end
  if math.type(lo) ~= "integer" or math.type(hi) ~= "integer" or lo < 0 or hi > 9 then
    config_error("verdict=\"logprobs\" reads one token per verdict: give a scale of single " ..
                 "digits (0 <= lo < hi <= 9, e.g. {1, 9}) or choices={...}, not {%g, %g}", lo, hi)
  end
  local ch = {}
  for v = lo, hi do ch[tostring(v)] = v end
  return ch
end

function M.judge(opts)
  if type(opts) ~= "table" then config_error("expected a table of options") end
  util.check_options(opts, KNOWN, "rl.judge")
  local ep, model = opts.endpoint, opts.model
  if (ep == nil) == (model == nil) then
    config_error("give either 'endpoint' (an rl.endpoint handle) or 'model' (an rl.model handle)")
  end
  if ep ~= nil and not ep.chat then config_error("'endpoint' must be an rl.endpoint handle") end
  if model ~= nil and not is_model(model) then config_error("'model' must be an rl.model handle") end
  local mode = opts.mode or "pointwise"
  if mode ~= "pointwise" and mode ~= "pairwise" then
    config_error("'mode' must be pointwise or pairwise, not %s", tostring(mode))
  end
  local verdict = opts.verdict or "text"
  if verdict ~= "text" and verdict ~= "logprobs" then
    config_error("'verdict' must be \"text\" or \"logprobs\", not %s", tostring(verdict))
  end
  local logprobs = verdict == "logprobs"
  local scale = opts.scale or (logprobs and { 1, 9 } or { 1, 10 })
  local lo, hi = scale[1] or scale.lo, scale[2] or scale.hi
  if type(lo) ~= "number" or type(hi) ~= "number" or not (hi > lo)
     or not (lo > -math.huge and hi < math.huge) then
    config_error("'scale' must be {lo, hi}, finite numbers with lo < hi")
  end
  local votes = opts.votes or 1
  if math.type(votes) ~= "integer" or votes < 1 then config_error("'votes' must be a positive integer") end
  if logprobs and votes > 1 then
    config_error("'votes' does not apply to verdict=\"logprobs\" (the expected score already " ..
                 "averages the judge's distribution)")
  end
  local parse = opts.parse
  if parse ~= nil and parse ~= "brackets" and parse ~= "json" and type(parse) ~= "function"
     and type(parse) ~= "string" and not (type(parse) == "table" and parse.json) then
    config_error("'parse' must be \"brackets\", \"json\", {json=field}, a Lua pattern or a function")
  end
  if logprobs and parse ~= nil then config_error("'parse' is for verdict=\"text\"") end
  if not logprobs and (opts.choices or opts.min_mass or opts.top_logprobs) then
    config_error("'choices', 'min_mass' and 'top_logprobs' are for verdict=\"logprobs\"")
  end
  local min_mass = opts.min_mass or 0.5
  if type(min_mass) ~= "number" or not (min_mass >= 0 and min_mass <= 1) then
    config_error("'min_mass' must be a probability in [0, 1]")
  end
  local top = opts.top_logprobs or 20
  if math.type(top) ~= "integer" or top < 1 then config_error("'top_logprobs' must be a positive integer") end
  if logprobs and ep and ep:info().api == "anthropic" then
    config_error("verdict=\"logprobs\" needs log-probs, which the Anthropic API does not return")
  end
  local seed = opts.seed or 0
  if math.type(seed) ~= "integer" or seed < 0 then config_error("'seed' must be an integer >= 0") end
  if opts.timeout ~= nil and not (type(opts.timeout) == "number" and opts.timeout > 0) then
    config_error("'timeout' must be a positive number of seconds")
  end
  local default = logprobs and (mode == "pairwise" and M.DEFAULT_LOGPROBS_PAIRWISE_RUBRIC or
                                M.DEFAULT_LOGPROBS_RUBRIC)
                  or (mode == "pairwise" and M.DEFAULT_PAIRWISE_RUBRIC or M.DEFAULT_RUBRIC)
  local rubric = read_rubric(opts.rubric) or default
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
    mode = mode, lo = lo, hi = hi, votes = votes, parse = parse, verdict = verdict,
    rubric = rubric, temperature = opts.temperature or 0, max_tokens = opts.max_tokens or 1024,
    system = opts.system, min_mass = min_mass, top_logprobs = top, seed = seed,
    timeout = opts.timeout,
  }, Judge)
  if logprobs then
    self.values = read_choices(opts, mode, lo, hi)
    self.choice_list = require("rl.batch").sorted_keys(self.values)
  end
  self.src = ep and endpoint_source(self, ep) or model_source(self, model)
  self.endpoint, self.local_model, self.model = ep, model, self.src.name
  if opts.cache then
    self.cache = opts.cache == true and C.open("rl-judge-cache.sqlite") or
                 (type(opts.cache) == "string" and C.open(opts.cache) or opts.cache)
  end
  local pdesc = type(parse) == "table" and ("json:" .. parse.json) or
                type(parse) == "function" and "function" or tostring(parse or "brackets")
  local cdesc = {}
  for _, c in ipairs(self.choice_list or {}) do cdesc[#cdesc + 1] = c .. "=" .. self.values[c] end
  -- Everything that changes a score goes into the key, nothing that does not.
  local settings = { mode = mode, lo = lo, hi = hi, votes = votes, parse = pdesc,
                     temperature = self.temperature, max_tokens = self.max_tokens,
                     system = self.system or "" }
  if logprobs then
    settings = { mode = mode, lo = lo, hi = hi, verdict = verdict, choices = table.concat(cdesc, ","),
                 min_mass = min_mass, top_logprobs = ep and top or nil, system = self.system or "" }
  elseif model then
    settings.seed = seed
  end
  self.settings = json.encode(settings, { sort_keys = true })
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
-- verdict="logprobs": next-token distributions instead of answers.
function Judge:_ask(prompts, summary)
  if #prompts == 0 then return {} end
  if self.verdict == "logprobs" then return self.src.next_tokens(prompts, summary) end
  return self.src.ask(prompts, summary)
end

-- The verdict of a next-token distribution rep = {probs={[choice]=p}, top=, top_p=}:
-- the expected value of the choices, renormalised over them (pointwise), or the
-- renormalised probability of the first choice given (pairwise: P(A) over A and B).
-- Returns value, nil, raw, details or nil, why, raw, details. raw says what the judge
-- would most likely have written and how much mass the verdicts got.
function Judge:read_distribution(rep)
  local mass, ev = 0, 0
  for c, p in pairs(rep.probs) do
    mass = mass + p
    ev = ev + p * self.values[c]
  end
  local probs = {}
  for c, p in pairs(rep.probs) do probs[c] = mass > 0 and p / mass or 0 end
  local raw = ("next token %q (p=%.3f); verdict mass %.3f"):format(tostring(rep.top), rep.top_p or 0, mass)
  local details = { mass = mass, probs = probs, top = rep.top }
  if mass <= 0 or mass < self.min_mass then
    return nil, ("only %.1f%% of the judge's next-token probability fell on the verdicts " ..
                 "(min_mass=%g); its most likely next token is %q"):format(100 * mass,
                 self.min_mass, tostring(rep.top)), raw, details
  end
  return ev / mass, nil, raw, details
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
  return C.key("rl.judge/1", self.src.id, self.rubric_id, self.settings, s.prompt or "", s.text or "",
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
    local dist
    for _, rep in ipairs(reps) do
      lat = math.max(lat, rep.latency_ms or 0)
      attempts = attempts + (rep.attempts or 0)
      if rep.ok and rep.probs then
        local v, why, raw
        v, why, raw, dist = self:read_distribution(rep)
        raws[#raws + 1] = raw
        if v then scores[#scores + 1] = v else parse_fail = parse_fail or why end
      elseif rep.ok then
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
                  attempts = attempts, score = m, votes = #scores < #reps and scores or nil,
                  mass = dist and dist.mass, probs = dist and dist.probs }
      if self.cache then
        puts[#puts + 1] = { key = keys[i], reward = rewards[i], raw = raw }
      end
    elseif fail then
      info[i] = { status = "error", kind = fail.kind, message = fail.message, retryable = fail.retryable,
                  http_status = fail.status, source = self.source, latency_ms = lat, attempts = attempts,
                  raw = raw }
    else
      info[i] = { status = "error", kind = "parse", message = parse_fail, raw = raw,
                  source = self.source, latency_ms = lat, attempts = attempts, finish = cut,
                  mass = dist and dist.mass }
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
    local pa, masses = {}, {}
    for _, rep in ipairs(reps) do
      if rep.ok and rep.probs then
        local v, w, r, d = self:read_distribution(rep)
        raws[#raws + 1] = r
        masses[#masses + 1] = d.mass
        pa[#pa + 1] = v
        verdicts[#verdicts + 1] = v and (v > 0.5 and "A" or v < 0.5 and "B" or "T") or false
        why = why or w
      elseif rep.ok then
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
             finish = cut, mass = masses[1] and masses }
    else
      local r, consistent = pair_outcome(verdicts[1], verdicts[2])
      -- With probabilities: the mean of P(x wins) over both orders.
      if pa[1] and pa[2] then r = (pa[1] + 1 - pa[2]) / 2 end
      rewards[pr.x] = r
      if pr.y then rewards[pr.y] = 1 - r end
      ix = { status = "ok", cached = false, raw = raw, source = self.source,
             verdicts = { verdicts[1], verdicts[2] }, consistent = consistent,
             p_first = pa[1], p_second = pa[2] and 1 - pa[2], mass = masses[1] and masses }
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
