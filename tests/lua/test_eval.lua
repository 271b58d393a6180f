-- rl.eval: pass@k, summaries, running scorers over generated samples, reports.
local t = require "tap"
local rl = require "rl"

local function near(a, b, msg)
  t.ok(a ~= nil and math.abs(a - b) < 1e-12, ("%s: got %s, want %s"):format(msg or "near", tostring(a), tostring(b)))
end

t.test("pass@k is the unbiased estimator", function()
  near(rl.eval.pass_at_k(5, 2, 1), 0.4)
  near(rl.eval.pass_at_k(5, 2, 2), 0.7)        -- 1 - C(3,2)/C(5,2)
  near(rl.eval.pass_at_k(5, 0, 3), 0.0)
  near(rl.eval.pass_at_k(5, 3, 3), 1.0)        -- fewer than k failures: certain
  t.eq(rl.eval.pass_at_k(2, 1, 3), nil)
end)

t.test("summary: mean, standard error, pass@k per prompt group, sources", function()
  local rewards = {1, 0, nil, 1, 1, 1, n = 6}
  local info = {{source = "judge"}, {source = "judge"}, {source = "judge", status = "error"},
                {source = "native"}, {source = "judge"}, {source = "judge"}}
  local row = rl.eval.summary(rewards, info, {n = 3, k = {1, 2}})
  t.eq(row.count, 6); t.eq(row.scored, 5); t.eq(row.missing, 1)
  near(row.mean, 0.8)
  near(row.stderr, math.sqrt(0.2) / math.sqrt(5))  -- sample std sqrt(.8*.2*5/4)=sqrt(.2)
  -- group 1: {1,0,nil} c=1 of 3; group 2: c=3
  near(row.pass_at["1"], (1 / 3 + 1) / 2)
  near(row.pass_at["2"], ((1 - 1 / 3) + 1) / 2)
  t.eq(row.sources.judge, 4); t.eq(row.sources.native, 1)
end)

local policy = {}
function policy:generate(prompts, opts)
  local out = {}
  for _, p in ipairs(prompts) do
    for j = 1, opts.n do out[#out + 1] = {prompt = p, text = p .. j} end
  end
  return out
end

t.test("run: generates n per prompt and scores with each scorer, in name order", function()
  local data = rl.dataset({"a", "bb", "ccc"})
  local rows, samples = rl.eval.run{source = policy, data = data, n = 2, k = {1, 2},
    scorers = {len = function(s) return #s.text end,
               exact = function(s) return s.text:sub(-1) == "1" and 1.0 or 0.0 end},
    model = "base"}
  t.eq(#samples, 6)
  t.eq(rows[1].scorer, "exact"); t.eq(rows[2].scorer, "len")
  near(rows[1].mean, 0.5); near(rows[1].pass_at["1"], 0.5); near(rows[1].pass_at["2"], 1.0)
  t.eq(rows[1].model, "base")
  local chain = rl.fallback{policy, names = {"policy"}, quiet = true}
  local rows2 = rl.eval.run{source = chain, data = {"a"}, n = 3, scorers = {function() return 1 end}}
  t.eq(rows2[1].generated_by.policy, 3); t.eq(rows2[1].scorer, "scorer1")
end)

t.test("report: Markdown, JSON and PNG; two models get a differences table", function()
  local dir = os.tmpname()
  os.remove(dir)
  local sc = {score = {score = function(_, samples)
    local r, info = {}, {}
    for i, s in ipairs(samples) do r[i] = #s.text / 4; info[i] = {status = "ok", source = "fake"} end
    return r, info
  end}}
  local a = rl.eval.run{source = policy, data = {"x", "yy"}, n = 2, scorers = sc, model = "sft"}
  local b = rl.eval.run{source = policy, data = {"xx", "yyy"}, n = 2, scorers = sc, model = "rl"}
  for _, r in ipairs(b) do a[#a + 1] = r end
  local paths, md = rl.eval.report(a, {dir = dir, title = "held-out"})
  t.match(md, "| model | scorer | mean ± s%.e%. |")
  t.match(md, "| sft | score | 0%.625 ± ")
  t.match(md, "| score | %+0%.250 |")
  local rep = rl.json.decode(t.slurp(paths.json))
  t.eq(rep.title, "held-out"); t.eq(#rep.rows, 2); t.eq(rep.rows[2].model, "rl")
  t.eq(t.slurp(paths.md), md)
  t.ok(paths.png and rl.fs.stat(paths.png), "report.png written")
  rl.fs.remove(dir)
end)

t.done()
