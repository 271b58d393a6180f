-- rl.stats: agreement statistics for measuring a judge against a reference scorer
-- (recipes/judge_check.lua), each with its standard error. Pure Lua; inputs are
-- lists of numbers of equal length (pairs with a nil on either side are dropped by
-- `paired` first).
--
--   pearson(x, y)   -> {r=, se=, lo=, hi=, n=}  r: Pearson's correlation; lo/hi: 95%
--                      interval from Fisher's z (z = atanh r, SE(z) = 1/sqrt(n-3));
--                      se: the delta-method SE of r, (1 - r^2)/sqrt(n-3)
--   spearman(x, y)  -> the same for Spearman's rho (Pearson's r of average ranks,
--                      ties share their mean rank), with Bonett & Wright's (2000)
--                      SE(z) = sqrt((1 + rho^2/2)/(n-3))
--   mae(x, y)       -> {value=, se=, n=}  mean |x - y|; se: sd(|x - y|)/sqrt(n)
--   proportion(k, n)-> {value=, se=, n=}  k/n; se: sqrt(p(1-p)/n) (binomial)
--   mean(x)         -> {value=, se=, n=}  se: the sample sd (n-1)/sqrt(n)
--   ranks(x)        -> average ranks (1-based)
--   paired(x, y, n) -> the pairs (i = 1..n) where both are numbers, as two lists
-- A correlation of fewer than 4 pairs, or with a constant side, is undefined: nil
-- fields and why = "...".
local M = {}

local function sum(x)
  local s = 0
  for i = 1, #x do s = s + x[i] end
  return s
end

function M.paired(x, y, n)
  local a, b = {}, {}
  for i = 1, n or math.max(#x, #y) do
    if type(x[i]) == "number" and type(y[i]) == "number" then
      a[#a + 1], b[#b + 1] = x[i], y[i]
    end
  end
  return a, b
end

function M.mean(x)
  local n = #x
  if n == 0 then return { n = 0 } end
  local m = sum(x) / n
  if n < 2 then return { value = m, n = n } end
  local ss = 0
  for i = 1, n do ss = ss + (x[i] - m) ^ 2 end
  return { value = m, se = math.sqrt(ss / (n - 1)) / math.sqrt(n), n = n }
end

function M.proportion(k, n)
  if n == 0 then return { n = 0 } end
  local p = k / n
  return { value = p, se = math.sqrt(p * (1 - p) / n), n = n, k = k }
end

function M.mae(x, y)
  local d = {}
  for i = 1, #x do d[i] = math.abs(x[i] - y[i]) end
  return M.mean(d)
end

function M.ranks(x)
  local idx = {}
  for i = 1, #x do idx[i] = i end
  table.sort(idx, function(a, b) if x[a] ~= x[b] then return x[a] < x[b] end return a < b end)
  local r, i = {}, 1
  while i <= #idx do
    local j = i
    while j < #idx and x[idx[j + 1]] == x[idx[i]] do j = j + 1 end
    local avg = (i + j) / 2
    for k = i, j do r[idx[k]] = avg end
    i = j + 1
  end
  return r
end

local function raw_r(x, y)
  local n = #x
  local mx, my = sum(x) / n, sum(y) / n
  local sxy, sxx, syy = 0, 0, 0
  for i = 1, n do
    local dx, dy = x[i] - mx, y[i] - my
    sxy, sxx, syy = sxy + dx * dy, sxx + dx * dx, syy + dy * dy
  end
  if sxx == 0 or syy == 0 then return nil end
  return math.max(-1, math.min(1, sxy / math.sqrt(sxx * syy)))
end

local function atanh(r) return 0.5 * math.log((1 + r) / (1 - r)) end
local function tanh(z) local e = math.exp(2 * z) return (e - 1) / (e + 1) end

local function correlation(r, n, se_z)
  local out = { r = r, n = n }
  if n < 4 then out.r, out.why = nil, ("%d pairs (a correlation's SE needs 4 or more)"):format(n) return out end
  if r == nil then out.why = "one side is constant" return out end
  out.se = (1 - r * r) / math.sqrt(n - 3)
  if math.abs(r) < 1 then
    local z = atanh(r)
    out.lo, out.hi = tanh(z - 1.959964 * se_z), tanh(z + 1.959964 * se_z)
  else
    out.lo, out.hi = r, r
  end
  return out
end

function M.pearson(x, y)
  local n = #x
  local r = n >= 2 and raw_r(x, y) or nil
  return correlation(r, n, 1 / math.sqrt(math.max(n - 3, 1)))
end

function M.spearman(x, y)
  local n = #x
  local r = n >= 2 and raw_r(M.ranks(x), M.ranks(y)) or nil
  local se_z = r and math.sqrt((1 + r * r / 2) / math.max(n - 3, 1)) or nil
  return correlation(r, n, se_z)
end

return M
