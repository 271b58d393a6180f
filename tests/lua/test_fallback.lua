-- rl.fallback: ordered chains of generators and scorers, the error policy, the
-- circuit breaker (with an injected clock), provenance and counts.
local t = require "tap"
local rl = require "rl"

local function gen(name, opts)
  opts = opts or {}
  local g = {calls = 0}
  function g:generate(prompts, o)
    self.calls = self.calls + 1
    if opts.fail then error(rl.error{kind = opts.fail, message = name .. " is down",
                                     retryable = opts.retryable}, 0) end
    local out = {}
    for i, p in ipairs(prompts) do
      for k = 1, (o and o.n or 1) do out[#out + 1] = {prompt = p, text = name .. i .. "." .. k} end
    end
    return out
  end
  return g
end

local function quiet_chain(spec)
  spec.quiet = true
  return rl.fallback(spec)
end

t.test("the first healthy member generates; its samples are on-policy", function()
  local a, b = gen("a"), gen("b")
  local fb = quiet_chain{a, b, names = {"policy", "teacher"}}
  local s = fb:generate({"x", "y"}, {n = 2})
  t.eq(#s, 4); t.eq(s[1].source, "policy"); t.eq(s[1].off_policy, nil)
  t.eq(b.calls, 0)
  t.eq(fb:stats().samples.policy, 4)
end)

t.test("an accepted error falls back; samples are marked off-policy; counts show it", function()
  local a, b = gen("a", {fail = "crash"}), gen("b")
  local fb = quiet_chain{a, b, names = {"policy", "teacher"}}
  local s = fb:generate({"x"}, {n = 3})
  t.eq(#s, 3); t.eq(s[1].source, "teacher"); t.eq(s[1].off_policy, true)
  local st = fb:stats()
  t.eq(st.fallbacks, 1); t.eq(st.failures.crash, 1); t.eq(st.failures_by_source.policy.crash, 1)
  t.eq(st.samples.teacher, 3); t.eq(st.samples.policy, 0)
end)

t.test("default policy: retryable, crash, timeout, http, rate_limit fall back; others propagate", function()
  for _, k in ipairs{"crash", "timeout", "http", "rate_limit"} do
    local fb = quiet_chain{gen("a", {fail = k}), gen("b")}
    t.eq(fb:generate({"x"})[1].source, "source2", k)
  end
  local fb = quiet_chain{gen("a", {fail = "parse", retryable = true}), gen("b")}
  t.eq(fb:generate({"x"})[1].source, "source2")
  local e = t.raises(function() quiet_chain{gen("a", {fail = "config"}), gen("b")}:generate({"x"}) end)
  t.eq(e.kind, "config")
  -- a plain Lua error (a bug) is never swallowed
  local bug = {generate = function() error("attempt to index a nil value") end}
  t.raises(function() quiet_chain{bug, gen("b")}:generate({"x"}) end, "index a nil")
  -- interrupted always stops, even with a policy that accepts everything
  local e2 = t.raises(function()
    quiet_chain{gen("a", {fail = "interrupted"}), gen("b"), on = function() return true end}:generate({"x"})
  end)
  t.eq(e2.kind, "interrupted")
end)

t.test("a custom on= policy decides by kind", function()
  local fb = quiet_chain{gen("a", {fail = "oom"}), gen("b"), on = function(err) return err.kind == "oom" end}
  t.eq(fb:generate({"x"})[1].source, "source2")
  t.raises(function()
    quiet_chain{gen("a", {fail = "crash"}), gen("b"), on = function(err) return err.kind == "oom" end}:generate({"x"})
  end, "a is down")
end)

t.test("every member failing raises the last error's kind", function()
  local fb = quiet_chain{gen("a", {fail = "crash"}), gen("b", {fail = "http"})}
  local e = t.raises(function() fb:generate({"x"}) end, "every source failed")
  t.eq(e.kind, "http")
end)

t.test("circuit breaker: skip after N failures, retry after the cooldown", function()
  local now = 0
  local a, b = gen("a", {fail = "timeout"}), gen("b")
  local fb = quiet_chain{a, b, breaker = {failures = 2, cooldown = 10}, clock = function() return now end}
  fb:generate({"x"}); fb:generate({"x"})
  t.eq(a.calls, 2)
  fb:generate({"x"})
  t.eq(a.calls, 2, "skipped while open")
  local st = fb:stats()
  t.eq(st.breaker_trips, 1); t.eq(st.skipped.source1, 1); t.eq(st.open.source1, true)
  now = 11
  fb:generate({"x"})
  t.eq(a.calls, 3, "tried again after the cooldown")
  -- it failed again: open again at once
  now = 12
  fb:generate({"x"})
  t.eq(a.calls, 3)
  -- recovers: a success closes the breaker
  now = 30
  a.generate = gen("a").generate
  t.eq(fb:generate({"x"})[1].source, "source1")
  t.eq(fb:stats().open.source1, false)
end)

t.test("nil members are skipped (optional teacher)", function()
  local teacher = nil
  local fb = quiet_chain{teacher and gen("t"), gen("native")}
  t.eq(fb:generate({"x"})[1].source, "source2")  -- names follow the written positions
  t.eq(#fb.members, 1)
end)

t.test("scorers: a raising scorer falls back for the whole batch", function()
  local judge = {score = function() error(rl.error{kind = "http", message = "503"}, 0) end}
  local native = function(s) return #s.text end
  local fb = quiet_chain{judge, native, names = {"judge", "native"}}
  local r, info = fb:score({{text = "ab"}, {text = "abc"}})
  t.eq(r[1], 2); t.eq(r[2], 3)
  t.eq(info[1].source, "native"); t.eq(info[1].fallback, true); t.eq(info[1].status, "ok")
  t.eq(fb:stats().failures.http, 2); t.eq(fb:stats().fallbacks, 2)  -- both count samples
end)

t.test("scorers: per-sample nil rewards fall through for just those samples", function()
  local judge = {}
  function judge:score(samples)
    local r, info = {}, {}
    for i, s in ipairs(samples) do
      if s.text == "?" then info[i] = {status = "error", kind = "parse", message = "no score"}
      else r[i] = 1.0; info[i] = {status = "ok"} end
    end
    return r, info
  end
  local native = function(s) return 0.25 end
  local fb = quiet_chain{judge, native, names = {"judge", "native"}}
  local r, info = fb:score({{text = "a"}, {text = "?"}, {text = "b"}})
  t.eq(r[1], 1.0); t.eq(r[2], 0.25); t.eq(r[3], 1.0)
  t.eq(info[1].source, "judge"); t.eq(info[2].source, "native"); t.eq(info[2].fallback, true)
  local st = fb:stats()
  t.eq(st.samples.judge, 2); t.eq(st.samples.native, 1); t.eq(st.failures.parse, 1)
  t.eq(st.fallbacks, 1)
end)

t.test("scorers: a reward nobody could give stays nil with a typed reason", function()
  local f1 = function() return nil, "no" end
  local f2 = function() error(rl.error{kind = "timeout", message = "slow"}, 0) end
  local fb = quiet_chain{f1, f2}
  local r, info = fb:score({{text = "a"}})
  t.eq(r[1], nil); t.eq(info[1].status, "error"); t.eq(info[1].kind, "timeout")
end)

-- A judge over a scripted endpoint: each request is one attempt of 10 prompt tokens
-- and 2 completion tokens; `answer(completion)` gives the reply text or a failure.
local function fake_judge(answer, cache)
  local ep = {attempts = 0}
  function ep:info() return {model = "fake", api = "openai-chat"} end
  function ep:stats()
    return {attempts = self.attempts, retries = 0, prompt_tokens = 10 * self.attempts,
            completion_tokens = 2 * self.attempts}
  end
  function ep:chat(reqs)
    local out = {}
    for i, r in ipairs(reqs) do
      self.attempts = self.attempts + 1
      local c = r.messages[#r.messages].content:match("%[The Start of the Response%]\n(.-)\n%[The End")
      local a = answer(c)
      out[i] = type(a) == "table" and a or {ok = true, texts = {a}, finish = {"stop"}, attempts = 1,
                                            latency_ms = 5}
    end
    return out
  end
  return rl.judge{endpoint = ep, cache = cache}, ep
end

-- Fault 9: info.summary through a chain said requests=0 while its judge made 8.
t.test("info.summary through a chain totals its members' requests, tokens and hits", function()
  local samples = {}
  for i = 1, 8 do samples[i] = {prompt = "p", text = ("x"):rep(i)} end
  local cache = os.tmpname()
  os.remove(cache)
  local judge = fake_judge(function(c) return c == "xxx" and "no score" or "[[5]]" end, cache)
  local fb = quiet_chain{judge, function() return 0.5 end, names = {"judge", "native"}}
  local r, info = rl.score(fb, samples)
  t.eq(r[3], 0.5); t.eq(info[3].source, "native")
  local sm = info.summary
  t.eq(sm.requests, 8); t.eq(sm.cache_hits, 0); t.eq(sm.retries, 0)
  t.eq(sm.prompt_tokens, 80); t.eq(sm.completion_tokens, 16)
  t.ok(sm.latency_ms >= 5, "latency of the judge's requests: " .. tostring(sm.latency_ms))
  t.eq(sm.ok, 8); t.eq(sm.failed, 0)
  t.eq(rl.score_summary().requests, 8, "rl.score_summary() is the outer call's")
  -- again: the 7 cached scores are hits, the unparsable one is asked again
  local _, info2 = rl.score(fb, samples)
  t.eq(info2.summary.cache_hits, 7); t.eq(info2.summary.requests, 1)
  os.remove(cache); os.remove(cache .. "-wal"); os.remove(cache .. "-shm")
  -- a judge that is down (raising through raise=true) still made its requests
  local down = fake_judge(function()
    return {ok = false, kind = "http", message = "503", retryable = true, attempts = 3}
  end)
  local fb2 = quiet_chain{down, function() return 1 end}
  local _, info3 = rl.score(fb2, samples, {raise = true})
  t.eq(info3.summary.requests, 8); t.eq(info3.summary.ok, 8)
  -- nested: a chain inside a weighted sum inside a chain
  local j4 = fake_judge(function() return "[[7]]" end)
  local mix = rl.reward.mix{{quiet_chain{j4, function() return 0 end}, 0.5},
                            {function() return 1 end, 0.5}}
  local _, info4 = rl.score(quiet_chain{mix, function() return 0 end}, samples)
  t.eq(info4.summary.requests, 8); t.eq(info4.summary.prompt_tokens, 80)
end)

t.test("a scorer returning all nils trips the breaker like a raising one", function()
  local now = 0
  local dead = {calls = 0}
  function dead:score(samples)
    self.calls = self.calls + 1
    local info = {}
    for i in ipairs(samples) do info[i] = {status = "error", kind = "http"} end
    return {}, info
  end
  local fb = quiet_chain{dead, function() return 1 end, breaker = {failures = 1, cooldown = 5},
                         clock = function() return now end}
  fb:score({{text = "a"}, {text = "b"}}); fb:score({{text = "a"}})
  t.eq(dead.calls, 1); t.eq(fb:stats().breaker_trips, 1)
  -- every sample it failed counts, as when only some fail (a judge whose every reply
  -- was cut off must show in the metrics as that many parse failures, not one)
  t.eq(fb:stats().failures.http, 2); t.eq(fb:stats().failures_by_source.source1.http, 2)
end)

t.test("one notice line on stderr the first time a fallback is taken", function()
  local dir = os.tmpname()
  t.write(dir, [[
local rl = require "rl"
local bad = {generate = function() error(rl.error{kind = "crash", message = "worker died"}, 0) end}
local good = {generate = function(_, p) return {{prompt = p[1], text = "t"}} end}
local fb = rl.fallback{bad, good, names = {"policy", "teacher"}, name = "gen"}
for _ = 1, 3 do fb:generate({"x"}) end
print(fb:stats().fallbacks)
]])
  local status, out, err = t.rlhost({dir})
  os.remove(dir)
  t.eq(status, 0); t.eq(out, "3\n")
  local n = 0
  for _ in err:gmatch("falling back") do n = n + 1 end
  t.eq(n, 1); t.match(err, "gen: policy failed %(crash: worker died%)")
end)

-- With a real model handle: its worker killed, rl.generate over the chain gets the
-- teacher's samples (marked off-policy); the next call has the policy back.
local have_engine = pcall(require, "rl.model") and rl.fs.stat((rl.home or ".") .. "/.venv/bin/python")
if not have_engine then
  t.skip("a crashed policy worker falls back to the teacher through rl.generate", "no engine here")
else
  t.test("a crashed policy worker falls back to the teacher through rl.generate", function()
    local m <close> = rl.model{path = "builtin:tiny", transport = "worker", device = "cpu", threads = 1, seed = 1}
    local teacher = {}
    function teacher:generate(prompts, opts)
      local out = {}
      for _, p in ipairs(prompts) do
        for j = 1, opts.n do out[#out + 1] = {text = "t" .. j, version = nil} end
      end
      return out
    end
    local fb = quiet_chain{m, teacher, names = {"policy", "teacher"}}
    local _, pid = m:_transport()
    t.kill_and_wait(pid)  -- dead for sure (a zombie until reaped), not after a guess
    local s = rl.generate(fb, {{prompt = "ab", id = 7}}, {n = 2, max_tokens = 3})
    t.eq(#s, 2); t.eq(s[1].source, "teacher"); t.eq(s[1].off_policy, true); t.eq(s[1].id, 7)
    t.eq(fb:stats().failures.crash, 1)
    local s2 = rl.generate(fb, {"cd"}, {n = 2, max_tokens = 3})
    t.eq(s2[1].source, "policy"); t.eq(s2[1].off_policy, nil)
    t.ok(type(s2[1].ids) == "table", "policy samples carry token ids")
  end)
end

t.done()
