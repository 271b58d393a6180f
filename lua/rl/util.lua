-- util.lua — what the rl modules share: errors that name the recipe line, "did you
-- mean" for option names (a typo must not be silently ignored), and what a path
-- names on disk (for settings that must be a directory, a file, ...).
local core = require "rl.core"

local M = {}

-- Raise an rl error of `kind`. rl.core.error sets `where` to the first caller
-- outside lua/rl/, i.e. the recipe line that made the bad call.
function M.raise(kind, msg)
  error(core.error { kind = kind, message = msg }, 0)
end

-- Raise kind=config with where = "rlhost: ": a setting or option whose value is
-- wrong, reported as one line (`rlhost: config error: ...`, exit status 2).
function M.config_error(msg, ...)
  error(core.error { kind = "config", message = msg:format(...), where = "rlhost: " }, 0)
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

-- Linux errno values io.open reports (the third result).
local ENOENT, ENOTDIR, ELOOP = 2, 20, 40

-- path_kind(path) -> what `path` names, following a symlink: "dir", "file", "other"
-- (a device, FIFO, socket), "link" (a symlink to something that is not a directory),
-- "dangling" (a symlink whose target does not exist), "loop" (symlinks in a loop),
-- or nil when nothing is there. Reads nothing and never blocks: a symlink is probed
-- as `path/`, which fails with ENOTDIR unless the target is a directory.
function M.path_kind(path)
  local st = require("rl.fs").stat(path)
  if not st then return nil end
  if st.type ~= "link" then return st.type end
  local f, _, code = io.open(path .. "/", "rb")
  if f then f:close(); return "dir" end
  if code == ENOENT then return "dangling" end
  if code == ELOOP then return "loop" end
  if code == ENOTDIR then return "link" end
  return "other"
end

local WHAT = {file = "is a regular file", other = "is not a directory",
              link = "is a symlink to something that is not a directory",
              dangling = "is a dangling symlink (its target does not exist)",
              loop = "is a symlink loop", dir = "is a directory"}

-- "'path' is a regular file" (etc.) for a path_kind.
function M.describe_path(path, kind)
  return ("'%s' %s"):format(path, WHAT[kind] or "does not exist")
end

-- The directory part of a path: "a/b" for "a/b/c", "." for "c", "/" for "/c".
function M.dirname(path)
  path = path:gsub("(.)/+$", "%1")
  local parent = path:match("^(.*)/[^/]*$")
  if parent == nil then return "." end
  if parent == "" then return "/" end
  return parent
end

-- dir_problem(path) -> nil when `path` is a directory or could be made one (mkdir -p:
-- nothing there, and its first existing ancestor is a directory), else why not,
-- naming the entry at fault ("'runs/x' is a regular file").
function M.dir_problem(path)
  local kind = M.path_kind(path)
  if kind == "dir" then return nil end
  if kind ~= nil then return M.describe_path(path, kind) end
  local parent = M.dirname(path)
  if parent == path or parent == "." or parent == "/" then return nil end
  return M.dir_problem(parent)
end

return M
