-- rl.score, rl.judge (against a scripted fake endpoint), rl.reward.*, rl.endpoint config.
package.path = "tests/lua/?.lua;" .. package.path
local t = require "tap"
local rl = require "rl"

-- A fake endpoint: :chat returns replies from `answer(prompt_text, k)`.
local function fake(answer)
  local ep = { calls = 0, attempts = 0 }
  function ep:info() return { model = "fake", api = "openai-chat" } end
  function ep:stats() return { attempts = self.attempts, retries = 0, prompt_tokens = 0, completion_tokens = 0 } end
  function ep:chat(reqs)
    local out = {}
    for i, r in ipairs(reqs) do
      self.calls = self.calls + 1
      self.attempts = self.attempts + 1
      local a = answer(r.messages[#r.messages].content, self.calls)
      if type(a) == "table" then out[i] = a
      else out[i] = { ok = true, texts = { a }, finish = { "stop" }, attempts = 1, latency_ms = 1 } end
    end
    return out
  end
  return ep
end

local function completion_of(p) return p:match("%[The Start of the Response%]\n(.-)\n%[The End") end

t.test("function scorers: numbers, nil with reason, typed errors, bugs propagate", function()
  local r, info = rl.score(function(s)
    if s.text == "nil" then return nil, "no good" end
    if s.text == "err" then error(rl.error { kind = "parse", message = "bad" }) end
    if s.text == "str" then return "x" end
    return #s.text
  end, { { text = "abc" }, { text = "nil" }, { text = "err" }, { text = "str" } })
  t.eq(r[1], 3)
  t.eq(r[2], nil); t.eq(info[2].kind, "value"); t.eq(info[2].message, "no good")
  t.eq(info[3].kind, "parse")
  t.eq(info[4].kind, "value")
  t.eq(info.summary.ok, 1); t.eq(info.summary.failed, 3)
  t.eq(info.summary.failures.value, 2)
  t.raises(function() rl.score(function() error("a bug") end, { { text = "x" } }) end, "a bug")
  t.raises(function() rl.score(42, {}) end, "usage")
end)

t.test("judge: default [[n]] parsing, normalisation, parse failures keep raw text", function()
  local ep = fake(function(p)
    local c = completion_of(p)
    if c == "junk" then return "I like it a lot." end
    if c == "high" then return "Rating: [[12]]" end
    return "reasoning\nRating: [[" .. #c .. "]]"
  end)
  local j = rl.judge { endpoint = ep }
  local r, info = rl.score(j, { { prompt = "p", text = "xxxx" }, { prompt = "p", text = "junk" },
                                { prompt = "p", text = "high" }, { prompt = "p", text = "x" } })
  t.eq(r[1], 3 / 9)
  t.eq(r[2], nil); t.eq(info[2].kind, "parse"); t.eq(info[2].raw, "I like it a lot.")
  t.eq(r[3], nil); t.eq(info[3].kind, "parse"); t.match(info[3].message, "outside")
  t.eq(r[4], 0.0)
  t.eq(info[1].source, "judge:fake")
end)

t.test("judge: json field, Lua pattern and function parsers; scale", function()
  local ep = fake(function() return 'thinking... {"score": 4, "note": "ok"} and Score=2' end)
  local r = rl.score(rl.judge { endpoint = ep, parse = { json = "score" }, scale = { 0, 4 } }, { { text = "a" } })
  t.eq(r[1], 1.0)
  r = rl.score(rl.judge { endpoint = ep, parse = "Score=(%d+)", scale = { 0, 4 } }, { { text = "a" } })
  t.eq(r[1], 0.5)
  r = rl.score(rl.judge { endpoint = ep, parse = function() return 1 end, scale = { 0, 4 } }, { { text = "a" } })
  t.eq(r[1], 0.25)
  t.raises(function() rl.judge { endpoint = ep, scale = { 5, 1 } } end, "scale")
  t.raises(function() rl.judge { endpoint = ep, rubric = "/no/such/rubric.txt" } end, "rubric")
end)

t.test("judge: rubric placeholders and reference", function()
  local seen
  local ep = fake(function(p) seen = p return "[[5]]" end)
  rl.score(rl.judge { endpoint = ep, rubric = "Q={prompt} A={completion} R={reference} {unknown} [[{lo}-{hi}]]" },
           { { prompt = "q%1", text = "a{prompt}", reference = "ref" } })
  t.eq(seen, "Q=q%1 A=a{prompt} R=ref {unknown} [[1-10]]")
end)

t.test("judge: votes take the median of the parsed votes", function()
  local n = 0
  local ep = fake(function() n = n + 1 return ({ "[[2]]", "[[9]]", "[[3]]", "none", "[[7]]", "[[8]]" })[n] end)
  local r, info = rl.score(rl.judge { endpoint = ep, votes = 3 }, { { text = "a" }, { text = "b" } })
  t.eq(r[1], (3 - 1) / 9)
  t.eq(r[2], (7.5 - 1) / 9) -- one vote unparsable: median of the other two
  t.eq(ep.calls, 6)
end)

t.test("judge: transport failures are typed and raise only when asked", function()
  local ep = fake(function() return { ok = false, kind = "timeout", message = "slow", retryable = true, attempts = 3 } end)
  local j = rl.judge { endpoint = ep }
  local r, info = rl.score(j, { { text = "a" }, { text = "b" } })
  t.eq(r[1], nil); t.eq(info[1].kind, "timeout"); t.eq(info.summary.failures.timeout, 2)
  local e = t.raises(function() rl.score(j, { { text = "a" } }, { raise = true }) end)
  t.ok(rl.is_error(e, "timeout")); t.eq(e.retryable, true); t.ok(e.info)
  -- one sample ok, one down: raise=true tolerates, raise="any" does not
  local k = 0
  local ep2 = fake(function() k = k + 1 if k == 1 then return "[[5]]" end
    return { ok = false, kind = "http", message = "502", retryable = true } end)
  local r2 = rl.score(rl.judge { endpoint = ep2 }, { { text = "a" }, { text = "b" } }, { raise = true })
  t.ok(r2[1] ~= nil)
  k = 0
  t.raises(function() rl.score(rl.judge { endpoint = ep2 }, { { text = "a" }, { text = "b" } }, { raise = "any" }) end, "http")
  -- parse failures never raise: the judge is up
  local ep3 = fake(function() return "no score" end)
  local r3, info3 = rl.score(rl.judge { endpoint = ep3 }, { { text = "a" } }, { raise = true })
  t.eq(info3[1].kind, "parse")
  local ep4 = fake(function() return { ok = false, kind = "interrupted", message = "^C" } end)
  t.raises(function() rl.score(rl.judge { endpoint = ep4 }, { { text = "a" } }) end, "interrupted")
end)

t.test("judge: pairwise asks both orders; inconsistent verdicts are ties", function()
  local ep = fake(function(p)
    local a = p:match("Assistant A's Answer%]\n(.-)\n")
    local b = p:match("Assistant B's Answer%]\n(.-)\n")
    if a == "biased" or b == "biased" then return "[[A]]" end -- position bias
    return #a > #b and "[[A]]" or #b > #a and "[[B]]" or "[[C]]"
  end)
  local j = rl.judge { endpoint = ep, mode = "pairwise" }
  local r, info = rl.score(j, { { prompt = "p", text = "long one" }, { prompt = "p", text = "s" },
                                { prompt = "q", text = "biased" }, { prompt = "q", text = "other" } })
  t.eq(r[1], 1); t.eq(r[2], 0); t.eq(info[1].consistent, true)
  t.eq(r[3], 0.5); t.eq(r[4], 0.5); t.eq(info[3].consistent, false)
  t.eq(ep.calls, 4)
  local rb = rl.score(j, { { prompt = "p", text = "x" } }, { baseline = "longer" })
  t.eq(rb[1], 0)
  t.raises(function() rl.score(j, { { prompt = "p", text = "x" }, { prompt = "other", text = "y" } }) end, "partner")
end)

t.test("judge cache: hits skip the endpoint; settings change the key", function()
  local path = os.tmpname()
  os.remove(path)
  local ep = fake(function(p) return "[[" .. #completion_of(p) .. "]]" end)
  local s = { { prompt = "p", text = "abc" }, { prompt = "p", text = "abcd" } }
  local r1 = rl.score(rl.judge { endpoint = ep, cache = path }, s)
  t.eq(ep.calls, 2)
  local r2, info2 = rl.score(rl.judge { endpoint = ep, cache = path }, s)
  t.eq(ep.calls, 2); t.eq(info2[1].cached, true); t.eq(r2[2], r1[2]); t.eq(info2.summary.cache_hits, 2)
  rl.score(rl.judge { endpoint = ep, cache = path, temperature = 0.7 }, s)
  t.eq(ep.calls, 4)
  local c = rl.cache.open(path)
  t.eq(c:count(), 4)
  c:close()
  t.raises(function() c:count() end, "closed")
  os.remove(path); os.remove(path .. "-wal"); os.remove(path .. "-shm")
  t.raises(function() rl.cache.open("/nonexistent-dir/x.sqlite") end, "io")
end)

t.test("cache keys: SHA-256 over length-prefixed parts", function()
  t.eq(rl.cache.key("a", "b"), "facdde7abf1eac5b301273ab2e282f79bab0100f058833a7b8bdf9f80741e149") -- sha256("1:a1:b")
  t.ok(rl.cache.key("ab", "") ~= rl.cache.key("a", "b"))
  local big = string.rep("x", 100000)
  t.eq(rl.cache.key(big, 1), rl.cache.key(big, "1"))
  t.eq(#rl.cache.key(), 64)
end)

t.test("native rewards", function()
  local s = { { text = " 42 ", reference = "42" }, { text = "41", reference = "42" } }
  local r = rl.score(rl.reward.exact {}, s)
  t.eq(r[1], 1.0); t.eq(r[2], 0.0)
  r = rl.score(rl.reward.exact { strip = false }, s)
  t.eq(r[1], 0.0)
  local _, info = rl.score(rl.reward.exact {}, { { text = "x" } })
  t.eq(info[1].kind, "value")
  r = rl.score(rl.reward.contains { all = { "cat", "dog" } }, { { text = "cat dog" }, { text = "cat" } })
  t.eq(r[1], 1); t.eq(r[2], 0)
  r = rl.score(rl.reward.contains { fraction = { "cat", "dog" }, ignore_case = true }, { { text = "CAT" } })
  t.eq(r[1], 0.5)
  r = rl.score(rl.reward.regex { pattern = "^[0-9]+$" }, { { text = "123" }, { text = "12a" } })
  t.eq(r[1], 1); t.eq(r[2], 0)
  t.raises(function() rl.reward.regex { pattern = "(" } end, "config")
  r = rl.score(rl.reward.length { target = 4, unit = "words" }, { { text = "a b c d" }, { text = "a b" } })
  t.eq(r[1], 1.0); t.eq(r[2], 0.5)
  r = rl.score(rl.reward.json { required = { "a" } }, { { text = '{"a": 1}' }, { text = '{"b": 1}' } })
  t.eq(r[1], 1.0); t.eq(r[2], 0.0)
  r = rl.score(rl.reward.native("regex", "x"), { { text = "x" } })
  t.eq(r[1], 1)
  t.raises(function() rl.reward.native "nope" end, "unknown")
end)

t.test("mix: weighted sum; a missing part is a missing reward unless renormalized", function()
  local a = function(s) if s.text == "bad" then return nil end return 1 end
  local b = function() return 0.5 end
  local r, info = rl.score(rl.reward.mix { { a, 0.6 }, { b, 0.4 } }, { { text = "ok" }, { text = "bad" } })
  t.ok(math.abs(r[1] - 0.8) < 1e-12)
  t.eq(r[2], nil); t.eq(info[2].kind, "value")
  r = rl.score(rl.reward.mix { { a, 0.6 }, { b, 0.4 }, missing = "renormalize" }, { { text = "bad" } })
  t.ok(math.abs(r[1] - 0.5) < 1e-12)
end)

-- Field case: `10 / #s.text` on an empty completion is inf, which was reported as
-- status=ok and then turned a whole group's advantages into NaN.
t.test("non-finite rewards are missing rewards of kind value, for every scorer", function()
  local samples = { { text = "" }, { text = "ab" }, { text = "neg" }, { text = "nan" } }
  local function f(s)
    if s.text == "neg" then return -1 / 0 end
    if s.text == "nan" then return 0 / 0 end
    return 10 / #s.text
  end
  local function check(r, info, what, want2)
    t.eq(r[1], nil, what .. ": inf"); t.eq(info[1].status, "error", what)
    t.eq(info[1].kind, "value", what); t.match(info[1].message, "finite", what)
    t.eq(r[2], want2 or 5.0, what .. ": a finite reward stays")
    t.eq(r[3], nil, what .. ": -inf"); t.eq(info[3].kind, "value", what)
    t.eq(r[4], nil, what .. ": nan"); t.eq(info[4].kind, "value", what)
    t.eq(info.summary.ok, 1, what); t.eq(info.summary.failures.value, 3, what)
  end
  local r, info = rl.score(f, samples)
  check(r, info, "function")
  -- an object with :score (anything a recipe writes) goes through the same check
  local obj = { score = function(_, ss)
    local out = {}
    for i, s in ipairs(ss) do out[i] = f(s) end
    return out, {}
  end }
  r, info = rl.score(obj, samples)
  check(r, info, "object")
  -- a weighted sum: a part's inf is that part's missing reward, so the sum is missing
  -- (renormalized: the other parts carry it)
  r, info = rl.score(rl.reward.mix { { f, 0.5 }, { function() return 1 end, 0.5 } }, samples)
  check(r, info, "mix", 3.0)
  r = rl.score(rl.reward.mix { { f, 0.5 }, { function() return 1 end, 0.5 }, missing = "renormalize" },
               samples)
  t.eq(r[1], 1.0, "renormalized over the finite part")
  t.raises(function() rl.reward.mix { { f, 1 / 0 } } end, "finite")
  t.raises(function() rl.reward.mix { { f, 0 / 0 } } end, "finite")
  -- a judge's parse function returning inf is outside any scale; the scale is finite
  local ep = fake(function() return "whatever" end)
  r, info = rl.score(rl.judge { endpoint = ep, parse = function() return 1 / 0 end }, { { text = "a" } })
  t.eq(r[1], nil); t.eq(info[1].kind, "parse")
  t.raises(function() rl.judge { endpoint = ep, scale = { 0, 1 / 0 } } end, "scale")
  -- and the chain hands such a sample to its next scorer
  local chain = rl.fallback { f, function() return 0.25 end, quiet = true }
  r, info = rl.score(chain, samples)
  t.eq(r[1], 0.25); t.eq(info[1].source, "source2"); t.eq(r[2], 5.0)
  -- what rl.score returns feeds rl.advantages without error or NaN
  local group = { { text = "" }, { text = "ab" }, { text = "a" }, { text = "abcd" } }
  local adv = rl.advantages(rl.score(f, group), { group = 4, n = 4 })
  t.eq(adv[1], nil)
  for i = 2, 4 do t.ok(adv[i] == adv[i], "advantage " .. i .. " is a number") end
end)

-- Field case: a reply cut off at max_tokens mentions scores in passing ("a [[2]]
-- would mean ..., while a [[9]] would mean") and was scored 0.9.
local CUT = "The answer sorts the list. On this scale a [[2]] would mean mostly wrong, " ..
            "while a [[9]] would mean"
t.test("judge: a reply cut off at max_tokens has no verdict (kind parse, raw kept)", function()
  local ep = fake(function(p)
    if completion_of(p) == "cut" then
      return { ok = true, texts = { CUT }, finish = { "length" }, attempts = 1, latency_ms = 1 }
    end
    return "Rating: [[9]]"
  end)
  local r, info = rl.score(rl.judge { endpoint = ep }, { { prompt = "p", text = "cut" },
                                                         { prompt = "p", text = "whole" } })
  t.eq(r[1], nil); t.eq(info[1].status, "error"); t.eq(info[1].kind, "parse")
  t.eq(info[1].raw, CUT); t.match(info[1].message, "max_tokens")
  t.eq(info[1].finish, "length")
  t.eq(r[2], 8 / 9)
  t.eq(info.summary.failures.parse, 1)
  -- with votes, a cut-off vote does not count; the others decide
  local n = 0
  local ep2 = fake(function()
    n = n + 1
    if n == 2 then return { ok = true, texts = { CUT }, finish = { "length" }, attempts = 1 } end
    return n == 1 and "[[4]]" or "[[6]]"
  end)
  r = rl.score(rl.judge { endpoint = ep2, votes = 3 }, { { text = "a" } })
  t.eq(r[1], (5 - 1) / 9)
  -- pairwise: a cut-off verdict is no verdict
  local ep3 = fake(function(p)
    local a = p:match("Assistant A's Answer%]\n(.-)\n")
    if a == "x" then return { ok = true, texts = { "[[A]] is tempting but" }, finish = { "length" } } end
    return "[[B]]"
  end)
  r, info = rl.score(rl.judge { endpoint = ep3, mode = "pairwise" },
                     { { prompt = "p", text = "x" }, { prompt = "p", text = "y" } })
  t.eq(r[1], nil); t.eq(info[1].kind, "parse"); t.match(info[1].message, "max_tokens")
  t.eq(r[2], nil); t.eq(info[2].kind, "parse")
  -- so a fallback chain takes over for just that sample
  local chain = rl.fallback { rl.judge { endpoint = ep }, function() return 0.5 end, quiet = true }
  r, info = rl.score(chain, { { prompt = "p", text = "cut" }, { prompt = "p", text = "whole" } })
  t.eq(r[1], 0.5); t.eq(info[1].fallback, true); t.eq(r[2], 8 / 9)
end)

t.test("endpoint configuration errors", function()
  t.raises(function() rl.endpoint {} end, "url")
  t.raises(function() rl.endpoint { url = "ftp://x" } end, "http")
  t.raises(function() rl.endpoint { url = "http://x", api = "gemini" } end, "api")
  t.raises(function() rl.endpoint { url = "http://x", concurrency = 0 } end, "concurrency")
  t.raises(function() rl.endpoint { url = "http://x", headers = { ["X-A"] = "a\r\nb" } } end, "malformed")
  local ep = rl.endpoint { url = "http://127.0.0.1:9/v1/", model = "m" }
  t.eq(ep:info().url, "http://127.0.0.1:9/v1/chat/completions")
  t.match(tostring(ep), "openai%-chat m")
  ep:close()
  t.raises(function() ep:info() end, "closed")
  local e2 = rl.endpoint { url = "http://127.0.0.1:9/v1/messages", api = "anthropic" }
  t.eq(e2:info().url, "http://127.0.0.1:9/v1/messages")
end)

t.done()
