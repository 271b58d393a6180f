-- rl.config(defaults): the recipe's settings, with the command line's key=value
-- overrides merged in. Overrides are typed by the host (integer, float, boolean,
-- nil, string); here they are checked against the defaults, so a typo or a value
-- of the wrong type stops the run before anything starts (exit status 2).
local core = require "rl.core"
local util = require "rl.util"

local M = {}

local OPTIONAL = {}  -- metatable marking rl.optional(type) placeholders

-- rl.optional("string" [, default]): a setting with no default value (nil) that the
-- command line may still set, e.g. `teacher = rl.optional "string"`.
function M.optional(typ, default)
  assert(({string=1, integer=1, float=1, number=1, boolean=1})[typ],
         "rl.optional: type must be string, integer, float, number or boolean")
  return setmetatable({type = typ, default = default}, OPTIONAL)
end

local function config_error(msg, ...)
  error(core.error{kind = "config", message = msg:format(...), where = "rlhost: "}, 0)
end

local function all_keys(t, prefix, out)
  for k, v in pairs(t) do
    if type(k) == "string" then
      local name = prefix .. k
      out[#out + 1] = name
      if type(v) == "table" and getmetatable(v) ~= OPTIONAL then all_keys(v, name .. ".", out) end
    end
  end
  return out
end

local function suggest(key, defaults)
  local known = {}
  for _, k in ipairs(all_keys(defaults, "", {})) do known[k] = true end
  return require("rl.help").alias(key, known) or util.suggest(key, known)
end

local function typename(v)
  if math.type(v) then return math.type(v) end
  return type(v)
end

-- Convert an override to the default's type, or raise naming both types.
local function coerce(key, want, ov)
  local got = ov.type
  if got == "nil" then return nil end
  if want == got then return ov.value end
  if (want == "float" or want == "number") and got == "integer" then return ov.value + 0.0 end
  if want == "number" and got == "float" then return ov.value end
  if want == "integer" and got == "float" and ov.value == math.floor(ov.value) then
    config_error("setting '%s' expects an integer, got float %s", key, ov.arg:match("=(.*)"))
  end
  local hint = ""
  if want == "string" and (got == "integer" or got == "float" or got == "boolean") then
    hint = (" (write %s='\"%s\"' for a string)"):format(key, ov.arg:match("=(.*)"))
  end
  local n = got == "string" and want ~= "string" and tonumber(ov.value)
  if n and (n == math.huge or n == -math.huge) then hint = " (out of range)" end
  config_error("setting '%s' expects %s, got %s '%s'%s", key,
               want == "integer" and "an integer" or "a " .. want, got,
               ov.arg:match("=(.*)"), hint)
end

local function deep_copy(t)
  local r = {}
  for k, v in pairs(t) do
    if type(v) == "table" and getmetatable(v) ~= OPTIONAL then
      r[k] = deep_copy(v)
    elseif type(v) == "table" then
      r[k] = v.default
    else
      r[k] = v
    end
  end
  return r
end

-- Reading a setting that does not exist is an error too: `cfg.lrr` in a recipe
-- would otherwise be a silent nil.
local function strict(t, known, prefix)
  for k, v in pairs(t) do
    if type(v) == "table" and known[k] and type(known[k]) == "table"
       and getmetatable(known[k]) ~= OPTIONAL then
      strict(v, known[k], prefix .. k .. ".")
    end
  end
  return setmetatable(t, {
    __index = function(_, k)
      if known[k] == nil then
        -- `where` names the recipe line that read the setting, not this function.
        local info = debug.getinfo(2, "Sl")
        local where = info and info.currentline > 0
                      and ("%s:%d: "):format(info.short_src, info.currentline) or "rlhost: "
        error(core.error{kind = "config", where = where,
                         message = ("no setting '%s%s' in this recipe's config%s")
                           :format(prefix, tostring(k), suggest(tostring(k), known))}, 2)
      end
      return nil
    end,
  })
end

local last  -- {config=, overridden=} of the most recent call, for rl.run

-- rl.config(defaults) -> cfg
function M.config(defaults)
  if type(defaults) ~= "table" then
    config_error("rl.config expects a table of defaults, got %s", type(defaults))
  end
  local cfg = deep_copy(defaults)
  local overridden = {}
  for _, ov in ipairs(core.overrides()) do
    local node, dnode, parts = cfg, defaults, {}
    for p in ov.key:gmatch("[^.]+") do parts[#parts + 1] = p end
    for i = 1, #parts - 1 do
      local d = dnode[parts[i]]
      if type(d) ~= "table" or getmetatable(d) == OPTIONAL then
        config_error("unknown setting '%s'%s", ov.key, suggest(ov.key, defaults))
      end
      dnode, node = d, node[parts[i]]
    end
    local leaf = parts[#parts]
    local dv = dnode[leaf]
    if dv == nil then
      config_error("unknown setting '%s'%s", ov.key, suggest(ov.key, defaults))
    end
    local want
    if type(dv) == "table" then
      if getmetatable(dv) ~= OPTIONAL then
        config_error("setting '%s' is a table; set its fields, e.g. %s.<field>=...", ov.key, ov.key)
      end
      want = dv.type
    else
      want = typename(dv)
    end
    node[leaf] = coerce(ov.key, want, ov)
    overridden[ov.key] = true
  end
  last = {config = cfg, overridden = overridden}
  return strict(cfg, defaults, "")
end

-- The settings of the last rl.config call and which keys the command line set.
function M.resolved()
  return last
end

return M
