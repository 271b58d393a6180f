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

-- Field case: equal rewards whose mean does not round-trip (0.8 * 8 / 8 ~= 0.8 in
-- doubles) left ~1e-32 of squared deviation, so `ss == 0` missed the constant group
-- and its advantages came out ~1e-10 instead of being skipped.
t.test("a group of equal rewards is zero-variance whatever the value", function()
  for _, v in ipairs{0.8, 0.2, 0.4, 0.1, 0.7, 0.35, 0, 0.25, 0.5, 1, -3.3, 1e6 + 0.1, 1e-9} do
    local r = {}
    for i = 1, 8 do r[i] = v end
    local adv, info = rl.advantages(r, {group = 8, skip_zero_var = true})
    t.eq(info.zero_var, 1, ("zero_var for 8 x %.17g"):format(v))
    t.eq(info.skipped, 8, ("skipped for 8 x %.17g"):format(v))
    for i = 1, 8 do t.eq(adv[i], nil, ("advantage %d for 8 x %.17g"):format(i, v)) end
    -- without skipping, every normalisation but "none" gives exactly 0
    for _, o in ipairs{{}, {normalize = "mean"}, {baseline = "rloo"},
                       {baseline = "rloo", normalize = "mean"}} do
      o.group = 8
      local a2 = rl.advantages(r, o)
      for i = 1, 8 do t.eq(a2[i], 0.0, ("advantage %d for 8 x %.17g"):format(i, v)) end
    end
  end
  -- equal up to the rounding of how they were computed (0.1 + 0.2 vs 0.3)
  local _, info = rl.advantages({0.1 + 0.2, 0.3, 0.3, 0.1 + 0.2}, {group = 4})
  t.eq(info.zero_var, 1, "0.1+0.2 and 0.3 are the same reward")
  -- near zero the absolute floor decides: 5.5e-17 is rounding, not a signal
  local _, info0 = rl.advantages({0.1 + 0.2 - 0.3, 0, 0, 0}, {group = 4})
  t.eq(info0.zero_var, 1, "rounding residue near zero")
end)

t.test("small real differences are still a signal", function()
  -- a KL-shaped reward: 0.8 - 0.02 * kl with kl differing by 1e-4
  local r = {0.8 - 0.02 * 0.0101, 0.8 - 0.02 * 0.0102, 0.8 - 0.02 * 0.0103, 0.8 - 0.02 * 0.0104}
  local adv, info = rl.advantages(r, {group = 4, skip_zero_var = true})
  t.eq(info.zero_var, 0)
  t.ok(adv[1] > 0 and adv[4] < 0, "the smallest penalty gets the largest advantage")
  local _, info2 = rl.advantages({1e6, 1e6 + 1e-3, 1e6, 1e6}, {group = 4})
  t.eq(info2.zero_var, 0, "1e-3 on 1e6 is a difference")
  -- the tolerance can be set
  local _, info3 = rl.advantages({1, 1.001, 1, 1}, {group = 4, rtol = 1e-2})
  t.eq(info3.zero_var, 1, "rtol=1e-2 makes 1 and 1.001 equal")
  t.raises(function() rl.advantages({1, 2}, {rtol = -1}) end, "rtol")
  t.raises(function() rl.advantages({1, 2}, {atol = 0 / 0}) end, "atol")
end)

-- Field case: a reward of inf (10 / #text on an empty completion) made the whole
-- group's advantages NaN without an error.
t.test("non-finite rewards are refused with a value error", function()
  for _, bad in ipairs{1 / 0, -1 / 0, 0 / 0} do
    local e = t.raises(function() rl.advantages({bad, 0.5, 0.2, 0.1}, {group = 4}) end,
                       "reward 1", "reward " .. tostring(bad))
    t.eq(e.kind, "value")
    t.match(e.message, "finite")
  end
  -- finite rewards whose statistics overflow must not leak NaN either
  local e = t.raises(function() rl.advantages({1.7e308, -1.7e308, 1.7e308, 0}, {group = 4}) end,
                     "finite")
  t.eq(e.kind, "value")
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
