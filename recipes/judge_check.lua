-- recipes/judge_check.lua — measure a judge against a reference scorer on held-out
-- samples before trusting its rewards: correlation, error and failure rates, each with
-- its standard error (lua/rl/stats.lua says which).
--
--   build/rlhost recipes/judge_check.lua judge_model=models/smollm2-135m-instruct \
--       verdict=logprobs scale=0,1 choices=yes=1,no=0 \
--       rubric=recipes/rubrics/has_number.txt reference=regex:[0-9] \
--       data=recipes/data/judge_check.jsonl
--   RL_TEACHER_URL=http://127.0.0.1:8080/v1 build/rlhost recipes/judge_check.lua   # an endpoint
--
-- data: JSON Lines rows {prompt, completion (or text), reference?, <fields>}: the
-- samples to grade, as a policy would have written them. reference: what the judge is
-- compared with, on [0, 1] —
--   task            the task's native reward (task=, default sort)
--   field:NAME      a number in each row (on reference_scale, default 0,1)
--   regex:PATTERN   1 when the completion matches the Lua pattern, else 0
--   max_words:N     1 when the completion has at most N words, else 0
-- The judge's rewards are on [0, 1] too (rl.judge normalises its scale), so the mean
-- absolute error is on that common scale. Pairwise (pairwise=true): samples with the
-- same prompt and different reference scores are paired (in file order, each sample
-- once); the judge compares each pair in both orders: accuracy = the judge prefers the
-- reference's better answer (a tie counts half), position bias = both orders got the
-- same letter (the judge picked a position, not an answer).
--
-- Writes out/judge_check.md and out/judge_check.json and prints the table.
local rl = require "rl"
local stats = require "rl.stats"
local raise = require("rl.util").raise

local cfg = rl.config {
  data = rl.setting{"recipes/data/judge_check.jsonl", type = "string"},
  reference = "regex:%d",
  task = rl.setting{"sort", module = "tasks"},
  reference_scale = "0,1",        -- lo,hi of a field reference
  judge_model = rl.optional "string", -- a local judge: a model directory or builtin:...
  judge_transport = rl.setting{"worker", choices = {"worker", "embedded"}},
  teacher_url = rl.setting{type = "string", env = "RL_TEACHER_URL"},
  teacher_model = rl.setting{"teacher", env = "RL_TEACHER_MODEL"},
  teacher_api = rl.setting{"openai-chat", env = "RL_TEACHER_API",
                           choices = {"openai-chat", "openai-completions", "anthropic"}},
  verdict = rl.setting{"logprobs", choices = {"text", "logprobs"}},
  rubric = rl.setting{"recipes/rubrics/has_number.txt", type = "string"},
  pairwise_rubric = "recipes/rubrics/has_number_pairwise.txt",
  scale = "0,1",                  -- the judge's scale: lo,hi
  choices = "yes=1,no=0",         -- logprobs verdict strings and their scores ("" = digits)
  min_mass = rl.setting{0.5, min = 0, max = 1},
  max_tokens = rl.setting{256, min = 1},
  system = rl.optional "string",
  pairwise = true,
  limit = rl.setting{0, min = 0}, -- the first `limit` rows (0: all)
  out = rl.setting{"runs/judge_check", dir = true},
  threads = rl.setting{0, min = 0},
  timeout = rl.setting{600, above = 0}, -- seconds per judge call
}

local function find(path)  -- default paths are relative to the rlhost tree
  if path:sub(1, 1) == "/" or rl.fs.stat(path) then return path end
  local alt = rl.home .. "/" .. path
  return rl.fs.stat(alt) and alt or path  -- missing either way: the reader names it
end

local function pair_of(s, what)
  local a, b = s:match("^%s*([-%d.]+)%s*,%s*([-%d.]+)%s*$")
  a, b = tonumber(a), tonumber(b)
  if not a or not b or not (b > a) then
    raise("config", ("setting '%s' must be 'lo,hi' with lo < hi (got '%s')"):format(what, s))
  end
  return math.tointeger(a) or a, math.tointeger(b) or b
end

