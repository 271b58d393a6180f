-- rl.checkpoint: crash-safe checkpoint directories inside a run directory.
--
-- A checkpoint is `ckpt-<step>/` holding
--   <model name>/   what model:save(dir) wrote (weights, optimizer, scheduler, engine RNG)
--   state.json      step, Lua's math.random state, dataset cursors, recipe tables
--   manifest.json   every other file's path, size and SHA-256; written last
-- It is built in `.tmp-ckpt-<step>-<pid>/` in the same directory (so the rename
-- stays on one filesystem), every file and directory is fsynced, the manifest is
-- written, and the directory is renamed into place and its parent fsynced. So a
-- `ckpt-*` directory is complete unless the disk lied; the manifest catches that
-- (and hand edits), and such a checkpoint is skipped with a warning.
--
-- Test hook: RLHOST_TEST_CHECKPOINT_DELAY=<seconds> sleeps before each part is
-- written and before the rename, so a test can kill the process mid-checkpoint.
local core = require "rl.core"
local fs = require "rl.fs"
local json = require "rl.json"
local random = require "rl.random"

local M = {}
M.FORMAT = 1

local RESERVED = {["state.json"] = true, ["manifest.json"] = true}

local function delay()
  local d = tonumber(os.getenv("RLHOST_TEST_CHECKPOINT_DELAY") or "")
  if d and d > 0 then fs.sleep(d) end
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
M.read = read

