-- util.lua — what the rl modules share: errors that name the recipe line, and
-- "did you mean" for option names (a typo must not be silently ignored).
local core = require "rl.core"

local M = {}

-- Raise an rl error of `kind`. rl.core.error sets `where` to the first caller
-- outside lua/rl/, i.e. the recipe line that made the bad call.
function M.raise(kind, msg)
  error(core.error { kind = kind, message = msg }, 0)
end

-- " (did you mean 'x'?)" naming the entry of `known` (a set: name -> true) closest
-- to `name`, or "" when none is close.
function M.suggest(name, known)
  local best, bestd
  name = tostring(name)
  for k in pairs(known) do
    local d = core.distance(name, k)
    if d <= math.max(2, #name // 3) and (not bestd or d < bestd or (d == bestd and k < best)) then
      best, bestd = k, d
    end
  end
  return best and (" (did you mean '%s'?)"):format(best) or ""
end

-- Raise kind=config for the first key of `opts` (in byte order, so the message does
-- not depend on table order) that `known` does not hold: "WHAT: unknown option 'k'".
function M.check_options(opts, known, what)
  local bad = {}
  for k in pairs(opts) do
    if not known[k] then bad[#bad + 1] = tostring(k) end
  end
  if #bad > 0 then
    table.sort(bad)
    M.raise("config", ("%s: unknown option '%s'%s"):format(what, bad[1], M.suggest(bad[1], known)))
  end
end

return M