-- The reference scorer: a function sample -> number in [0, 1] (or nil, why).
local function reference_of(spec)
  local kind, arg = spec:match("^(%w+):?(.*)$")
  if kind == "task" then return require("tasks." .. cfg.task).reward end
  if kind == "field" and arg ~= "" then
    local lo, hi = pair_of(cfg.reference_scale, "reference_scale")
    return function(s)
      local v = tonumber(s[arg])
      if not v then return nil, ("the row has no number in field '%s'"):format(arg) end
      return (v - lo) / (hi - lo)
    end
  end
  if kind == "regex" and arg ~= "" then
    return function(s) return (s.text or ""):find(arg) and 1 or 0 end
  end
  if kind == "max_words" and tonumber(arg) then
    local n = tonumber(arg)
    return function(s)
      local k = 0
      for _ in (s.text or ""):gmatch("%S+") do k = k + 1 end
      return k <= n and 1 or 0
    end
  end
  raise("config", ("setting 'reference' must be task, field:NAME, regex:PATTERN or " ..
                           "max_words:N (got '%s')"):format(spec))
end

local function choices_of(s)
  if s == "" then return nil end
  local out = {}
  for item in s:gmatch("[^,]+") do
    local k, v = item:match("^(.-)=([-%d.]+)$")
    if not k or k == "" then
      raise("config", ("setting 'choices' must be verdict=score,... (got '%s')"):format(s))
    end
    out[k] = tonumber(v)
  end
  return out
end

-- Inputs first: a bad data file, rubric or setting stops here (exit 2).
local reference = reference_of(cfg.reference)
local lo, hi = pair_of(cfg.scale, "scale")
local choices = choices_of(cfg.choices)
local rows = rl.dataset(find(cfg.data)):all()
if cfg.limit > 0 and #rows > cfg.limit then rows = rl.slice(rows, 1, cfg.limit) end
local samples = {}
for i, r in ipairs(rows) do
  local s = {}
  for k, v in pairs(r) do s[k] = v end
  s.text = r.text or r.completion
  if type(s.text) ~= "string" or type(s.prompt) ~= "string" then
    raise("config", ("%s: row %d needs 'prompt' and 'completion' (or 'text') strings")
                  :format(cfg.data, i))
  end
  samples[i] = s
end
for _, k in ipairs(cfg.pairwise and {"rubric", "pairwise_rubric"} or {"rubric"}) do
  local f, err = io.open(find(cfg[k]), "rb") -- before a judge model takes time to load
  if not f then raise("config", ("setting '%s': cannot read %s"):format(k, err)) end
  f:close()
end
if not cfg.judge_model and not cfg.teacher_url then
  raise("config", "no judge: set judge_model= (a local model) or RL_TEACHER_URL")
end

local judge_model, source
if cfg.judge_model then
  judge_model = rl.model{path = cfg.judge_model, transport = cfg.judge_transport,
                         threads = cfg.threads > 0 and cfg.threads or nil, timeout = cfg.timeout}
  source = {model = judge_model}
else
  source = {endpoint = rl.endpoint{url = cfg.teacher_url, model = cfg.teacher_model,
                                   api = cfg.teacher_api, timeout = cfg.timeout}}
end
local function judge(mode, rubric)
  local o = {mode = mode, verdict = cfg.verdict, rubric = rubric, system = cfg.system}
  for k, v in pairs(source) do o[k] = v end
  if mode == "pointwise" then o.scale = {lo, hi} end
  if cfg.verdict == "logprobs" then
    o.min_mass = cfg.min_mass
    if mode == "pointwise" then o.choices = choices end
  else
    o.max_tokens = cfg.max_tokens
  end
  return rl.judge(o)
end