-- Files below root as sorted relative paths (directories walked, links skipped).
local function walk(root, rel, out)
  for _, name in ipairs(fs.list(rel and (root .. "/" .. rel) or root)) do
    local r = rel and (rel .. "/" .. name) or name
    local st = fs.stat(root .. "/" .. r)
    if st and st.type == "dir" then
      walk(root, r, out)
    elseif st and st.type == "file" then
      out[#out + 1] = r
    end
  end
  return out
end

-- Checkpoints in dir, newest first: {step=, name=, path=}.
function M.list(dir)
  local out = {}
  if not fs.stat(dir) then return out end
  for _, name in ipairs(fs.list(dir)) do
    local step = name:match("^ckpt%-(%d+)$")
    if step then out[#out + 1] = {step = tonumber(step), name = name, path = dir .. "/" .. name} end
  end
  table.sort(out, function(a, b) return a.step > b.step end)
  return out
end

-- verify(path) -> manifest | nil, reason
function M.verify(path)
  local text = read(path .. "/manifest.json")
  if not text then return nil, "no manifest.json (incomplete)" end
  local ok, man = pcall(json.decode, text)
  if not ok or type(man) ~= "table" or type(man.files) ~= "table" then
    return nil, "manifest.json is not a valid manifest"
  end
  if math.type(man.format) ~= "integer" or man.format > M.FORMAT then
    return nil, ("written in checkpoint format %s, newer than this rlhost's %d")
      :format(tostring(man.format), M.FORMAT)
  end
  local has_state = false
  for _, f in ipairs(man.files) do
    if type(f) ~= "table" or type(f.path) ~= "string" or f.path:find("%.%.") then
      return nil, "manifest.json lists a bad entry"
    end
    local p = path .. "/" .. f.path
    local st = fs.stat(p)
    if not st or st.type ~= "file" then return nil, ("%s is missing"):format(f.path) end
    if st.size ~= f.size then
      return nil, ("%s has %d bytes, the manifest says %s")
        :format(f.path, st.size, tostring(f.size))
    end
    if fs.sha256(p) ~= f.sha256 then
      return nil, ("%s does not match its SHA-256"):format(f.path)
    end
    if f.path == "state.json" then has_state = true end
  end
  if not has_state then return nil, "state.json is missing" end
  return man
end

-- usable(c) -> state | nil, why: checkpoint c (from list) verifies and its state.json
-- belongs to its directory.
local function usable(c)
  local man, why = M.verify(c.path)
  if not man then return nil, why end
  local ok, state = pcall(json.decode, read(c.path .. "/state.json"))
  if ok and type(state) == "table" and state.step == c.step then return state end
  return nil, "state.json does not match its directory"
end

-- The newest checkpoint that verifies, warning about each one skipped.
-- latest(dir [, warn]) -> {step=, path=, state=} | nil; warn(message, path).
function M.latest(dir, warn)
  warn = warn or function(msg) io.stderr:write("rlhost: warning: " .. msg .. "\n") end
  for _, c in ipairs(M.list(dir)) do
    local state, why = usable(c)
    if state then return {step = c.step, path = c.path, name = c.name, state = state} end
    warn(("skipping checkpoint %s: %s"):format(c.path, why), c.path)
  end
  return nil
end

-- Remove what an interrupted write left behind: `.tmp-*` entries (checkpoints
-- being written or deleted) and `NAME.tmp-XXXXXX` files of atomic writes.
function M.clean(dir)
  local removed = {}
  if not fs.stat(dir) then return removed end
  for _, name in ipairs(fs.list(dir)) do
    if name:find("^%.tmp%-") or name:find("%.tmp%-%w%w%w%w%w%w$") then
      fs.remove(dir .. "/" .. name)
      removed[#removed + 1] = name
    end
  end
  return removed
end

-- prune(dir, keep [, known]) -> removed, unusable: keep the newest `keep` usable
-- checkpoints (by step) and remove older usable ones. Only a checkpoint that verifies
-- counts: one that does not (a cut manifest, a flipped byte) is neither counted nor
-- removed, and comes back in `unusable` ({path=, name=, why=}) for the caller to
-- report, since it may be all a user can recover from. `known` (path -> true or the
-- reason it is unusable) remembers verdicts across calls, so each checkpoint is
-- hashed once; a caller marks what it just wrote as true. A checkpoint is renamed to
-- a temp name first so a crash mid-removal never leaves a half tree under a
-- checkpoint's name.
function M.prune(dir, keep, known)
  local removed, unusable = {}, {}
  if not keep or keep < 1 then return removed, unusable end
  known = known or {}
  local pid, kept = fs.getpid(), 0
  for _, c in ipairs(M.list(dir)) do
    local verdict = known[c.path]
    if verdict == nil then
      local state, why = usable(c)
      verdict = state and true or why
      known[c.path] = verdict
    end
    if verdict ~= true then
      unusable[#unusable + 1] = {path = c.path, name = c.name, why = verdict}
    elseif kept < keep then
      kept = kept + 1
    else
      local tmp = ("%s/.tmp-del-%s-%d"):format(dir, c.name, pid)
      fs.rename(c.path, tmp)
      fs.remove(tmp)
      known[c.path] = nil
      removed[#removed + 1] = c.name
    end
  end
  return removed, unusable
end

local function restore_into(t, v)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  for _, k in ipairs(keys) do t[k] = nil end
  if type(v) == "table" then for k, x in pairs(v) do t[k] = x end end
end

-- Build checkpoint `step` in `tmp` and rename it into place (see write).
local function write_into(dir, tmp, step, parts, pid)
  fs.remove(tmp)
  fs.mkdir(tmp)
  local state = {format = M.FORMAT, step = step, random = random.state(),
                 models = {}, cursors = json.object(), tables = json.object()}
  for _, p in ipairs(parts.models or {}) do
    delay()
    local name, m = p[1], p[2]
    m:save(tmp .. "/" .. name)
    state.models[#state.models + 1] = name
  end
  for _, p in ipairs(parts.cursors or {}) do state.cursors[p[1]] = p[2]:state() end
  for _, p in ipairs(parts.tables or {}) do state.tables[p[1]] = p[2] end
  delay()
  local ok, text = pcall(json.encode, state, {sort_keys = true, indent = true})
  if not ok then
    fs.remove(tmp)
    error(core.error{kind = "value", message = "checkpoint: recipe state cannot be saved as JSON: "
                     .. tostring(type(text) == "table" and text.message or text)}, 0)
  end
  fs.write(tmp .. "/state.json", text .. "\n")
  local files = {}
  for _, rel in ipairs(walk(tmp, nil, {})) do
    local hex, size = fs.sha256(tmp .. "/" .. rel)
    files[#files + 1] = {path = rel, size = size, sha256 = hex}
  end
  fs.fsync_tree(tmp)
  delay()
  fs.write(tmp .. "/manifest.json",
           json.encode({format = M.FORMAT, step = step, files = files},
                       {sort_keys = true, indent = true}) .. "\n")
  delay()
  local final = ("%s/ckpt-%d"):format(dir, step)
  if fs.stat(final) then  -- a corrupt leftover of an earlier attempt at this step
    local old = ("%s/.tmp-old-ckpt-%d-%d"):format(dir, step, pid)
    fs.rename(final, old)
    fs.remove(old)
  end
  fs.rename(tmp, final)
  local bytes = 0
  for _, f in ipairs(files) do bytes = bytes + f.size end
  return final, bytes
end

-- write(dir, step, parts) -> path, bytes. parts = {models={{name, obj}...},
-- cursors={{name, obj}...}, tables={{name, table}...}} in a fixed order.
-- A write that fails (a full disk, a file-size limit) removes its partial
-- directory and raises an error that says so and names the checkpoint kept, so a
-- user sees "disk full, ckpt-N is safe" rather than a bare OSError, and no
-- half-written tree is left to take space.
function M.write(dir, step, parts)
  local pid = fs.getpid()
  local tmp = ("%s/.tmp-ckpt-%d-%d"):format(dir, step, pid)
  local ok, path, bytes = pcall(write_into, dir, tmp, step, parts, pid)
  if ok then return path, bytes end
  local err = path
  if type(err) == "table" and err.kind == "interrupted" then error(err, 0) end
  pcall(fs.remove, tmp)
  local prev
  for _, c in ipairs(M.list(dir)) do
    if c.step ~= step and M.verify(c.path) then prev = c; break end
  end
  local why = type(err) == "table" and tostring(err.message or err.kind) or tostring(err)
  error(core.error{kind = type(err) == "table" and err.kind or "io",
                   retryable = type(err) == "table" and err.retryable or false,
                   message = ("checkpoint %s/ckpt-%d not written: %s; %s"):format(
                     dir, step, why, prev and ("the previous checkpoint " .. prev.path
                                                .. " is kept (" .. require("rl.run").how("resume", true)
                                                .. " continues from it)")
                                           or "no earlier checkpoint exists")}, 0)
end

-- restore(c, parts): load a checkpoint found by latest() into the registered
-- objects. Models first: a checkpoint of another model fails there (config) before
-- anything else changes.
function M.restore(c, parts, warn)
  warn = warn or function(msg) io.stderr:write("rlhost: warning: " .. msg .. "\n") end
  local st = c.state
  local saved = {}
  for _, nm in ipairs(st.models or {}) do saved[nm] = true end
  for _, p in ipairs(parts.models or {}) do
    if saved[p[1]] then
      p[2]:restore(c.path .. "/" .. p[1])
    else
      warn(("checkpoint %s has no model '%s'; it keeps its initial weights"):format(c.path, p[1]))
    end
  end
  for _, p in ipairs(parts.cursors or {}) do
    local s = st.cursors and st.cursors[p[1]]
    if s then
      p[2]:set_state(s)
    else
      warn(("checkpoint %s has no cursor for '%s'"):format(c.path, p[1]))
    end
  end
  for _, p in ipairs(parts.tables or {}) do
    local s = st.tables and st.tables[p[1]]
    if s ~= nil then restore_into(p[2], s)
    else warn(("checkpoint %s has no state '%s'"):format(c.path, p[1])) end
  end
  if st.random then random.set_state(st.random) end
end

-- find(path [, name]) -> directory, checkpoint: where model `name` (default
-- "model") of a checkpoint is, for model:restore() in evaluation recipes. `path` is
-- a checkpoint directory or a run directory (its newest complete checkpoint).
function M.find(path, name)
  name = name or "model"
  local function cfg(msg, ...)
    error(core.error{kind = "config", message = msg:format(...), where = "rlhost: "}, 0)
  end
  local st = fs.stat(path)
  if not st or st.type ~= "dir" then cfg("no checkpoint or run directory at %s", path) end
  local c
  if fs.stat(path .. "/manifest.json") or path:match("ckpt%-%d+/?$") then
    local man, why = M.verify(path)
    if not man then cfg("checkpoint %s is not usable: %s", path, why) end
    c = {path = path, step = man.step}
  else
    c = M.latest(path)
    if not c then cfg("%s holds no complete checkpoint", path) end
  end
  local dir = c.path .. "/" .. name
  if not fs.stat(dir) then cfg("checkpoint %s has no '%s'", c.path, name) end
  return dir, c
end

M.reserved = RESERVED
return M
