-- rl.judge{model=...}: a local model as the judge (text and logprobs verdicts), with
-- builtin:tiny in a worker (real engine, real deadlines) and, for the verdict logic a
-- random model cannot exercise, a scripted stand-in with the model handle's methods.
package.path = arg[0]:gsub("[^/]+$", "") .. "?.lua;" .. package.path
local t = require "tap"
local rl = require "rl"

local function near(a, b, tol, msg)
  t.ok(type(a) == "number" and math.abs(a - b) <= (tol or 1e-9),
       (msg or "near") .. (": %s vs %s"):format(tostring(a), tostring(b)))
end

local DIGITS = {}
for d = 1, 9 do DIGITS[#DIGITS + 1] = tostring(d) end

-- A stand-in for an rl.model handle: generate answers by answer(prompt, k); next_logprobs
-- returns dist(prompt) = {[candidate] = probability} (the rest of the mass elsewhere).
local function scripted(answer, dist)
  local m = { generate_calls = 0, next_calls = 0, seen = {} }
  function m:info() return { path = "scripted", version = 0 } end
  function m:generate(prompts, opts)
    self.generate_calls = self.generate_calls + 1
    self.last_opts = opts
    local out = {}
    for i, p in ipairs(prompts) do
      self.seen[#self.seen + 1] = p
      local a = answer(p, #self.seen)
      if type(a) == "table" then error(a, 0) end
      out[i] = { prompt = p, text = a, finish = "stop", prompt_ids = { 1, 2 }, ids = { 3 } }
    end
    return out
  end
  function m:next_logprobs(prompts, cands)
    self.next_calls = self.next_calls + 1
    local r = { logprobs = {}, top = {}, top_logprob = {} }
    for i, p in ipairs(prompts) do
      local d = dist and dist(p) or {}
      local row = {}
      for k, c in ipairs(cands) do row[k] = math.log(d[c] or 1e-12) end
      r.logprobs[i], r.top[i], r.top_logprob[i] = row, " The", math.log(0.01)
    end
    return r
  end
  return m
end

local function completion_of(p) return p:match("%[The Start of the Response%]\n(.-)\n%[The End") end

t.test("config: one of endpoint/model; logprobs settings checked", function()
  local m = scripted(function() return "[[5]]" end)
  t.raises(function() rl.judge {} end, "either 'endpoint'")
  t.raises(function() rl.judge { model = {} } end, "rl.model handle")
  t.raises(function() rl.judge { model = m, verdict = "logprobs", scale = { 1, 10 } } end, "single digits")
  t.raises(function() rl.judge { model = m, verdict = "logprobs", votes = 3 } end, "votes")
  t.raises(function() rl.judge { model = m, verdict = "logprobs", scale = { 0, 1 }, choices = { yes = 2 } } end,
           "scale")
  t.raises(function() rl.judge { model = m, verdict = "probs" } end, "verdict")
  t.raises(function() rl.judge { model = m, min_mass = 0.3 } end, "logprobs")
  t.raises(function() rl.judge { model = m, verdict = "logprobs", min_mass = 2 } end, "min_mass")
end)

t.test("text verdicts from a model: one batched generate, greedy, votes, typed parse failures", function()
  local m = scripted(function(p)
    local c = completion_of(p)
    if c == "junk" then return "2+2 = 4" end
    return "Fine.\nRating: [[" .. #c .. "]]"
  end)
  local j = rl.judge { model = m }
  local r, info = rl.score(j, { { prompt = "q", text = "xxxx" }, { prompt = "q", text = "junk" } })
  t.eq(m.generate_calls, 1, "all prompts in one generate call")
  t.eq(m.last_opts.temperature, 0)
  near(r[1], 3 / 9)
  t.eq(r[2], nil); t.eq(info[2].kind, "parse"); t.eq(info[2].raw, "2+2 = 4")
  t.eq(info[1].source, "judge:scripted@0")
  -- votes: k prompts per sample in the same call, the median of those that parsed
  local k = 0
  local mv = scripted(function() k = k + 1; return ({ "[[2]]", "no idea", "[[8]]", "[[9]]" })[k] end)
  r, info = rl.score(rl.judge { model = mv, votes = 4, temperature = 0.7 }, { { prompt = "q", text = "a" } })
  t.eq(mv.generate_calls, 1); t.eq(#mv.seen, 4)
  near(r[1], (8 - 1) / 9)
end)

t.test("a model that fails is a typed failure per sample; config errors raise", function()
  local m = scripted(function() return rl.error { kind = "crash", message = "worker died" } end)
  local r, info = rl.score(rl.judge { model = m }, { { prompt = "q", text = "a" }, { prompt = "q", text = "b" } })
  t.eq(r[1], nil); t.eq(info[1].kind, "crash"); t.eq(info[2].kind, "crash")
  t.eq(info.summary.failures.crash, 2)
  local bad = scripted(function() return rl.error { kind = "config", message = "too long" } end)
  t.raises(function() rl.score(rl.judge { model = bad }, { { prompt = "q", text = "a" } }) end, "too long")
end)

t.test("pairwise text verdicts from a model swap the order", function()
  local m = scripted(function(p)
    local a, b = p:match("Assistant A's Answer%]\n(.-)\n.-Assistant B's Answer%]\n(.-)\n")
    return #a > #b and "[[A]]" or "[[B]]"
  end)
  local r, info = rl.score(rl.judge { model = m, mode = "pairwise" },
                           { { prompt = "q", text = "long answer" }, { prompt = "q", text = "short" } })
  t.eq(m.generate_calls, 1); t.eq(#m.seen, 2)
  t.eq(r[1], 1); t.eq(r[2], 0)
  t.eq(info[1].verdicts[1], "A"); t.eq(info[1].verdicts[2], "B"); t.eq(info[1].consistent, true)
end)

t.test("logprobs: expected score over the verdicts, renormalised; mass; min_mass", function()
  local m = scripted(nil, function(p)
    if completion_of(p) == "vague" then return { ["3"] = 0.1, ["7"] = 0.1 } end
    return { ["2"] = 0.5, ["8"] = 0.3 } -- mass 0.8
  end)
  local j = rl.judge { model = m, verdict = "logprobs" }
  local r, info = rl.score(j, { { prompt = "q", text = "a" }, { prompt = "q", text = "vague" } })
  t.eq(m.next_calls, 2, "one fingerprint probe, then one call for the batch")
  local ev = (0.5 * 2 + 0.3 * 8) / 0.8
  near(info[1].score, ev, 1e-6); near(r[1], (ev - 1) / 8, 1e-6)
  near(info[1].mass, 0.8, 1e-6); near(info[1].probs["2"], 0.625, 1e-6)
  t.eq(r[2], nil); t.eq(info[2].kind, "parse"); near(info[2].mass, 0.2, 1e-6)
  t.match(info[2].message, "20%.0%% of the judge's next%-token probability")
  t.match(info[2].message, '" The"')
  -- choices: yes/no with several spellings per value
  local yn = scripted(nil, function() return { [" yes"] = 0.3, yes = 0.3, no = 0.2 } end)
  r, info = rl.score(rl.judge { model = yn, verdict = "logprobs", scale = { 0, 1 },
                                choices = { yes = 1, [" yes"] = 1, no = 0 } }, { { prompt = "q", text = "a" } })
  near(r[1], 0.6 / 0.8, 1e-6); near(info[1].mass, 0.8, 1e-6)
end)

t.test("logprobs pairwise: P(A) and P(B) averaged over both orders", function()
  local m = scripted(nil, function(p)
    local a = p:match("Assistant A's Answer%]\n(.-)\n")
    -- position bias: A is favoured, more so when the long answer is first
    if a == "long answer" then return { A = 0.9, B = 0.1 } end
    return { A = 0.6, B = 0.4 }
  end)
  local r, info = rl.score(rl.judge { model = m, mode = "pairwise", verdict = "logprobs" },
                           { { prompt = "q", text = "long answer" }, { prompt = "q", text = "short" } })
  near(r[1], (0.9 + 0.4) / 2, 1e-6); near(r[2], 1 - (0.9 + 0.4) / 2, 1e-6)
  t.eq(info[1].verdicts[1], "A"); t.eq(info[1].verdicts[2], "A"); t.eq(info[1].consistent, false)
end)

-- The real engine: builtin:tiny in a worker.
local w <close> = rl.model { path = "builtin:tiny", transport = "worker", threads = 1 }
-- builtin:tiny reads 256 bytes: short rubrics.
local SHORT = "Q: {prompt}\nA: {completion}\nScore ({lo}-{hi}): "

t.test("builtin:tiny logprobs judge equals the model's own next-token distribution", function()
  local s = { prompt = "Sort: c a b", text = "a b c" }
  local j = rl.judge { model = w, verdict = "logprobs", min_mass = 0, rubric = SHORT }
  local r, info = rl.score(j, { s })
  local got = w:next_logprobs({ j:prompt_for(s) }, DIGITS)
  local mass, ev = 0, 0
  for k, lp in ipairs(got.logprobs[1]) do
    mass = mass + math.exp(lp); ev = ev + math.exp(lp) * k
  end
  near(info[1].mass, mass, 1e-9); near(info[1].score, ev / mass, 1e-9)
  near(r[1], (ev / mass - 1) / 8, 1e-9)
  -- A random model's digits carry ~10/259 of the mass: below the default threshold.
  local r2, info2 = rl.score(rl.judge { model = w, verdict = "logprobs", rubric = SHORT }, { s })
  t.eq(r2[1], nil); t.eq(info2[1].kind, "parse")
end)

t.test("builtin:tiny text judge: no verdict is kind parse, never 0; all in one call", function()
  local r, info = rl.score(rl.judge { model = w, max_tokens = 8, rubric = SHORT },
                           { { prompt = "p", text = "a" }, { prompt = "p", text = "b" } })
  t.eq(r[1], nil); t.eq(r[2], nil)
  t.eq(info[1].kind, "parse"); t.eq(info.summary.requests, 1)
  t.ok(info.summary.completion_tokens > 0 and info.summary.completion_tokens <= 16)
end)

t.test("the judge's deadline is a per-sample timeout; the worker comes back", function()
  local j = rl.judge { model = w, max_tokens = 200, timeout = 0.05, rubric = SHORT }
  local many = {}
  for i = 1, 16 do many[i] = { prompt = "p" .. i, text = "a" } end
  local r, info = rl.score(j, many)
  t.eq(r[1], nil); t.eq(info[1].kind, "timeout"); t.eq(info.summary.failures.timeout, 16)
  local r2 = rl.score(rl.judge { model = w, verdict = "logprobs", min_mass = 0, rubric = SHORT }, { many[1] })
  t.ok(r2[1] ~= nil, "the next call starts a new worker")
end)

-- Whether pid has exited (gone, or a zombie not yet reaped by this host).
local function exited(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return true end
  local st = f:read("a"):match("%) (%a)")
  f:close()
  return st == "Z" or st == "X"
end

t.test("a judge worker that dies is kind crash per sample; the next call has a new one", function()
  local j = rl.judge { model = w, verdict = "logprobs", min_mass = 0, rubric = SHORT }
  local pid = w:info().pid
  os.execute("kill -9 " .. pid)
  local deadline = rl.fs.monotonic() + 30
  while not exited(pid) and rl.fs.monotonic() < deadline do rl.fs.sleep(0.02) end
  t.ok(exited(pid), "the worker was killed")
  local r, info = rl.score(j, { { prompt = "a", text = "b" }, { prompt = "c", text = "d" } })
  t.eq(r[1], nil); t.eq(info[1].kind, "crash"); t.eq(info[2].kind, "crash")
  t.match(info[1].message, "killed by signal SIGKILL")
  local r2 = rl.score(j, { { prompt = "a", text = "b" } })
  t.ok(type(r2[1]) == "number", "scored by the restarted worker")
end)

t.test("cache: keyed by the judge model's identity (weights fingerprint) and rubric", function()
  local path = os.tmpname()
  local s = { { prompt = "q", text = "a" } }
  local j1 = rl.judge { model = w, verdict = "logprobs", min_mass = 0, cache = path, rubric = SHORT }
  local r1 = rl.score(j1, s)
  local r1b, info1b = rl.score(j1, s)
  t.eq(info1b[1].cached, true); t.eq(r1b[1], r1[1]); t.eq(info1b.summary.requests, 0)
  -- Same path, other weights (another seed): its own scores, no stale hit.
  local other <close> = rl.model { path = "builtin:tiny", seed = 7, threads = 1, transport = "worker" }
  local j2 = rl.judge { model = other, verdict = "logprobs", min_mass = 0, cache = path, rubric = SHORT }
  local r2, info2 = rl.score(j2, s)
  t.eq(info2[1].cached, false); t.ok(r2[1] ~= r1[1], "another model's score")
  -- Same model, another rubric: a miss too.
  local j3 = rl.judge { model = w, verdict = "logprobs", min_mass = 0, cache = path,
                        rubric = "Question: {prompt}\nAnswer: {completion}\nScore (1-9): " }
  local _, info3 = rl.score(j3, s)
  t.eq(info3[1].cached, false)
  j1:close(); j2:close(); j3:close()
  os.remove(path)
end)

t.done()
