-- rl.eval: scripted evaluation. Generate n samples per prompt of a dataset, score
-- them with one or more scorers, summarise (mean, standard error, pass@k, sources)
-- and write report.md, report.json and report.png.
--
--   local rows = rl.eval.run{source = policy, data = rl.dataset "heldout.jsonl",
--                            scorers = {native = rl.reward.native "task"},
--                            n = 4, k = {1, 4}, gen = {max_tokens = 48}, model = "rl"}
--   rl.eval.report(rows, {dir = "runs/demo/eval", title = "held-out"})
--
-- Comparing two checkpoints: run twice with different `model` labels and pass
-- both rows lists (concatenated) to report(); with exactly two models the report
-- adds the difference per scorer with its standard error.
local batch = require "rl.batch"
local core = require "rl.core"
local fs = require "rl.fs"
local json = require "rl.json"

local M = {}

-- Unbiased pass@k from n samples of which c passed (Chen et al., 2021):
-- 1 - C(n-c, k) / C(n, k), as a running product so it never overflows.
function M.pass_at_k(n, c, k)
  if k > n then return nil end
  if n - c < k then return 1.0 end
  local p = 1.0
  for i = n - c + 1, n do p = p * (1.0 - k / i) end
  return 1.0 - p
end

local function passes(r, pass)
  if r == nil then return false end
  if type(pass) == "function" then return pass(r) and true or false end
  return r >= pass
end

