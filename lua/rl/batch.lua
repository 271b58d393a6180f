-- rl.batch: micro-batches and the small list statistics recipes log.
--
-- Lists of rewards or advantages may hold nil (a reward that could not be had), so
-- `#t` is not their length. Functions here take the length from an explicit `n`,
-- else `t.n`, else the largest integer key.
local M = {}

-- The length of a list that may have holes.
function M.len(t, n)
  if n then return n end
  if type(t) ~= "table" then error("expected a list, got " .. type(t), 3) end
  if math.type(t.n) == "integer" then return t.n end
  local max = #t
  for k in pairs(t) do  -- order does not matter: only the maximum is kept
    if math.type(k) == "integer" and k > max then max = k end
  end
  return max
end

-- Side data of chunk lists (aligned slices, chunk -> position), kept out of the
-- lists themselves so they stay plain arrays.
local meta = setmetatable({}, {__mode = "k"})

local chunk_mt = {}
-- `for mb, a, b in rl.chunks(samples, k, adv, other)`: calling the list of chunks
-- iterates it, so the result works both as a list and in a generic for. The
-- position comes from the previous chunk, so the same list can be iterated twice.
chunk_mt.__call = function(self, _, prev)
  local m = meta[self]
  local i = prev ~= nil and m.index[prev] + 1 or 1
  if i > #self then return nil end
  local extra = m.aligned[i]
  if extra then return self[i], table.unpack(extra, 1, m.naligned) end
  return self[i]
end

-- rl.chunks(list, size, ...) -> chunks: consecutive slices of at most `size`
-- elements. Extra lists (advantages, rewards; nil holes allowed) are sliced at the
-- same places, so `for mb, adv in rl.chunks(samples, 8, adv)` keeps them aligned.
function M.chunks(list, size, ...)
  if type(list) ~= "table" then error("rl.chunks: expected a list, got " .. type(list), 2) end
  if math.type(size) ~= "integer" or size < 1 then
    error("rl.chunks: size must be an integer >= 1, got " .. tostring(size), 2)
  end
  local n = #list
  local aligned = table.pack(...)
  local out = setmetatable({}, chunk_mt)
  local m = {aligned = {}, naligned = aligned.n, index = {}}
  meta[out] = m
  for first = 1, n, size do
    local last = math.min(first + size - 1, n)
    local c = table.move(list, first, last, 1, {})
    out[#out + 1] = c
    m.index[c] = #out
    if aligned.n > 0 then
      local ex = {}
      for j = 1, aligned.n do
        local a = aligned[j]
        local s = {}
        if a ~= nil then for i = first, last do s[i - first + 1] = a[i] end end
        ex[j] = s
      end
      m.aligned[#out] = ex
    end
  end
  return out
end

-- rl.slice(list, i, j): elements i..j (nil holes kept).
function M.slice(list, i, j)
  local s = {}
  for k = i, j do s[k - i + 1] = list[k] end
  return s
end

-- rl.sum(values [, n]) -> sum, count of the non-nil numbers.
function M.sum(values, n)
  n = M.len(values, n)
  local s, c = 0, 0
  for i = 1, n do
    local v = values[i]
    if v ~= nil then
      if type(v) ~= "number" then error(("rl.sum: element %d is a %s"):format(i, type(v)), 2) end
      s, c = s + v, c + 1
    end
  end
  return s, c
end

-- rl.mean(values [, n]) -> mean (nil when no value), count. nils are left out.
function M.mean(values, n)
  local s, c = M.sum(values, n)
  if c == 0 then return nil, 0 end
  return s / c, c
end

-- rl.stats(values [, n]) -> {mean=, std=, min=, max=, count=, missing=}: std is the
-- population standard deviation; nils are counted in `missing`.
function M.stats(values, n)
  n = M.len(values, n)
  local mean, c = M.mean(values, n)
  local r = {count = c, missing = n - c}
  if c == 0 then return r end
  local ss, lo, hi = 0, math.huge, -math.huge
  for i = 1, n do
    local v = values[i]
    if v ~= nil then
      ss = ss + (v - mean) ^ 2
      if v < lo then lo = v end
      if v > hi then hi = v end
    end
  end
  r.mean, r.std, r.min, r.max = mean, math.sqrt(ss / c), lo, hi
  return r
end

-- rl.repeat_each(list, k): each element k times in a row ({a,b},2 -> {a,a,b,b}),
-- the layout of n samples per prompt.
function M.repeat_each(list, k)
  local out = {}
  for _, v in ipairs(list) do
    for _ = 1, k do out[#out + 1] = v end
  end
  return out
end

-- rl.flatten(lists): one level ({{a,b},{c}} -> {a,b,c}).
function M.flatten(lists)
  local out = {}
  for _, l in ipairs(lists) do
    for _, v in ipairs(l) do out[#out + 1] = v end
  end
  return out
end

-- rl.groups(list, k): consecutive groups of k ({a,b,c,d},2 -> {{a,b},{c,d}}).
function M.groups(list, k, n)
  n = M.len(list, n)
  if n % k ~= 0 then
    error(("rl.groups: %d elements do not split into groups of %d"):format(n, k), 2)
  end
  local out = {}
  for g = 1, n // k do out[g] = M.slice(list, (g - 1) * k + 1, g * k) end
  return out
end

-- rl.sorted_keys(t): keys in a reproducible order (numbers first, then strings),
-- for code whose output must not depend on pairs() order.
function M.sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta < tb end
    return a < b
  end)
  return ks
end

-- rl.copy(t [, deep]): a shallow (or deep) copy; metatables are not copied.
function M.copy(t, deep)
  if type(t) ~= "table" then return t end
  local r = {}
  for k, v in pairs(t) do r[k] = (deep and type(v) == "table") and M.copy(v, true) or v end
  return r
end

return M
