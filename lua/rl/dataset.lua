-- rl.dataset(path | rows, opts) -> ds: prompts (and completions, references, any
-- other fields) from a JSON Lines file, served in batches with a cursor that
-- checkpoints save and restore.
--
-- opts:
--   shuffle   reorder each epoch (default false); the order depends only on `seed`
--             and the epoch number, never on math.random, so it is reproducible and
--             a resumed run sees the same batches.
--   seed      integer (default 0).
--   epochs    stop after this many passes (default: never stop).
--   require   fields every row must have as strings (default {"prompt"}).
--
-- ds:next(k) -> up to k rows (copies), crossing into the next epoch as needed;
-- nil once `epochs` are used up. ds:state() / ds:set_state(s) save and restore the
-- cursor; ds:shard(rank, world) keeps rows rank+1, rank+1+world, ... (rank from 0).
local core = require "rl.core"
local json = require "rl.json"

local M = {}
local Dataset = {}
Dataset.__index = Dataset

local function config_error(msg, ...)
  error(core.error{kind = "config", message = msg:format(...), where = "rlhost: "}, 0)
end

-- splitmix64: a small, well-mixed generator with 64-bit wraparound integers, so
-- shuffles are the same on every machine and independent of math.random.
local function splitmix(state)
  state = state + 0x9E3779B97F4A7C15
  local z = state
  z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
  z = (z ~ (z >> 27)) * 0x94D049BB133111EB
  return state, z ~ (z >> 31)
end

local function permutation(n, seed, epoch)
  local p = {}
  for i = 1, n do p[i] = i end
  local s = seed * 0x100000001B3 + epoch
  s = select(2, splitmix(s))
  for i = n, 2, -1 do
    local r
    s, r = splitmix(s)
    local j = (r >> 1) % i + 1  -- >> is a logical shift: r >> 1 is non-negative
    p[i], p[j] = p[j], p[i]
  end
  return p
end

local function copy_row(row)
  local r = {}
  for k, v in pairs(row) do r[k] = v end
  return r
end

local function check_row(row, where, required)
  if type(row) ~= "table" or row[1] ~= nil then
    config_error("%s: expected a JSON object per line", where)
  end
  for _, f in ipairs(required) do
    local v = row[f]
    if v == nil or v == json.null then
      config_error("%s: missing field '%s'", where, f)
    elseif type(v) ~= "string" then
      config_error("%s: field '%s' must be a string, got %s", where, f,
                   v == json.null and "null" or type(v))
    end
  end
end