-- summary(rewards, info, opts) -> row
--   opts.n      samples per prompt (consecutive), for pass@k; default 1
--   opts.k      list of k for pass@k (each <= n); default {1}
--   opts.pass   a threshold (reward >= pass counts as passed; default 1.0) or a
--               function(reward) -> boolean
--   opts.count  number of samples when rewards ends in nils
-- row = {count=, scored=, missing=, mean=, std=, stderr=, min=, max=,
--        pass_at = {["1"]=...}, sources = {name=count}}
-- A missing reward counts as "not passed" in pass@k and is left out of the mean.
function M.summary(rewards, info, opts)
  opts = opts or {}
  local total = opts.count or batch.len(rewards, info and #info or nil)
  local st = batch.stats(rewards, total)
  local row = {count = total, scored = st.count, missing = st.missing, mean = st.mean,
               min = st.min, max = st.max}
  if st.count > 1 then
    local ss = 0
    for i = 1, total do
      local r = rewards[i]
      if r ~= nil then ss = ss + (r - st.mean) ^ 2 end
    end
    row.std = math.sqrt(ss / (st.count - 1))
    row.stderr = row.std / math.sqrt(st.count)
  elseif st.count == 1 then
    row.std, row.stderr = 0.0, nil
  end
  local n = opts.n or 1
  local pass = opts.pass or 1.0
  row.pass_at = json.object()
  if total > 0 and total % n == 0 then
    for _, k in ipairs(opts.k or {1}) do
      if k <= n then
        local sum = 0.0
        for g = 1, total // n do
          local c = 0
          for i = (g - 1) * n + 1, g * n do
            if passes(rewards[i], pass) then c = c + 1 end
          end
          sum = sum + M.pass_at_k(n, c, k)
        end
        row.pass_at[tostring(k)] = sum / (total // n)
      end
    end
  end
  row.sources = json.object()
  if info then
    for i = 1, total do
      local src = info[i] and info[i].source
      if src and rewards[i] ~= nil then row.sources[src] = (row.sources[src] or 0) + 1 end
    end
  end
  return row
end

local function generate(source, prompts, opts)
  local ok, g = pcall(require, "rl.generate")
  if ok and type(g) == "table" and g.generate then return g.generate(source, prompts, opts) end
  return source:generate(prompts, opts)
end

local function scorer_list(scorers)
  local out = {}
  if type(scorers) ~= "table" then
    error(core.error{kind = "config", message = "rl.eval.run: scorers must be a table"}, 3)
  end
  if scorers[1] ~= nil then
    for i, s in ipairs(scorers) do
      if type(s) == "table" and s[2] ~= nil and type(s[1]) == "string" then
        out[#out + 1] = {s[1], s[2]}
      else
        out[#out + 1] = {"scorer" .. i, s}
      end
    end
  else
    for _, name in ipairs(batch.sorted_keys(scorers)) do out[#out + 1] = {name, scorers[name]} end
  end
  return out
end

-- run{source=, data=, scorers=, n=, k=, pass=, gen=, limit=, model=, samples=}
-- -> rows, samples, scores: one summary row per scorer ({model=, scorer=, ...,
-- generated_by = {source=count}}).
-- `data` is a dataset or a list of rows/prompts; `limit` caps the prompts;
-- `samples` (already generated) skips generation. scores[name] = {rewards, info}.
function M.run(opts)
  local n = opts.n or 1
  local samples = opts.samples
  if not samples then
    local rows
    local data = opts.data
    if type(data) == "table" and data.all then rows = data:all() else rows = data end
    if type(rows) ~= "table" then
      error(core.error{kind = "config",
                       message = "rl.eval.run: data must be a dataset or a list"}, 2)
    end
    if opts.limit and #rows > opts.limit then rows = batch.slice(rows, 1, opts.limit) end
    local gen = batch.copy(opts.gen or {})
    gen.n = n
    samples = generate(opts.source, rows, gen)
  end
  local call_score = require("rl.fallback").call_score
  local out, scores = {}, {}
  for _, sc in ipairs(scorer_list(opts.scorers)) do
    local name, scorer = sc[1], sc[2]
    local rewards, info = call_score(scorer, samples, opts.score_opts)
    info = info or {}
    local row = M.summary(rewards, info, {n = n, k = opts.k, pass = opts.pass, count = #samples})
    row.model, row.scorer, row.n = opts.model or "model", name, n
    -- which generator made the samples (a fallback chain may have used several)
    local by = json.object()
    for _, smp in ipairs(samples) do
      if type(smp.source) == "string" then by[smp.source] = (by[smp.source] or 0) + 1 end
    end
    row.generated_by = by
    out[#out + 1] = row
    scores[name] = {rewards = rewards, info = info}
  end
  return out, samples, scores
end

local function fmt(x, digits)
  if x == nil then return "–" end
  return ("%." .. (digits or 3) .. "f"):format(x)
end

-- With exactly two models: per scorer, B - A and its standard error.
local function deltas(rows)
  local models = {}
  for _, r in ipairs(rows) do
    if not models[r.model] then models[#models + 1] = r.model; models[r.model] = true end
  end
  if #models ~= 2 then return nil end
  local a, b = models[1], models[2]
  local by = {}
  for _, r in ipairs(rows) do by[r.model .. "\0" .. r.scorer] = r end
  local out = {}
  for _, r in ipairs(rows) do
    if r.model == a then
      local rb = by[b .. "\0" .. r.scorer]
      if rb and r.mean and rb.mean then
        local se = (r.stderr and rb.stderr) and math.sqrt(r.stderr ^ 2 + rb.stderr ^ 2) or nil
        out[#out + 1] = {scorer = r.scorer, a = a, b = b, delta = rb.mean - r.mean, stderr = se}
      end
    end
  end
  return out
end

-- markdown(rows [, title]) -> a Markdown table (and a differences table for two models).
function M.markdown(rows, title)
  local ks = {}
  for _, r in ipairs(rows) do
    for k in pairs(r.pass_at or {}) do ks[k] = true end
  end
  local klist = {}
  for k in pairs(ks) do klist[#klist + 1] = tonumber(k) end
  table.sort(klist)
  local lines = {}
  if title then lines[#lines + 1] = "## " .. title; lines[#lines + 1] = "" end
  local head = {"model", "scorer", "mean ± s.e.", "scored", "missing"}
  for _, k in ipairs(klist) do head[#head + 1] = "pass@" .. k end
  head[#head + 1] = "sources"
  lines[#lines + 1] = "| " .. table.concat(head, " | ") .. " |"
  local sep = {}
  for i = 1, #head do sep[i] = i <= 2 and "---" or "---:" end
  sep[#sep] = "---"
  lines[#lines + 1] = "| " .. table.concat(sep, " | ") .. " |"
  for _, r in ipairs(rows) do
    local mean = r.mean and (fmt(r.mean) .. (r.stderr and (" ± " .. fmt(r.stderr)) or "")) or "–"
    local cells = {r.model or "", r.scorer or "", mean,
                   tostring(r.scored or 0), tostring(r.missing or 0)}
    for _, k in ipairs(klist) do cells[#cells + 1] = fmt(r.pass_at and r.pass_at[tostring(k)]) end
    local src = {}
    for _, s in ipairs(batch.sorted_keys(r.sources or {})) do
      src[#src + 1] = s .. " " .. r.sources[s]
    end
    cells[#cells + 1] = table.concat(src, ", ")
    lines[#lines + 1] = "| " .. table.concat(cells, " | ") .. " |"
  end
  local d = deltas(rows)
  if d and #d > 0 then
    lines[#lines + 1] = ""
    lines[#lines + 1] = ("| scorer | %s − %s | s.e. |"):format(d[1].b, d[1].a)
    lines[#lines + 1] = "| --- | ---: | ---: |"
    for _, x in ipairs(d) do
      lines[#lines + 1] = ("| %s | %+.3f | %s |"):format(x.scorer, x.delta, fmt(x.stderr))
    end
  end
  return table.concat(lines, "\n") .. "\n"
end

-- holdout(rows, n) -> train_rows, heldout_rows: the last n rows, at most a tenth of
-- them, kept out of training to evaluate on (a recipe given data= without
-- eval_data=: the task's own held-out set would measure another task). heldout_rows
-- is nil when there are fewer than 10 rows.
function M.holdout(rows, n)
  local k = math.min(n, #rows // 10)
  if k < 1 then return rows, nil end
  return batch.slice(rows, 1, #rows - k), batch.slice(rows, #rows - k + 1, #rows)
end

-- hold_out_given(data, {path=, n=, scored_by=, dataset_opts=}) -> data, heldout:
-- holdout() on a dataset given as data= without eval_data=, saying on stderr what
-- is evaluated (the last rows of `path`, `scored_by`), or that there is too little
-- data to evaluate on (heldout nil).
function M.hold_out_given(data, o)
  local dataset = require("rl.dataset").dataset
  local rows, held = M.holdout(data:all(), o.n)
  if not held then
    io.stderr:write(("rlhost: data=%s without eval_data= has %d rows, too few to hold any "
                     .. "out: no evaluation (give eval_data=)\n"):format(o.path, #data))
    return data, nil
  end
  io.stderr:write(("rlhost: data=%s without eval_data=: evaluating on its last %d rows, held "
                   .. "out of training, %s (eval_data= to choose, eval_every=0 for none)\n")
                  :format(o.path, #held, o.scored_by))
  return dataset(rows, o.dataset_opts), dataset(held)
end

-- samples_jsonl(generations) -> text: one JSON line per sample of each
-- {model=, samples=, scores=} (as rl.eval.run returns them): model, i, prompt,
-- completion (the generated text), reference, finish, length (tokens), source, and
-- per scorer its reward and reason: rewards = {native = 0.8}, reasons = {...}.
function M.samples_jsonl(generations)
  local lines = {}
  for _, g in ipairs(generations) do
    local names = batch.sorted_keys(g.scores or {})
    for i, s in ipairs(g.samples) do
      local rewards, reasons = json.object(), json.object()
      for _, name in ipairs(names) do
        local sc = g.scores[name]
        local r, inf = sc.rewards[i], sc.info[i] or {}
        rewards[name] = r == nil and json.null or r
        if inf.reason or inf.message then reasons[name] = inf.reason or inf.message end
      end
      lines[#lines + 1] = json.encode({
        model = g.model, i = i, prompt = s.prompt, completion = s.text, reference = s.reference,
        finish = s.finish, length = type(s.ids) == "table" and #s.ids or nil, source = s.source,
        rewards = rewards, reasons = reasons}, {sort_keys = true, replace_invalid_utf8 = true})
    end
  end
  return table.concat(lines, "\n") .. (#lines > 0 and "\n" or "")
end

-- report(rows, {dir=, name="report", title=, plot=true, generations=}) -> paths:
-- writes NAME.md, NAME.json (atomically), NAME.png (when Python and matplotlib are
-- there) and, given generations (see samples_jsonl), samples.jsonl beside them.
function M.report(rows, opts)
  opts = opts or {}
  local dir = opts.dir or "."
  local name = opts.name or "report"
  fs.mkdir(dir)
  local title = opts.title or "evaluation"
  local md = M.markdown(rows, title)
  local paths = {md = dir .. "/" .. name .. ".md", json = dir .. "/" .. name .. ".json"}
  fs.write(paths.md, md)
  local rep = {title = title, rows = rows, deltas = deltas(rows)}
  fs.write(paths.json, json.encode(rep, {sort_keys = true, indent = true}) .. "\n")
  if opts.generations then
    paths.samples = dir .. "/samples.jsonl"
    fs.write(paths.samples, M.samples_jsonl(opts.generations))
  end
  if opts.plot ~= false then
    local png = dir .. "/" .. name .. ".png"
    local ok, why = require("rl.run").plot({"--report", paths.json, "-o", png})
    if ok then paths.png = png
    else io.stderr:write("rlhost: report plot skipped: " .. tostring(why) .. "\n") end
  end
  return paths, md
end

return M
