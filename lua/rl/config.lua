-- rl.config(defaults): the recipe's settings, with the command line's key=value
-- overrides merged in. Overrides are typed by the host (integer, float, boolean,
-- nil, string); here they are checked against the defaults, so a typo or a value
-- of the wrong type stops the run before anything starts (exit status 2).
--
-- A default is either a plain value (`steps = 100`: the type is checked) or a
-- declaration made by rl.setting / rl.optional that also says which values are
-- allowed, checked here for the defaults and the overrides alike, before the recipe
-- loads a model or writes a file:
--
--   group = rl.setting{8, min = 1},                       -- ranges: min, max, above, below
--   loss = rl.setting{"pg", choices = {"pg", "ppo"}},     -- one of a list (list=true:
--                                                         -- a comma-separated list of them)
--   task = rl.setting{"sort", module = "tasks"},          -- names tasks/<task>.lua on the path
--   dir = rl.setting{"runs/x", dir = true},               -- a directory, or one mkdir -p can make
--   data = rl.optional("string", nil, {file = true}),     -- an existing file (exists=true: any
--                                                         -- existing path; parent_exists=true:
--                                                         -- a file to create in an existing dir)
--   url = rl.setting{type = "string", env = "MY_URL",     -- default from the environment
--                    requires = "model"},                 -- when set, `model` must be set too
--   k = rl.setting{2, check = function(v, cfg) return v % 2 == 0, "an even number" end},
--
-- A value that breaks a rule stops the run with one line naming the setting, what is
-- allowed and what it got: `rlhost: config error: setting 'group' must be >= 1 (got 0)`.
-- `help=` is kept with the declaration (rl.config's resolved().settings), for --help.
local core = require "rl.core"
local util = require "rl.util"

local M = {}

local SETTING = {}  -- metatable of the declarations rl.setting and rl.optional make

local TYPES = {string = true, integer = true, float = true, number = true, boolean = true}
local FIELDS = {[1] = true, type = true, optional = true, help = true, env = true,
                min = true, max = true, above = true, below = true, choices = true, list = true,
                module = true, check = true, dir = true, file = true, exists = true,
                parent_exists = true, requires = true}

local config_error = util.config_error

local function is_decl(v) return getmetatable(v) == SETTING end

local function typename(v)
  if math.type(v) then return math.type(v) end
  return type(v)
end

local function fits(typ, v)
  local t = typename(v)
  return t == typ or (typ == "number" and type(v) == "number")
         or (typ == "float" and t == "integer")
end

-- How a value reads in a message: strings quoted, numbers as Lua prints them.
local function show(v)
  if type(v) == "string" then return ("'%s'"):format(v) end
  return tostring(v)
end

local function show_list(list)
  local out = {}
  for i, v in ipairs(list) do out[i] = show(v) end
  return table.concat(out, ", ")
end

local function declaration_error(msg, ...)
  util.raise("config", ("rl.setting: " .. msg):format(...))  -- names the recipe's line
end

-- rl.setting{default, min=, max=, choices=, ...} -> a declaration for rl.config (see
-- the top of this file). The type is the default's, or `type=` when there is no
-- default (then the setting may be nil, as with rl.optional).
function M.setting(spec)
  if type(spec) ~= "table" or is_decl(spec) then
    declaration_error("expects a table {default, min = ..., help = ...}, got %s", type(spec))
  end
  util.check_options(spec, FIELDS, "rl.setting")
  local d = spec[1]
  local typ = spec.type or (d ~= nil and typename(d)) or nil
  if not TYPES[typ] then
    declaration_error("give a default or type = \"string\", \"integer\", \"float\", \"number\" "
                      .. "or \"boolean\"%s", spec.type and (", not '%s'"):format(spec.type) or "")
  end
  if d ~= nil and not fits(typ, d) then
    declaration_error("the default %s is not of type %s", show(d), typ)
  end
  if typ == "float" and d ~= nil then d = d + 0.0 end
  local numeric = typ == "integer" or typ == "float" or typ == "number"
  for _, k in ipairs{"min", "max", "above", "below"} do
    if spec[k] ~= nil and (not numeric or type(spec[k]) ~= "number") then
      declaration_error("%s= needs a number and a setting of a numeric type", k)
    end
  end
  if spec.choices ~= nil and (type(spec.choices) ~= "table" or #spec.choices == 0) then
    declaration_error("choices= must be a non-empty list")
  end
  if spec.list and (typ ~= "string" or not spec.choices) then
    declaration_error("list=true needs a string setting with choices=")
  end
  for _, k in ipairs{"dir", "file", "exists", "parent_exists", "module"} do
    if spec[k] and typ ~= "string" then declaration_error("%s= needs a string setting", k) end
  end
  if spec.module ~= nil and type(spec.module) ~= "string" then
    declaration_error("module= must name a module prefix, e.g. \"tasks\"")
  end
  if spec.check ~= nil and type(spec.check) ~= "function" then
    declaration_error("check= must be a function(value, cfg) -> ok, what")
  end
  local requires = spec.requires
  if type(requires) == "string" then requires = {requires} end
  if requires ~= nil and type(requires) ~= "table" then
    declaration_error("requires= must name a setting or list settings")
  end
  local s = {}
  for k, v in pairs(spec) do s[k] = v end
  s[1] = nil
  s.default, s.type, s.requires = d, typ, requires
  s.optional = spec.optional or d == nil
  return setmetatable(s, SETTING)
end

-- rl.optional("string" [, default [, rules]]): a setting that may be nil (no value
-- unless the command line or `default` gives one), e.g. `teacher = rl.optional "string"`;
-- `rules` are rl.setting's (`{parent_exists = true}`).
function M.optional(typ, default, rules)
  if not TYPES[typ] then
    util.raise("config", "rl.optional: type must be string, integer, float, number or boolean")
  end
  local spec = {default, type = typ, optional = true}
  for k, v in pairs(rules or {}) do spec[k] = v end
  return M.setting(spec)
end

local function all_keys(t, prefix, out)
  for k, v in pairs(t) do
    if type(k) == "string" then
      local name = prefix .. k
      out[#out + 1] = name
      if type(v) == "table" and not is_decl(v) then all_keys(v, name .. ".", out) end
    end
  end
  return out
end

local function suggest(key, defaults)
  local known = {}
  for _, k in ipairs(all_keys(defaults, "", {})) do known[k] = true end
  return require("rl.help").alias(key, known) or util.suggest(key, known)
end

-- An environment variable's text as a value of the declared type.
local function from_env(name, spec, text)
  local v
  if spec.type == "string" then v = text
  elseif spec.type == "boolean" then v = ({["true"] = true, ["false"] = false})[text]
  elseif spec.type == "integer" then v = math.tointeger(tonumber(text))
  else v = tonumber(text); v = v and v + 0.0 end
  if v == nil then
    config_error("environment variable %s (setting '%s') expects %s %s, got '%s'", spec.env,
                 name, spec.type == "integer" and "an" or "a", spec.type, text)
  end
  return v
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

-- The copy of the defaults rl.config returns: declarations replaced by their values
-- (the environment's, when it sets the declared variable, else the default).
local function deep_copy(t, prefix)
  local r = {}
  for k, v in pairs(t) do
    if is_decl(v) then
      local text = v.env and os.getenv(v.env)
      if text and text ~= "" then r[k] = from_env(prefix .. k, v, text) else r[k] = v.default end
    elseif type(v) == "table" then
      r[k] = deep_copy(v, prefix .. tostring(k) .. ".")
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
    if type(v) == "table" and type(known[k]) == "table" and not is_decl(known[k]) then
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

-- ---- the rules of a declaration ------------------------------------------------------

local function range_text(spec)
  local parts = {}
  if spec.min ~= nil then parts[#parts + 1] = ">= " .. tostring(spec.min) end
  if spec.above ~= nil then parts[#parts + 1] = "> " .. tostring(spec.above) end
  if spec.max ~= nil then parts[#parts + 1] = "<= " .. tostring(spec.max) end
  if spec.below ~= nil then parts[#parts + 1] = "< " .. tostring(spec.below) end
  return table.concat(parts, " and ")
end

local function in_range(spec, v)
  return v == v and v ~= math.huge and v ~= -math.huge
         and (spec.min == nil or v >= spec.min) and (spec.max == nil or v <= spec.max)
         and (spec.above == nil or v > spec.above) and (spec.below == nil or v < spec.below)
end

-- Modules `prefix.<name>` on package.path (tasks/*.lua beside the recipe or in the
-- rlhost tree), sorted: the allowed values of a module= setting.
local function modules(prefix)
  local fs, seen, out = require "rl.fs", {}, {}
  for template in package.path:gmatch("[^;]+") do
    local base = template:match("^(.*)%?%.lua$")
    if base then
      local dir = base .. prefix:gsub("%.", "/")
      local ok, names = pcall(fs.list, dir)
      for _, n in ipairs(ok and names or {}) do
        local m = n:match("^([%w_%-]+)%.lua$")
        if m and not seen[m] then seen[m] = true; out[#out + 1] = m end
      end
    end
  end
  table.sort(out)
  return out
end

local function as_set(list)
  local s = {}
  for _, v in ipairs(list) do s[tostring(v)] = true end
  return s
end

-- A value not among choices= (each item of it, with list=true) stops the run;
-- `label` is the setting's name as the message shows it.
local function check_choices(label, spec, v)
  local function member(x)
    for _, c in ipairs(spec.choices) do if c == x then return true end end
    return false
  end
  if spec.list then
    local n = 0
    for item in v:gmatch("[^,%s]+") do
      n = n + 1
      if not member(item) then
        config_error("setting %s must be a comma-separated list of %s (got %s in %s)%s", label,
                     show_list(spec.choices), show(item), show(v),
                     util.suggest(item, as_set(spec.choices)))
      end
    end
    if n == 0 then
      config_error("setting %s must be a comma-separated list of %s (got %s)", label,
                   show_list(spec.choices), show(v))
    end
  elseif not member(v) then
    local hint = type(v) == "string" and util.suggest(v, as_set(spec.choices)) or ""
    config_error("setting %s must be one of %s (got %s)%s", label, show_list(spec.choices),
                 show(v), hint)
  end
end

local function check_module(name, spec, v)
  local ok = v:match("^[%w_%-]+$")
             and package.searchpath(spec.module .. "." .. v, package.path)
  if ok then return end
  local found = modules(spec.module)
  config_error("setting '%s' must be one of %s (%s/<name>.lua on the recipe path) (got %s)%s",
               name, #found > 0 and show_list(found) or "(none found)",
               spec.module:gsub("%.", "/"), show(v), util.suggest(v, as_set(found)))
end

-- f(path) for a path check; an error looking (a directory we may not read) names
-- the setting too.
local function look(name, f, path)
  local ok, r = pcall(f, path)
  if not ok then
    config_error("setting '%s': cannot look at %s: %s", name, show(path),
                 type(r) == "table" and tostring(r.message) or tostring(r))
  end
  return r
end

local function kind_of(name, path) return look(name, util.path_kind, path) end

local function check_path(name, spec, v)
  if spec.dir then
    local why = look(name, util.dir_problem, v)
    if why then
      config_error("setting '%s' must be a directory or a path that can be created; %s", name, why)
    end
  end
  if spec.file or spec.exists then
    local kind = kind_of(name, v)
    local good = kind ~= nil and kind ~= "dangling" and kind ~= "loop"
    if spec.file then good = kind == "file" or kind == "link" end
    if not good then
      config_error("setting '%s' must be %s; %s", name,
                   spec.file and "an existing file" or "an existing path",
                   util.describe_path(v, kind))
    end
  end
  if spec.parent_exists then
    if kind_of(name, v) == "dir" then
      config_error("setting '%s' must be a file path in an existing directory; %s", name,
                   util.describe_path(v, "dir"))
    end
    local parent = util.dirname(v)
    local kind = kind_of(name, parent)
    if kind ~= "dir" then
      config_error("setting '%s' must be a file path in an existing directory; %s", name,
                   util.describe_path(parent, kind))
    end
  end
end

local function env_note(spec)
  return spec.env and (" (environment %s)"):format(spec.env) or ""
end

-- The value of one declared setting against its rules (nil: only if optional).
local function validate(name, spec, v, cfg)
  if v == nil then
    if spec.optional then return end
    local rng = range_text(spec)
    config_error("setting '%s' must be %s %s%s (got nil)", name,
                 spec.type == "integer" and "an" or "a", spec.type, rng ~= "" and " " .. rng or "")
  end
  if (spec.min or spec.max or spec.above or spec.below) and not in_range(spec, v) then
    config_error("setting '%s'%s must be %s (got %s)", name, env_note(spec), range_text(spec),
                 show(v))
  end
  if spec.choices then check_choices(("'%s'%s"):format(name, env_note(spec)), spec, v) end
  if spec.module then check_module(name, spec, v) end
  check_path(name, spec, v)
  if spec.check then
    local ok, what = spec.check(v, cfg)
    if not ok then
      config_error("setting '%s'%s must be %s (got %s)", name, env_note(spec),
                   what or "a value the recipe accepts", show(v))
    end
  end
end

-- Declarations in `defaults` (nested tables too) as {name, spec}, sorted by name so
-- the first error reported does not depend on table order.
local function declarations(t, prefix, out)
  for k, v in pairs(t) do
    if type(k) == "string" and type(v) == "table" then
      if is_decl(v) then out[#out + 1] = {prefix .. k, v}
      else declarations(v, prefix .. k .. ".", out) end
    end
  end
  return out
end

local function lookup(cfg, name)
  local v = cfg
  for p in name:gmatch("[^.]+") do
    if type(v) ~= "table" then return nil end
    v = v[p]
  end
  return v
end

local function check_all(defaults, cfg)
  local decls = declarations(defaults, "", {})
  table.sort(decls, function(a, b) return a[1] < b[1] end)
  local by_name = {}
  for _, d in ipairs(decls) do
    by_name[d[1]] = d[2]
    validate(d[1], d[2], lookup(cfg, d[1]), cfg)
  end
  for _, d in ipairs(decls) do
    local name, spec = d[1], d[2]
    for _, other in ipairs(spec.requires or {}) do
      if lookup(defaults, other) == nil then
        util.raise("config", ("rl.setting: '%s' requires '%s', which is not a setting of "
                              .. "this recipe"):format(name, other))  -- names rl.config's line
      end
      if lookup(cfg, name) ~= nil and lookup(cfg, other) == nil then
        config_error("setting '%s'%s must be set when '%s'%s is set", other,
                     env_note(by_name[other] or {}), name, env_note(spec))
      end
    end
  end
  return by_name
end

local last  -- {config=, overridden=, settings=} of the most recent call, for rl.run

-- rl.config(defaults) -> cfg
function M.config(defaults)
  if type(defaults) ~= "table" then
    config_error("rl.config expects a table of defaults, got %s", type(defaults))
  end
  local cfg = deep_copy(defaults, "")
  local overridden = {}
  for _, ov in ipairs(core.overrides()) do
    local node, dnode, parts = cfg, defaults, {}
    for p in ov.key:gmatch("[^.]+") do parts[#parts + 1] = p end
    for i = 1, #parts - 1 do
      local d = dnode[parts[i]]
      if type(d) ~= "table" or is_decl(d) then
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
      if not is_decl(dv) then
        config_error("setting '%s' is a table; set its fields, e.g. %s.<field>=...", ov.key, ov.key)
      end
      want = dv.type
    else
      want = typename(dv)
    end
    node[leaf] = coerce(ov.key, want, ov)
    overridden[ov.key] = true
  end
  local settings = check_all(defaults, cfg)
  last = {config = cfg, overridden = overridden, settings = settings}
  return strict(cfg, defaults, "")
end

-- The settings of the last rl.config call, which keys the command line set, and the
-- declarations (name -> rl.setting's table: type, default, rules, help).
function M.resolved()
  return last
end

return M
