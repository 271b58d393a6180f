-- rl.dataset(path | rows, opts) -> ds: rows in the formats TRL users have, from a
-- JSON Lines file or a JSON array (.json), served in batches with a cursor that
-- checkpoints save and restore. A row is one of (ds.format):
--
--   "prompt"             {prompt=}                 prompts for generation (RL)
--   "prompt-completion"  {prompt=, completion=}    SFT on the completion; RL prompts
--   "messages"           {messages=}               conversational SFT: every assistant
--                                                  message is a target
--   "preference"         {prompt=?, chosen=, rejected=}
--
-- prompt, completion, chosen and rejected are strings or lists of chat messages
-- {role=, content=} (ds.conversational says which; a dataset is one or the other,
-- like TRL's). A preference row without a prompt whose chosen and rejected share a
-- first part (TRL's implicit prompt) is read as {prompt=<the shared part>,
-- chosen=<the rest>, rejected=<the rest>}. Other fields ride along (a reference answer
-- for a reward, an id). A row of another format than the first, or none, and a bad
-- message are config errors naming the file, line and field, before anything runs.
--
-- opts:
--   formats   the formats accepted (default: all four); another is a config error.
--   shuffle   reorder each epoch (default false); the order depends only on `seed`
--             and the epoch number, never on math.random, so it is reproducible and
--             a resumed run sees the same batches.
--   seed      integer (default 0).
--   epochs    stop after this many passes (default: never stop).
--   require   other fields every row must have as strings (e.g. {"reference"}).
--
-- ds:next(k) -> up to k rows (copies), crossing into the next epoch as needed;
-- nil once `epochs` are used up. ds:state() / ds:set_state(s) save and restore the
-- cursor; ds:shard(rank, world) keeps rows rank+1, rank+1+world, ... (rank from 0).
-- ds:where(i) names row i ("file:line"); ds:check_single_turn(why) refuses, naming
-- the row, a conversation a model without a chat template cannot train on.
-- model:backward{loss="sft"} takes prompt-completion and messages rows as they are.
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

-- ---- formats ---------------------------------------------------------------------

local FORMATS = {"prompt", "prompt-completion", "messages", "preference"}
local ROLES = {system = true, user = true, assistant = true, tool = true, developer = true}
local TEXT_FIELDS = {prompt = true, completion = true, chosen = true, rejected = true,
                     messages = true}

local function present(v) return v ~= nil and v ~= json.null end

-- "string" or "messages" for a field value; a config error for anything else.
local function value_kind(v, where, field)
  if type(v) == "string" then return "string" end
  if type(v) ~= "table" or v[1] == nil then
    config_error("%s: field '%s' must be a string or a list of messages {role=, content=}, "
                 .. "got %s", where, field, v == json.null and "null"
                 or (type(v) == "table" and "an object or an empty list" or type(v)))
  end
  for j, m in ipairs(v) do
    if type(m) ~= "table" or m[1] ~= nil then
      config_error("%s: field '%s': message %d must be an object {role=, content=}", where,
                   field, j)
    end
    if type(m.role) ~= "string" then
      config_error("%s: field '%s': message %d has no role", where, field, j)
    elseif not ROLES[m.role] then
      config_error("%s: field '%s': message %d has role '%s' (known: assistant, developer, "
                   .. "system, tool, user)", where, field, j, m.role)
    elseif type(m.content) ~= "string" then
      config_error("%s: field '%s': message %d (%s) needs a string 'content'", where, field,
                   j, m.role)
    end
  end
  return "messages"
end

local function has_assistant(msgs)
  for _, m in ipairs(msgs) do
    if m.role == "assistant" then return true end
  end
  return false
end

-- The format of a row, from the fields it has.
local function detect(row, where)
  local has = {}
  for f in pairs(TEXT_FIELDS) do has[f] = present(row[f]) end
  if has.messages then
    for _, f in ipairs{"prompt", "completion", "chosen", "rejected"} do
      if has[f] then
        config_error("%s: field '%s' with 'messages' (a conversation has its prompt and "
                     .. "answers inside)", where, f)
      end
    end
    return "messages"
  elseif has.chosen or has.rejected then
    if has.completion then
      config_error("%s: field 'completion' in a preference row (it has 'chosen' and "
                   .. "'rejected')", where)
    end
    if not has.chosen then config_error("%s: missing field 'chosen'", where) end
    if not has.rejected then config_error("%s: missing field 'rejected'", where) end
    return "preference"
  elseif has.prompt then
    return has.completion and "prompt-completion" or "prompt"
  elseif has.completion then
    config_error("%s: missing field 'prompt'", where)
  end
  config_error("%s: missing field 'prompt' (a row has 'prompt', 'prompt' and 'completion', "
               .. "'messages', or 'chosen' and 'rejected')", where)
end

-- TRL's implicit prompt: the longest shared first part of chosen and rejected
-- (messages, or characters, not splitting off a space that starts the answer).
local function same_message(a, b) return a.role == b.role and a.content == b.content end

local function split_implicit(row, kind, where)
  local c, r = row.chosen, row.rejected
  local k = 0
  if kind == "messages" then
    while k < #c and k < #r and same_message(c[k + 1], r[k + 1]) do k = k + 1 end
    if k == 0 or k == #c or k == #r then
      config_error("%s: 'chosen' and 'rejected' share no prompt messages before they differ "
                   .. "(give the prompt in a field 'prompt')", where)
    end
    row.prompt = table.move(c, 1, k, 1, {})
    row.chosen, row.rejected = table.move(c, k + 1, #c, 1, {}), table.move(r, k + 1, #r, 1, {})
  else
    while k < #c and k < #r and c:byte(k + 1) == r:byte(k + 1) do k = k + 1 end
    if k > 0 and c:sub(k, k) == " " then k = k - 1 end
    if k == 0 then
      config_error("%s: 'chosen' and 'rejected' share no prompt text (give the prompt in a "
                   .. "field 'prompt')", where)
    end
    row.prompt, row.chosen, row.rejected = c:sub(1, k), c:sub(k + 1), r:sub(k + 1)
  end
end

-- Check a row against the dataset so far (`seen`: the first row's format and kind)
-- and normalise an implicit-prompt preference row. `where` is "file:line".
local function check_row(row, where, opts, seen)
  if type(row) ~= "table" or row[1] ~= nil then
    config_error("%s: expected a JSON object per row", where)
  end
  local format = detect(row, where)
  if not opts.accept[format] then
    config_error("%s: a '%s' row; this dataset takes %s rows", where, format, opts.accepted)
  end
  local kind
  for _, f in ipairs{"prompt", "completion", "messages", "chosen", "rejected"} do
    if present(row[f]) then
      local k = value_kind(row[f], where, f)
      if f == "messages" and k ~= "messages" then
        config_error("%s: field 'messages' must be a list of messages, got a string", where)
      end
      if kind and k ~= kind then
        config_error("%s: field '%s' is %s but the others are %s (all strings or all "
                     .. "messages)", where, f, k == "string" and "a string" or "messages",
                     kind == "string" and "strings" or "messages")
      end
      kind = k
    end
  end
  if format == "preference" and not present(row.prompt) then
    split_implicit(row, kind, where)
  end
  for _, f in ipairs{"messages", "completion", "chosen", "rejected"} do
    if kind == "messages" and present(row[f]) and not has_assistant(row[f]) then
      config_error("%s: field '%s' has no assistant message (nothing to train on)", where, f)
    end
  end
  for _, f in ipairs(opts.require) do
    local v = row[f]
    if not present(v) then
      config_error("%s: missing field '%s'", where, f)
    elseif not TEXT_FIELDS[f] and type(v) ~= "string" then
      config_error("%s: field '%s' must be a string, got %s", where, f, type(v))
    end
  end
  if not seen.format then
    seen.format, seen.kind, seen.where = format, kind, where
  elseif format ~= seen.format then
    config_error("%s: a '%s' row, but %s is a '%s' row (one format per dataset)", where,
                 format, seen.where, seen.format)
  elseif kind ~= seen.kind then
    config_error("%s: %s, but %s has %s (one kind per dataset)", where,
                 kind == "string" and "strings" or "messages", seen.where,
                 seen.kind == "string" and "strings" or "messages")
  end
end

-- ---- reading -----------------------------------------------------------------------

-- The line on which each element of a top-level JSON array starts (for errors).
local function array_lines(text)
  local out, depth, pos, line, counted = {}, 0, 1, 1, 1
  local function line_at(p)
    local _, k = text:sub(counted, p - 1):gsub("\n", "")
    line, counted = line + k, p
    return line
  end
  local function mark(p)
    local f = text:find("%S", p)
    if f and text:sub(f, f) ~= "]" then out[#out + 1] = line_at(f) end
  end
  while true do
    local s, _, ch = text:find('([%[%]{},"])', pos)
    if not s then return out end
    pos = s + 1
    if ch == '"' then
      repeat
        local e = text:find('["\\]', pos)
        if not e then return out end
        pos = e + (text:sub(e, e) == "\\" and 2 or 1)
      until text:sub(e, e) == '"'
    elseif ch == "[" or ch == "{" then
      depth = depth + 1
      if depth == 1 then mark(pos) end
    elseif ch == "]" or ch == "}" then
      depth = depth - 1
    elseif depth == 1 then
      mark(pos)
    end
  end
end

local function decode(text, where)
  local ok, v = pcall(json.decode, text)
  if not ok then
    local msg = type(v) == "table" and v.message or tostring(v)
    config_error("%s: %s", where, (msg:gsub("^rl%.json%.decode: ", "")))
  end
  return v
end

-- Rows of a JSON Lines file, or of a JSON array (a file whose text starts with '[').
local function read_rows(path, opts)
  local f, err = io.open(path, "rb")
  if not f then config_error("cannot open dataset %s", err or path) end
  local text, rerr = f:read("a")
  f:close()
  if not text then config_error("cannot read dataset %s: %s", path, rerr or "read error") end
  local rows, seen, lines = {}, {}, {}
  if text:match("^%s*%[") then
    local arr = decode(text, path)
    lines = array_lines(text)
    for i, row in ipairs(arr) do
      check_row(row, ("%s:%s"):format(path, lines[i] or ("row " .. i)), opts, seen)
      rows[i] = row
    end
  else
    local lineno = 0
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
      lineno = lineno + 1
      if line:find("%S") then
        local where = ("%s:%d"):format(path, lineno)
        local row = decode(line, where)
        check_row(row, where, opts, seen)
        rows[#rows + 1] = row
        lines[#rows] = lineno
      end
    end
  end
  if #rows == 0 then config_error("%s: no rows (an empty dataset)", path) end
  return rows, text, seen, lines
end

local function read_opts(opts)
  local accept, names = {}, {}
  for _, f in ipairs(opts.formats or FORMATS) do
    local known = false
    for _, k in ipairs(FORMATS) do known = known or k == f end
    if not known then
      config_error("rl.dataset: unknown format '%s' in formats (known: %s)", tostring(f),
                   table.concat(FORMATS, ", "))
    end
    accept[f] = true
    names[#names + 1] = "'" .. f .. "'"
  end
  return {accept = accept, accepted = table.concat(names, " or "), require = opts.require or {}}
end

local function new(rows, opts, name, fingerprint, seen, lines)
  local self = setmetatable({}, Dataset)
  self.rows = rows
  self.lines = lines  -- row -> line in the file, for errors (nil: rows given in Lua)
  self.name = name
  self.format, self.conversational = seen.format, seen.kind == "messages"
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
  local ro = read_opts(opts)
  if type(src) == "string" then
    local rows, text, seen, lines = read_rows(src, ro)
    return new(rows, opts, src, require("rl.fs").sha256_string(text), seen, lines)
  elseif type(src) == "table" then
    local rows, seen = {}, {}
    for i, row in ipairs(src) do
      if type(row) == "string" then row = {prompt = row} else row = copy_row(row) end
      check_row(row, ("rl.dataset: row %d"):format(i), ro, seen)
      rows[i] = row
    end
    if #rows == 0 then config_error("rl.dataset: no rows (an empty dataset)") end
    return new(rows, opts, opts.name or "rows",
               require("rl.fs").sha256_string(json.encode(rows, {sort_keys = true})), seen)
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
  local rows, lines = {}, self.lines and {}
  for i = rank + 1, #self.rows, world do
    rows[#rows + 1] = self.rows[i]
    if lines then lines[#rows] = self.lines[i] end
  end
  if #rows == 0 then
    config_error("dataset %s: shard %d of %d is empty", tostring(self.name), rank, world)
  end
  local fp = self.fingerprint and (self.fingerprint .. ("/%d/%d"):format(rank, world))
  return new(rows, self._opts, ("%s[%d/%d]"):format(tostring(self.name), rank, world), fp,
             {format = self.format, kind = self.conversational and "messages" or "string"},
             lines)
end

-- Where row i came from: "file:line", or "rows: row i".
function Dataset:where(i)
  local line = self.lines and self.lines[i]
  if line then return ("%s:%d"):format(tostring(self.name), line) end
  return ("%s: row %d"):format(tostring(self.name), i)
end

-- A config error naming the first `messages` row that is not one exchange (prompt
-- messages, then one assistant message): all a model without a chat template trains
-- on. `why` says which model (call it before a run writes anything).
function Dataset:check_single_turn(why)
  for i, r in ipairs(self.rows) do
    local m = r.messages
    if type(m) == "table" then
      local ok = #m >= 2 and m[#m].role == "assistant"
      for j = 1, #m - 1 do ok = ok and m[j].role ~= "assistant" end
      if not ok then
        config_error("%s: field 'messages': a conversation other than prompt messages then "
                     .. "one assistant message needs a chat template, and %s", self:where(i),
                     why)
      end
    end
  end
end

-- The prompt strings of a list of rows.
function M.prompts(rows)
  local out = {}
  for i, r in ipairs(rows) do out[i] = type(r) == "table" and r.prompt or r end
  return out
end

return M