local function read_jsonl(path, required)
  local f, err = io.open(path, "rb")
  if not f then config_error("cannot open dataset %s", err or path) end
  local text, rerr = f:read("a")
  f:close()
  if not text then config_error("cannot read dataset %s: %s", path, rerr or "read error") end
  local rows = {}
  local lineno = 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    lineno = lineno + 1
    if line:find("%S") then
      local ok, row = pcall(json.decode, line)
      if not ok then
        local msg = type(row) == "table" and row.message or tostring(row)
        msg = msg:gsub("^rl%.json%.decode: ", "")
        config_error("%s:%d: %s", path, lineno, msg)
      end
      check_row(row, ("%s:%d"):format(path, lineno), required)
      rows[#rows + 1] = row
    end
  end
  if #rows == 0 then config_error("%s: no rows (an empty dataset)", path) end
  return rows, text
end

local function new(rows, opts, name, fingerprint)
  local self = setmetatable({}, Dataset)
  self.rows = rows
  self.name = name
  self.shuffle = opts.shuffle and true or false
  self.seed = opts.seed or 0
  if math.type(self.seed) ~= "integer" then
    config_error("rl.dataset: seed must be an integer, got %s", tostring(opts.seed))
  end
  self.epochs = opts.epochs
  self.epoch = 1
  self.pos = 0
  self.fingerprint = fingerprint
  self._opts = opts
  return self
end

function M.dataset(src, opts)
  opts = opts or {}
  local required = opts.require or {"prompt"}
  if type(src) == "string" then
    local rows, text = read_jsonl(src, required)
    return new(rows, opts, src, require("rl.fs").sha256_string(text))
  elseif type(src) == "table" then
    local rows = {}
    for i, row in ipairs(src) do
      if type(row) == "string" then row = {prompt = row} end
      check_row(row, ("rl.dataset: row %d"):format(i), required)
      rows[i] = row
    end
    if #rows == 0 then config_error("rl.dataset: no rows (an empty dataset)") end
    return new(rows, opts, opts.name or "rows",
               require("rl.fs").sha256_string(json.encode(rows, {sort_keys = true})))
  end
  config_error("rl.dataset expects a file path or a list of rows, got %s", type(src))
end

Dataset.__len = function(self) return #self.rows end
function Dataset:size() return #self.rows end

-- Row i in file order (a copy).
function Dataset:get(i) return copy_row(self.rows[i]) end

-- All rows in file order (copies).
function Dataset:all()
  local out = {}
  for i, r in ipairs(self.rows) do out[i] = copy_row(r) end
  return out
end

function Dataset:_order()
  if not self.shuffle then return nil end
  if self._perm_epoch ~= self.epoch then
    self._perm = permutation(#self.rows, self.seed, self.epoch)
    self._perm_epoch = self.epoch
  end
  return self._perm
end

-- Up to k rows; nil when the epochs are used up.
function Dataset:next(k)
  k = k or 1
  if math.type(k) ~= "integer" or k < 1 then
    error(core.error{kind = "value", message = "ds:next: k must be an integer >= 1"}, 2)
  end
  local out = {}
  local n = #self.rows
  while #out < k do
    if self.epochs and self.epoch > self.epochs then break end
    local order = self:_order()
    self.pos = self.pos + 1
    local i = order and order[self.pos] or self.pos
    local row = copy_row(self.rows[i])
    out[#out + 1] = row
    if self.pos >= n then
      self.epoch, self.pos = self.epoch + 1, 0
    end
  end
  if #out == 0 then return nil end
  return out
end

-- for batch in ds:batches(k) do ... end (stops when the epochs are used up).
function Dataset:batches(k)
  return function() return self:next(k) end
end

function Dataset:state()
  return {epoch = self.epoch, pos = self.pos, seed = self.seed, shuffle = self.shuffle,
          size = #self.rows, fingerprint = self.fingerprint}
end

function Dataset:set_state(s)
  if type(s) ~= "table" or math.type(s.epoch) ~= "integer" or math.type(s.pos) ~= "integer" then
    config_error("dataset %s: the saved cursor is malformed", tostring(self.name))
  end
  if s.size ~= #self.rows then
    config_error("dataset %s has %d rows but the checkpoint's had %s: the data changed since "
                 .. "the checkpoint", tostring(self.name), #self.rows, tostring(s.size))
  end
  if s.fingerprint and self.fingerprint and s.fingerprint ~= self.fingerprint then
    io.stderr:write(("rlhost: warning: dataset %s changed since the checkpoint (same number "
                     .. "of rows); resuming anyway\n"):format(tostring(self.name)))
  end
  self.epoch, self.pos = s.epoch, s.pos
  if s.seed ~= nil then self.seed = s.seed end
  if s.shuffle ~= nil then self.shuffle = s.shuffle end
end

-- A dataset of every world-th row starting at rank (0-based), with its own cursor.
function Dataset:shard(rank, world)
  if math.type(rank) ~= "integer" or math.type(world) ~= "integer" or world < 1
     or rank < 0 or rank >= world then
    error(core.error{kind = "value",
                     message = ("ds:shard: need 0 <= rank < world, got rank=%s world=%s")
                       :format(tostring(rank), tostring(world))}, 2)
  end
  local rows = {}
  for i = rank + 1, #self.rows, world do rows[#rows + 1] = self.rows[i] end
  if #rows == 0 then
    config_error("dataset %s: shard %d of %d is empty", tostring(self.name), rank, world)
  end
  local fp = self.fingerprint and (self.fingerprint .. ("/%d/%d"):format(rank, world))
  return new(rows, self._opts, ("%s[%d/%d]"):format(tostring(self.name), rank, world), fp)
end

-- The prompt strings of a list of rows.
function M.prompts(rows)
  local out = {}
  for i, r in ipairs(rows) do out[i] = type(r) == "table" and r.prompt or r end
  return out
end

return M
