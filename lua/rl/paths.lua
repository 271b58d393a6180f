-- rl.paths: where `require` finds a recipe's own modules (tasks, rewards, helpers):
-- next to the recipe, in the current directory, then in rlhost's recipes/ (so
-- `require "tasks.sort"` works in a recipe saved anywhere), after rlhost's own
-- lua/. A module found nowhere is one line naming those places, not Lua's list of
-- twenty file names. The host calls install() once, before the recipe runs.
local M = {}

-- install(home, script_dir): package.path as above (script_dir nil: no recipe file),
-- and `require` wrapped for the one-line error. Returns the places, in order.
function M.install(home, script_dir)
  local entries, seen = {}, {}
  local function add(pattern)
    if not seen[pattern] then seen[pattern] = true; entries[#entries + 1] = pattern end
  end
  local places = {}
  local function add_dir(dir, what)
    add(dir .. "/?.lua")
    add(dir .. "/?/init.lua")
    if what then places[#places + 1] = ("%s (%s)"):format(dir, what) end
  end
  add_dir(home .. "/lua")
  if script_dir then add_dir(script_dir, "the recipe's directory") end
  add_dir(".", "the current directory")
  add_dir(home .. "/recipes", "rlhost's recipes")
  for e in package.path:gmatch("[^;]+") do add(e) end
  package.path = table.concat(entries, ";")
  M.places = places

  local original = require
  -- Errors pass through untouched except Lua's "module 'x' not found:" list.
  local function wrapped(name)
    local r = table.pack(pcall(original, name))
    if r[1] then return table.unpack(r, 2, r.n) end
    local err = r[2]
    local missing = type(err) == "string" and err:match("module '([^']*)' not found:")
    if not missing then error(err, 0) end
    local file = missing:gsub("%.", "/")
    local where = err:match("^(.-)module '")
    if where == "" then  -- the line that called require
      local info = debug.getinfo(2, "Sl")
      where = info and info.currentline > 0 and ("%s:%d: "):format(info.short_src, info.currentline)
              or "rlhost: "
    end
    -- A recipe whose modules are missing does not load: a config error (exit 2).
    error(require("rl.core").error{kind = "config", where = where, message =
      ("module '%s' not found: no %s.lua or %s/init.lua in %s")
        :format(missing, file, file, table.concat(places, ", "))}, 0)
  end
  _G.require = wrapped  -- the host's setup, like package.path: not a module's global
  return places
end

return M