-- Pointwise: the judge and the reference on every sample.
local ref, ref_info = rl.score(reference, samples)
local jr, jinfo = rl.score(judge("pointwise", find(cfg.rubric)), samples)
local n = #samples
local x, y = stats.paired(jr, ref, n)
local parse = jinfo.summary.failures.parse or 0
local results = {
  n = n, scored = jinfo.summary.ok, reference_scored = ref_info.summary.ok,
  failures = jinfo.summary.failures,
  parse_failure_rate = stats.proportion(parse, n),
  failure_rate = stats.proportion(jinfo.summary.failed, n),
  pearson = stats.pearson(x, y), spearman = stats.spearman(x, y), mae = stats.mae(x, y),
  judge_mean = stats.mean(x), reference_mean = stats.mean(y),
}
local masses = {}
for i = 1, n do if jinfo[i].mass then masses[#masses + 1] = jinfo[i].mass end end
if #masses > 0 then results.verdict_mass = stats.mean(masses) end
local binary = true
for _, v in ipairs(y) do if v ~= 0 and v ~= 1 then binary = false end end
if binary and #y > 0 then
  local agree = 0
  for i = 1, #x do if (x[i] >= 0.5 and 1 or 0) == y[i] then agree = agree + 1 end end
  results.accuracy = stats.proportion(agree, #x)  -- judge >= 0.5 read as "yes"
end

-- Pairwise: answers to the same prompt that the reference ranks differently.
if cfg.pairwise then
  local pending, pairs_, refs = {}, {}, {}
  for i, s in ipairs(samples) do
    local other = pending[s.prompt]
    if other and ref[other] and ref[i] and ref[other] ~= ref[i] then
      pairs_[#pairs_ + 1] = samples[other]; pairs_[#pairs_ + 1] = s
      refs[#refs + 1] = ref[other] > ref[i] and 1 or 0  -- 1: the first is better
      pending[s.prompt] = nil
    elseif ref[i] then
      pending[s.prompt] = i
    end
  end
  if #refs > 0 then
    local pr, pinfo = rl.score(judge("pairwise", find(cfg.pairwise_rubric)), pairs_)
    local right, biased, judged = 0, 0, 0
    for k = 1, #refs do
      local r = pr[2 * k - 1]
      if r then
        judged = judged + 1
        right = right + (r == 0.5 and 0.5 or ((r > 0.5 and 1 or 0) == refs[k] and 1 or 0))
        local v = pinfo[2 * k - 1].verdicts
        if v and v[1] == v[2] and v[1] ~= "T" then biased = biased + 1 end
      end
    end
    results.pairs = #refs
    results.pairwise_accuracy = stats.proportion(right, judged)
    results.position_bias_rate = stats.proportion(biased, judged)
    results.pairwise_failure_rate = stats.proportion(#refs - judged, #refs)
  end
end
if judge_model then judge_model:close() end

-- The table.
local function num(v, fmt) return v and (fmt or "%.3f"):format(v) or "n/a" end
local function pm(e) return e and e.value and (num(e.value) .. " ± " .. num(e.se)) or "n/a" end
local function corr(c)
  if not c.r then return "n/a (" .. (c.why or "?") .. ")" end
  return ("%s ± %s (95%% CI %s to %s)"):format(num(c.r), num(c.se), num(c.lo), num(c.hi))
end
local judge_name = cfg.judge_model or (cfg.teacher_model .. " at " .. cfg.teacher_url)
local md = {
  ("# Judge check: %s (verdict=%s) vs %s"):format(judge_name, cfg.verdict, cfg.reference), "",
  ("%d samples from %s; figures ± one standard error."):format(n, cfg.data), "",
  "| measure | value |", "|---|---|",
  ("| Spearman rho | %s |"):format(corr(results.spearman)),
  ("| Pearson r | %s |"):format(corr(results.pearson)),
  ("| mean absolute error (0-1 scale) | %s |"):format(pm(results.mae)),
  ("| parse-failure rate | %s |"):format(pm(results.parse_failure_rate)),
  ("| any-failure rate | %s |"):format(pm(results.failure_rate)),
  ("| judge mean / reference mean | %s / %s |"):format(pm(results.judge_mean), pm(results.reference_mean)),
}
if results.accuracy then md[#md + 1] = ("| accuracy (judge >= 0.5 vs reference) | %s |"):format(pm(results.accuracy)) end
if results.verdict_mass then md[#md + 1] = ("| verdict probability mass | %s |"):format(pm(results.verdict_mass)) end
if results.pairs then
  md[#md + 1] = ("| pairwise accuracy (%d pairs) | %s |"):format(results.pairs, pm(results.pairwise_accuracy))
  md[#md + 1] = ("| position-bias rate | %s |"):format(pm(results.position_bias_rate))
  md[#md + 1] = ("| pairwise failure rate | %s |"):format(pm(results.pairwise_failure_rate))
end
md[#md + 1] = ""
md[#md + 1] = "SEs: proportions and means sd/sqrt(n); correlations (1 - r^2)/sqrt(n-3), their " ..
              "intervals from Fisher's z (Spearman: Bonett-Wright variance)."
local text = table.concat(md, "\n") .. "\n"
rl.fs.mkdir(cfg.out)
rl.fs.write(cfg.out .. "/judge_check.md", text)
results.judge, results.verdict, results.reference, results.data = judge_name, cfg.verdict,
  cfg.reference, cfg.data
rl.fs.write(cfg.out .. "/judge_check.json", rl.json.encode(results, {sort_keys = true}) .. "\n")
io.stdout:write(text)
