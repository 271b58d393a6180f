-- rl.advantages and the batching helpers (rl.chunks, rl.mean, ...).
local t = require "tap"
local rl = require "rl"

local function near(a, b, msg)
  t.ok(a ~= nil and b ~= nil and math.abs(a - b) < 1e-9,
       ("%s: got %s, want %s"):format(msg or "near", tostring(a), tostring(b)))
end

t.test("group baseline with std normalisation matches hand computation", function()
  local adv, info = rl.advantages({1, 0, 0, 1, 0.5, 0.5, 0.5, 1.5}, {group = 4})
  -- group 1: mean .5, sample std sqrt(1/3)
  local s = math.sqrt(1 / 3)
  near(adv[1], 0.5 / (s + 1e-6)); near(adv[2], -0.5 / (s + 1e-6))
  -- group 2: mean .75, deviations -.25,-.25,-.25,.75; ss=.75, std=.5
  near(adv[5], -0.25 / (0.5 + 1e-6)); near(adv[8], 0.75 / (0.5 + 1e-6))
  t.eq(info.groups, 2); t.eq(info.zero_var, 0); t.eq(info.missing, 0)
end)

t.test("normalize=mean subtracts the group mean only; none keeps raw rewards", function()
  local adv = rl.advantages({1, 2, 3, 10, 10, 40}, {group = 3, normalize = "mean"})
  near(adv[1], -1); near(adv[2], 0); near(adv[3], 1); near(adv[6], 20)
  local raw = rl.advantages({1, 2, 3}, {group = 3, normalize = "none"})
  t.eq(raw[1], 1); t.eq(raw[3], 3)
end)

t.test("rloo baseline leaves each sample out of its own baseline", function()
  local adv = rl.advantages({1, 0, 0, 0}, {group = 4, baseline = "rloo", normalize = "mean"})
  near(adv[1], 1); near(adv[2], -1 / 3)
end)

t.test("nil rewards are left out of baselines and get nil advantages", function()
  local r = {1, nil, 0, nil}
  local adv, info = rl.advantages(r, {group = 4, normalize = "mean", n = 4})
  near(adv[1], 0.5); t.eq(adv[2], nil); near(adv[3], -0.5); t.eq(adv[4], nil)
  t.eq(info.missing, 2); t.eq(info.n, 4)
  -- trailing nils with r.n
  local adv2, info2 = rl.advantages({1, 0, n = 4}, {group = 2, normalize = "mean"})
  near(adv2[1], 0.5); t.eq(adv2[3], nil); t.eq(info2.missing, 2)
  -- without n: a list from rl.score ending in nils is rounded up to whole groups
  local r3 = {}
  r3[1], r3[2], r3[3], r3[4], r3[5] = 1, 0, 1, 0, 1  -- 6 samples, the last nil
  local adv3, info3 = rl.advantages(r3, {group = 3, normalize = "mean"})
  t.eq(info3.n, 6); t.eq(adv3[6], nil); near(adv3[4], -1 / 2 - 0.0); near(adv3[5], 0.5)
end)

t.test("zero-variance groups are reported, and skipped when asked", function()
  local adv, info = rl.advantages({1, 1, 1, 0, 1, 0.5}, {group = 3})
  t.eq(adv[1], 0.0); t.eq(adv[2], 0.0)
  t.eq(info.zero_var, 1); t.eq(info.zero_var_groups[1], 1)
  local adv2, info2 = rl.advantages({1, 1, 1, 0, 1, 0.5}, {group = 3, skip_zero_var = true})
  t.eq(adv2[1], nil); t.eq(adv2[3], nil); t.ok(adv2[4] ~= nil)
  t.eq(info2.skipped, 3)
  -- a group with a single reward carries no signal either
  local _, info3 = rl.advantages({1, nil}, {group = 2, n = 2})
  t.eq(info3.zero_var, 1)
end)

t.test("bad input raises kind=value naming the problem", function()
  local e = t.raises(function() rl.advantages({1, 2, 3}, {group = 2, n = 3}) end, "groups of 2")
  t.eq(e.kind, "value")
  t.raises(function() rl.advantages({1, "x"}) end, "reward 2")
  t.raises(function() rl.advantages({1, 2}, {baseline = "ema"}) end, "baseline")
  t.raises(function() rl.advantages({1, 2}, {normalize = "z"}) end, "normalize")
  t.raises(function() rl.advantages({1, 0 / 0}) end, "NaN")
end)

t.test("rl.chunks works as a list and as an iterator, with aligned lists", function()
  local s = {"a", "b", "c", "d", "e"}
  local c = rl.chunks(s, 2)
  t.eq(#c, 3); t.eq(c[3][1], "e"); t.eq(#c[1], 2)
  local seen = {}
  for mb in rl.chunks(s, 2) do seen[#seen + 1] = table.concat(mb) end
  t.eq(table.concat(seen, ","), "ab,cd,e")
  -- twice over the same list
  local n = 0
  for _ in c do n = n + 1 end
  for _ in c do n = n + 1 end
  t.eq(n, 6)
  local adv = {0.5, nil, 1, nil, 2}
  local got = {}
  for mb, a in rl.chunks(s, 2, adv) do got[#got + 1] = mb[1] .. "=" .. tostring(a[1]) .. "/" .. tostring(a[2]) end
  t.eq(table.concat(got, " "), "a=0.5/nil c=1/nil e=2/nil")
  t.raises(function() rl.chunks(s, 0) end, "size")
end)

t.test("rl.mean ignores nils and reports the count; stats and helpers", function()
  local m, c = rl.mean({1, nil, 3, n = 4})
  t.eq(m, 2.0); t.eq(c, 2)
  local m0, c0 = rl.mean({})
  t.eq(m0, nil); t.eq(c0, 0)
  local st = rl.stats({1, 3, nil, n = 3})
  t.eq(st.mean, 2.0); t.eq(st.std, 1.0); t.eq(st.min, 1); t.eq(st.max, 3); t.eq(st.missing, 1)
  t.eq(table.concat(rl.repeat_each({"a", "b"}, 2)), "aabb")
  t.eq(table.concat(rl.flatten({{"a"}, {"b", "c"}})), "abc")
  t.eq(#rl.groups({1, 2, 3, 4}, 2), 2)
  t.eq(table.concat(rl.sorted_keys({b = 1, a = 2, [2] = 0, [1] = 0}), ","), "1,2,a,b")
end)

t.done()
