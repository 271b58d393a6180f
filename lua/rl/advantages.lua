-- rl.advantages(rewards, opts) -> adv, info: per-sample advantages for policy
-- gradients, computed within groups of samples of the same prompt (GRPO-style).
--
-- opts:
--   group      samples per prompt; consecutive runs of `group` rewards form a group
--              (the layout rl.generate gives with n = group). Default: one group.
--   baseline   "group": subtract the mean of the group's rewards;
--              "rloo": subtract the mean of the *other* samples' rewards (leave one
--              out, an unbiased baseline).
--   normalize  "std": (r - baseline) / (std + eps) with the group's sample standard
--              deviation (n - 1, as torch.std and TRL do); "mean": r - baseline;
--              "none": the raw reward, no baseline.
--   eps        added to the std (default 1e-6).
--   skip_zero_var  groups whose rewards are all equal carry no signal: their
--              samples get nil (no gradient) instead of 0.
--   rtol, atol rewards count as equal when max - min <= max(rtol * max|r|, atol)
--              over the group (defaults 1e-9 and 1e-12). Rewards computed the same
--              way in doubles differ by a few ulps (1e-16 relative), and a group
--              mean of equal rewards need not round to them (0.8 * 8 / 8), so an
--              exact test misses constant groups and std normalisation blows the
--              residue up to ~1e-10 advantages. 1e-9 leaves a margin of 10^6 over
--              rounding and stays far below any difference a scorer means (a judge's
--              scale step, a KL penalty of 0.02 * 1e-4); the floor covers rewards near
--              0, where a relative test is meaningless (0.1 + 0.2 - 0.3 = 5.6e-17).
--   n          number of samples (default: rewards.n, else the largest index
--              rounded up to whole groups, which handles a list ending in nils).
--
-- A nil reward (could not be had) is left out of the group's statistics and its
-- sample gets a nil advantage, which the engine treats as "no gradient". A group
-- with fewer than two rewards, or all equal (within rtol/atol), is a zero-variance
-- group: reported in info.zero_var (count) and info.zero_var_groups (group numbers),
-- advantages exactly 0 (the raw rewards with normalize="none").
--
-- Errors (kind="value"): a reward that is not a number or not finite (NaN, +-inf: a
-- missing reward must be nil, and rl.score makes it so), bad options, or rewards so
-- large that the group's statistics overflow. No NaN ever reaches an advantage.
local batch = require "rl.batch"
local core = require "rl.core"

local M = {}

local function value_error(msg, ...)
  error(core.error{kind = "value", message = "rl.advantages: " .. msg:format(...)}, 3)
end

local BASELINES = {group = true, rloo = true}
local NORMALIZE = {std = true, mean = true, none = true}

function M.advantages(rewards, opts)
  opts = opts or {}
  if type(rewards) ~= "table" then value_error("rewards must be a list, got %s", type(rewards)) end
  local explicit = opts.n or (math.type(rewards.n) == "integer" and rewards.n)
  local n = batch.len(rewards, opts.n)
  local group = opts.group or n
  if not explicit and math.type(group) == "integer" and group > 0 and n % group ~= 0 then
    -- rewards from rl.score may end in nils, which `#` and the largest key do not
    -- see; the real count is a whole number of groups, and the missing tail gets
    -- nil advantages either way.
    n = (n // group + 1) * group
  end
  local baseline = opts.baseline or "group"
  local normalize = opts.normalize or "std"
  local eps = opts.eps or 1e-6
  if not BASELINES[baseline] then
    value_error("baseline must be \"group\" or \"rloo\", got %s", tostring(baseline))
  end
  if not NORMALIZE[normalize] then
    value_error("normalize must be \"std\", \"mean\" or \"none\", got %s", tostring(normalize))
  end
  if math.type(group) ~= "integer" or group < 1 then
    value_error("group must be an integer >= 1, got %s", tostring(group))
  end
  if n > 0 and n % group ~= 0 then
    value_error("%d rewards do not split into groups of %d", n, group)
  end
  local rtol, atol = opts.rtol or 1e-9, opts.atol or 1e-12
  for name, v in pairs{rtol = rtol, atol = atol} do
    if type(v) ~= "number" or not (v >= 0 and v < math.huge) then
      value_error("%s must be a finite number >= 0, got %s", name, tostring(v))
    end
  end
  for i = 1, n do
    local r = rewards[i]
    if r ~= nil and type(r) ~= "number" then
      value_error("reward %d is a %s, not a number", i, type(r))
    end
    if r ~= nil and not (r > -math.huge and r < math.huge) then
      value_error("reward %d is %s, not a finite number (a missing reward is nil)", i,
                  r ~= r and "NaN" or tostring(r))
    end
  end

  local adv = {}
  local info = {n = n, groups = n // group, missing = 0, zero_var = 0, zero_var_groups = {},
                skipped = 0}
  for g = 1, n // group do
    local first, last = (g - 1) * group + 1, g * group
    local sum, cnt, lo, hi = 0, 0, math.huge, -math.huge
    for i = first, last do
      local r = rewards[i]
      if r ~= nil then
        sum, cnt = sum + r, cnt + 1
        lo, hi = math.min(lo, r), math.max(hi, r)
      end
    end
    info.missing = info.missing + (group - cnt)
    local mean = cnt > 0 and sum / cnt or 0
    local ss = 0
    for i = first, last do
      local r = rewards[i]
      if r ~= nil then ss = ss + (r - mean) ^ 2 end
    end
    local std = cnt > 1 and math.sqrt(ss / (cnt - 1)) or 0
    local zero = cnt < 2 or hi - lo <= math.max(rtol * math.max(-lo, hi), atol)
    if zero and cnt > 0 then
      info.zero_var = info.zero_var + 1
      info.zero_var_groups[#info.zero_var_groups + 1] = g
    end
    for i = first, last do
      local r = rewards[i]
      local a
      if r == nil then
        a = nil
      elseif zero and opts.skip_zero_var then
        a = nil
        info.skipped = info.skipped + 1
      elseif normalize == "none" then
        a = r
      else
        local b = mean
        if baseline == "rloo" then
          b = cnt > 1 and (sum - r) / (cnt - 1) or r
        end
        if zero then
          a = 0.0
        else
          a = r - b
          if normalize == "std" then a = a / (std + eps) end
          if not (a > -math.huge and a < math.huge) then
            value_error("group %d: the advantage of reward %d is not finite (rewards this " ..
                        "large overflow the group's statistics); rescale the rewards", g, i)
          end
        end
      end
      adv[i] = a
    end
  end
  return adv, info
end

return M
