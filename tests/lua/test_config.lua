-- rl.config as recipes meet it: command-line overrides typed against the defaults,
-- unknown keys with a suggestion, wrong types, quoted strings, nested keys, reading
-- unknown settings, exit status 2; and the resolved config rl.run writes.
local t = require "tap"
local rl = require "rl"

local dir = os.tmpname()
os.remove(dir)
rl.fs.mkdir(dir)
local recipe = dir .. "/recipe.lua"
t.write(recipe, [[
local rl = require "rl"
local cfg = rl.config{steps = 10, lr = 1e-4, name = "run", debug = false,
                      teacher = require("rl.config").optional("string"),
                      model = {layers = 2, dropout = 0.1, kind = "tiny"}}
local function show(v) return ("%s:%s"):format(math.type(v) or type(v), tostring(v)) end
print(show(cfg.steps), show(cfg.lr), show(cfg.name), show(cfg.debug),
      show(cfg.model.layers), show(cfg.model.dropout), show(cfg.model.kind), show(cfg.teacher))
if (...) == "typo" then print(cfg.stepz) end
]])

local function run(...)
  return t.rlhost({recipe, ...})
end

t.test("defaults come through with their types", function()
  local st, out, err = run()
  t.eq(st, 0, err)
  t.eq(out, "integer:10\tfloat:0.0001\tstring:run\tboolean:false\tinteger:2\tfloat:0.1\tstring:tiny\tnil:nil\n")
end)

t.test("overrides are typed: integers, floats (from integers too), booleans, strings", function()
  local st, out, err = run("steps=3", "lr=1", "debug=true", "name=abc", "model.layers=4",
                           "model.dropout=0.25", "teacher=http://x")
  t.eq(st, 0, err)
  t.eq(out, "integer:3\tfloat:1.0\tstring:abc\tboolean:true\tinteger:4\tfloat:0.25\tstring:tiny\tstring:http://x\n")
end)

t.test("a quoted value is a string even when it looks like a number", function()
  local st, out, err = run('name="123"', 'model.kind="true"')
  t.eq(st, 0, err)
  t.match(out, "string:123")
  t.match(out, "string:true")
end)

t.test("an unknown key exits 2 with a suggestion", function()
  local st, out, err = run("setps=3")
  t.eq(st, 2); t.eq(out, "")
  t.match(err, "unknown setting 'setps'")
  t.match(err, "did you mean 'steps'")
  local st2, _, err2 = run("model.layerz=3")
  t.eq(st2, 2)
  t.match(err2, "did you mean 'model.layers'")
end)

t.test("a value of the wrong type exits 2 naming both types", function()
  local st, _, err = run("steps=abc")
  t.eq(st, 2)
  t.match(err, "setting 'steps' expects an integer, got string 'abc'")
  local st2, _, err2 = run("steps=2.5")
  t.eq(st2, 2); t.match(err2, "expects an integer")
  local st3, _, err3 = run("name=5")
  t.eq(st3, 2); t.match(err3, "name='\"5\"'")
  local st4, _, err4 = run("debug=1")
  t.eq(st4, 2); t.match(err4, "'debug' expects a boolean")
end)

t.test("a table cannot be set whole; nested keys of a scalar are unknown", function()
  local st, _, err = run("model=3")
  t.eq(st, 2); t.match(err, "is a table")
  local st2, _, err2 = run("steps.x=3")
  t.eq(st2, 2); t.match(err2, "unknown setting 'steps.x'")
end)

t.test("reading a setting the recipe does not have is a config error too", function()
  local st, _, err = run("typo")
  t.eq(st, 2)
  t.match(err, "no setting 'stepz'")
  t.match(err, "recipe%.lua:8: config error")  -- the recipe's line, not the library's
  t.match(err, "did you mean 'steps'")
end)

t.test("a setting given twice exits 2", function()
  local st, _, err = run("steps=1", "steps=2")
  t.eq(st, 2); t.match(err, "given twice")
end)

t.test("rl.run writes the resolved config (overrides applied) as config.json", function()
  local r = dir .. "/withrun.lua"
  t.write(r, ([[
local rl = require "rl"
local cfg = rl.config{steps = 2, lr = 0.5, opt = {beta = 0.9}}
local run = rl.run{dir = %q, plot = false, progress = false}
for _ in run:steps(cfg.steps) do end
]]):format(dir .. "/run"))
  local st, _, err = t.rlhost({r, "lr=0.25", "opt.beta=0.95"})
  t.eq(st, 0, err)
  t.eq(t.slurp(dir .. "/run/config.json"),
       '{\n  "lr": 0.25,\n  "opt": {\n    "beta": 0.95\n  },\n  "steps": 2\n}\n')
end)

rl.fs.remove(dir)
t.done()
