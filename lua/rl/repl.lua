-- rl.repl: what `rlhost -i` needs from Lua: values shown readably (tables
-- pretty-printed with depth and size limits, samples with their text first), name
-- completion for readline, and the `help` text. host/repl.c calls these.
--
--   repl.show(v [, {depth=, items=, width=}]) -> string
--   repl.complete(word) -> {candidates}  -- word as typed: "rl.mo", "policy:ge", "pri"
--   repl.help -> string
local M = {}

M.DEPTH = 3     -- nested tables shown this deep; deeper ones as {…}
M.ITEMS = 16    -- entries shown per table before "… (N more)"
M.STRING = 240  -- characters of a string shown before it is cut

-- The fields a sample (rl.generate) is read by, first and in this order; token ids
-- and log-probs, long and rarely read, come last and abbreviated.
local FIRST = {"prompt", "text", "reference", "completion", "reward", "advantage", "finish",
               "source", "version", "group", "off_policy"}
local rank = {}
for i, k in ipairs(FIRST) do rank[k] = i end

local function is_ident(k)
  return type(k) == "string" and k:match("^[%a_][%w_]*$") ~= nil
end

local function quote(s, limit)
  if #s > limit then
    return ("%q"):format(s:sub(1, limit)):gsub("\\\n", "\\n") .. ("… (%d bytes)"):format(#s)
  end
  return (("%q"):format(s):gsub("\\\n", "\\n"))
end

local function scalar(v, limit)
  local t = type(v)
  if t == "string" then return quote(v, limit) end
  if t == "number" then
    if math.type(v) == "float" then return ("%.6g"):format(v) end
    return tostring(v)
  end
  if t == "table" or t == "userdata" then
    local mt = getmetatable(v)
    if type(mt) == "table" and rawget(mt, "__tostring") then
      local ok, s = pcall(tostring, v)
      if ok then return s end
    end
  end
  return tostring(v)
end

local function sorted_keys(t)
  local n = #t
  local keys = {}
  for k in next, t do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
  end
  table.sort(keys, function(a, b)
    local ra, rb = rank[a] or math.huge, rank[b] or math.huge
    if ra ~= rb then return ra < rb end
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta < tb end
    if ta == "string" or ta == "number" then return a < b end
    return tostring(a) < tostring(b)
  end)
  return n, keys
end

-- A list of numbers (token ids, log-probs) on one line, cut after `items`.
local function flat_numbers(t, n, keys, items)
  if n == 0 or #keys > 0 then return nil end
  for i = 1, n do if type(t[i]) ~= "number" then return nil end end
  local parts = {}
  for i = 1, math.min(n, items) do parts[i] = scalar(t[i], 0) end
  if n > items then parts[#parts + 1] = ("… (%d items)"):format(n) end
  return "{" .. table.concat(parts, ", ") .. "}"
end

local function show(v, opts, depth, indent, seen)
  if type(v) ~= "table" then return scalar(v, opts.string) end
  local mt = getmetatable(v)
  if type(mt) == "table" and rawget(mt, "__tostring") then return scalar(v, opts.string) end
  if seen[v] then return "{…cycle}" end
  if next(v) == nil then return "{}" end
  if depth >= opts.depth then return "{…}" end
  local n, keys = sorted_keys(v)
  local flat = flat_numbers(v, n, keys, opts.items)
  if flat then return flat end
  seen[v] = true
  local pad = indent .. "  "
  local items, total = {}, n + #keys
  for i = 1, math.min(n, opts.items) do
    items[#items + 1] = show(v[i], opts, depth + 1, pad, seen)
  end
  for _, k in ipairs(keys) do
    if #items >= opts.items then break end
    local name = is_ident(k) and k or ("[" .. scalar(k, 40) .. "]")
    items[#items + 1] = name .. " = " .. show(v[k], opts, depth + 1, pad, seen)
  end
  if total > #items then items[#items + 1] = ("… (%d more)"):format(total - #items) end
  seen[v] = nil
  local one = "{" .. table.concat(items, ", ") .. "}"
  if #one + #indent <= opts.width and not one:find("\n") then return one end
  return "{\n" .. pad .. table.concat(items, ",\n" .. pad) .. "\n" .. indent .. "}"
end

-- show(v [, opts]) -> a readable rendering of v (one line when it fits in `width`).
function M.show(v, opts)
  opts = opts or {}
  local o = {depth = opts.depth or M.DEPTH, items = opts.items or M.ITEMS,
             string = opts.string or M.STRING, width = opts.width or 100}
  return show(v, o, 0, "", {})
end

local KEYWORDS = {"and", "break", "do", "else", "elseif", "end", "false", "for", "function",
                  "goto", "if", "in", "local", "nil", "not", "or", "repeat", "return", "then",
                  "true", "until", "while"}

-- Names readable from value v: its table keys (pairs, so rl's lazy members are
-- listed) and, through metatables, the methods of objects and handles.
local function names_of(v, out, seen)
  seen = seen or {}
  if seen[v] then return out end
  seen[v] = true
  if type(v) == "table" then
    local ok = pcall(function()
      for k in pairs(v) do if is_ident(k) then out[k] = true end end
    end)
    if not ok then for k in next, v do if is_ident(k) then out[k] = true end end end
  end
  local mt = getmetatable(v)
  if type(mt) == "table" then
    local idx = rawget(mt, "__index")
    if type(idx) == "table" then names_of(idx, out, seen) end
  end
  return out
end

-- complete(word) -> sorted candidates that extend `word`, each the whole word:
-- "rl.mo" -> {"rl.model"}, "policy:gen" -> {"policy:generate"}, "pri" -> {"print"}.
function M.complete(word)
  local path, sep, last = word:match("^([%a_][%w_%.:]-)([%.:])([%w_]*)$")
  local base, prefix = _G, word
  if path then
    if path:find(":") then return {} end
    base = _G
    for part in path:gmatch("[^%.]+") do
      local ok, nxt = pcall(function() return base[part] end)
      if not ok or nxt == nil then return {} end
      base = nxt
    end
    prefix = last
  elseif not word:match("^[%a_]?[%w_]*$") then
    return {}
  end
  local names = names_of(base, {})
  if not path then for _, k in ipairs(KEYWORDS) do names[k] = true end end
  local out = {}
  for k in pairs(names) do
    if k:sub(1, #prefix) == prefix then
      local ok, val = pcall(function() return base[k] end)
      if sep ~= ":" or (ok and type(val) == "function") then
        out[#out + 1] = (path and (path .. sep) or "") .. k
      end
    end
  end
  table.sort(out)
  return out
end

-- error_text(err, line) -> text, detail: the error as one line at the line typed
-- ("stdin:3: config error: ..."), whatever library line raised it; detail keeps
-- the original message for the traceback. line 0: not raised under typed code.
function M.error_text(err, line)
  local detail
  if type(err) == "table" and (err.message ~= nil or err.kind ~= nil) then
    detail = tostring(err.message or "(no message)")
    if err.kind then detail = err.kind .. " error: " .. detail end
  else
    local ok, s = pcall(tostring, err)
    detail = ok and s or ("(error object is a %s value)"):format(type(err))
  end
  local text = detail
  if line > 0 then
    local rest = text:match("^stdin:%d+: (.*)$") or text:match("^[^\n:]+:%d+: (.*)$") or text
    text = ("stdin:%d: %s"):format(line, rest)
  end
  return text, (type(err) == "table" and tostring(err)) or detail
end

M.help = [[
rlhost interactive mode: type Lua; an expression prints its value.
  rl                   the rl library (rl.<Tab> lists it); rl.model{path = "builtin:tiny"}
  help                 this text
  traceback            the full traceback of the last error (errors show the line typed)
  =EXPR                print EXPR (as lua does); tables print depth- and size-limited
  Tab                  complete a name: rl.mo<Tab> -> rl.model, policy:ge<Tab> -> policy:generate
  Ctrl-C               stop the running command;  Ctrl-D  leave
History is kept in ~/.rlhost_history. `rlhost -i recipe.lua` runs the recipe first and keeps
its top-level locals as globals (cfg, run, data, ...); <close> handles such as the policy are
closed when the recipe ends, so open a new one: policy = rl.model{path = cfg.model}.
]]

return M
