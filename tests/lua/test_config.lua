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

-- ---- rl.setting / rl.optional: declared rules, checked before the recipe goes on ----

-- A recipe whose config is `decls`; it prints `show` (Lua expressions over cfg) and
-- then writes `wrote`, so a test can see that a refused config stops it first.
local n_recipes = 0
local function declared(decls, show)
  n_recipes = n_recipes + 1
  local r = ("%s/decl%d.lua"):format(dir, n_recipes)
  t.write(r, ([[
local rl = require "rl"
local cfg = rl.config { %s }
print(%s)
rl.fs.write(%q, "ran")
]]):format(decls, show or "'ok'", dir .. "/wrote"))
  return function(args, env)
    os.remove(dir .. "/wrote")
    local st, out, err = t.rlhost({r, table.unpack(args or {})}, {env = env})
    return st, out, err, rl.fs.stat(dir .. "/wrote") ~= nil
  end
end

-- The run must stop with exit 2 and exactly `line` on stderr, the recipe going no further.
local function refused(run, args, line, env)
  local st, out, err, wrote = run(args, env)
  t.eq(st, 2, err)
  t.eq(err, "rlhost: config error: " .. line .. "\n")
  t.eq(out, "")
  t.eq(wrote, false, "the recipe went on after a refused config")
end

t.test("ranges: min, max, above, below; defaults and overrides keep their types", function()
  local run = declared([[group = rl.setting{8, min = 1}, lr = rl.setting{3e-4, above = 0, max = 1},
      frac = rl.setting{0.5, min = 0, below = 1}, temp = rl.setting{1, type = "float", min = 0}]],
    "cfg.group, cfg.lr, cfg.frac, cfg.temp, math.type(cfg.temp)")
  local st, out, err, wrote = run()
  t.eq(st, 0, err); t.eq(out, "8\t0.0003\t0.5\t1.0\tfloat\n"); t.ok(wrote)
  st, out = run({"group=1", "lr=1", "frac=0", "temp=0"})
  t.eq(st, 0); t.eq(out, "1\t1.0\t0.0\t0.0\tfloat\n")
  refused(run, {"group=0"}, "setting 'group' must be >= 1 (got 0)")
  refused(run, {"lr=0"}, "setting 'lr' must be > 0 and <= 1 (got 0.0)")
  refused(run, {"lr=2"}, "setting 'lr' must be > 0 and <= 1 (got 2.0)")
  refused(run, {"frac=1"}, "setting 'frac' must be >= 0 and < 1 (got 1.0)")
  refused(run, {"group=nil"}, "setting 'group' must be an integer >= 1 (got nil)")
  -- a type error still comes first, as for plain defaults
  refused(run, {"group=two"}, "setting 'group' expects an integer, got string 'two'")
end)

t.test("choices: one of a list, with a suggestion; list=true takes a comma-separated list", function()
  local run = declared([[loss = rl.setting{"pg", choices = {"pg", "ppo"}},
      scorers = rl.setting{"native,exact", choices = {"native", "exact", "judge"}, list = true}]],
    "cfg.loss, cfg.scorers")
  local st, out = run({"loss=ppo", "scorers=judge, exact"})
  t.eq(st, 0); t.eq(out, "ppo\tjudge, exact\n")
  refused(run, {"loss=pppo"}, "setting 'loss' must be one of 'pg', 'ppo' (got 'pppo') "
                              .. "(did you mean 'ppo'?)")
  refused(run, {"scorers=native,jugde"}, "setting 'scorers' must be a comma-separated list of "
          .. "'native', 'exact', 'judge' (got 'jugde' in 'native,jugde') (did you mean 'judge'?)")
  refused(run, {"scorers=,"}, "setting 'scorers' must be a comma-separated list of "
          .. "'native', 'exact', 'judge' (got ',')")
end)

t.test("module=: the value names a module on the recipe's path; the message lists them", function()
  rl.fs.mkdir(dir .. "/tasks")
  t.write(dir .. "/tasks/sort.lua", "return {name = 'sort'}\n")
  t.write(dir .. "/tasks/add.lua", "return {name = 'add'}\n")
  local run = declared([[task = rl.setting{"sort", module = "tasks"}]],
                       "require('tasks.' .. cfg.task).name")
  local st, out, err = run({"task=add"})
  t.eq(st, 0, err); t.eq(out, "add\n")
  refused(run, {"task=sorting"}, "setting 'task' must be one of 'add', 'sort' "
          .. "(tasks/<name>.lua on the recipe path) (got 'sorting')")
  -- a path that would reach outside tasks/ is not a module name
  refused(run, {"task=../decl1"}, "setting 'task' must be one of 'add', 'sort' "
          .. "(tasks/<name>.lua on the recipe path) (got '../decl1')")
end)

t.test("dir=: a directory or a path mkdir -p can make; not a file, a dangling symlink", function()
  t.write(dir .. "/afile", "x")
  os.execute(("ln -sfn %s %s"):format(t.shquote(dir .. "/nowhere"), t.shquote(dir .. "/dangling")))
  os.execute(("ln -sfn %s %s"):format(t.shquote(dir .. "/afile"), t.shquote(dir .. "/tofile")))
  os.execute(("ln -sfn %s %s"):format(t.shquote(dir .. "/tasks"), t.shquote(dir .. "/todir")))
  local run = declared([[out = rl.setting{"runs/x", dir = true}]], "cfg.out")
  for _, ok in ipairs{dir .. "/new/deeper", dir .. "/tasks", dir .. "/todir", "relative/x"} do
    local st, out, err = run({"out=" .. ok})
    t.eq(st, 0, err); t.eq(out, ok .. "\n")
  end
  local must = "setting 'out' must be a directory or a path that can be created; "
  refused(run, {"out=" .. dir .. "/afile"}, must .. ("'%s/afile' is a regular file"):format(dir))
  refused(run, {"out=" .. dir .. "/afile/sub"}, must .. ("'%s/afile' is a regular file"):format(dir))
  refused(run, {"out=" .. dir .. "/dangling"},
          must .. ("'%s/dangling' is a dangling symlink (its target does not exist)"):format(dir))
  refused(run, {"out=" .. dir .. "/tofile"},
          must .. ("'%s/tofile' is a symlink to something that is not a directory"):format(dir))
  t.eq(rl.fs.stat(dir .. "/new"), nil, "a check must not create the directory")
end)

t.test("file=, exists=, parent_exists=: paths that must be there", function()
  local run = declared([[data = rl.optional("string", nil, {file = true}),
      init = rl.optional("string", nil, {exists = true}),
      cache = rl.optional("string", nil, {parent_exists = true})]],
    "cfg.data, cfg.init, cfg.cache")
  local st, out, err = run({"data=" .. dir .. "/afile", "init=" .. dir .. "/tasks",
                            "cache=" .. dir .. "/tasks/c.sqlite"})
  t.eq(st, 0, err)
  t.eq(out, ("%s/afile\t%s/tasks\t%s/tasks/c.sqlite\n"):format(dir, dir, dir))
  st, out = run()  -- optional settings left nil are not checked
  t.eq(st, 0); t.eq(out, "nil\tnil\tnil\n")
  refused(run, {"data=" .. dir .. "/tasks"},
          ("setting 'data' must be an existing file; '%s/tasks' is a directory"):format(dir))
  refused(run, {"data=nowhere.jsonl"},
          "setting 'data' must be an existing file; 'nowhere.jsonl' does not exist")
  refused(run, {"init=" .. dir .. "/dangling"}, ("setting 'init' must be an existing path; "
          .. "'%s/dangling' is a dangling symlink (its target does not exist)"):format(dir))
  refused(run, {"cache=nodir/c.sqlite"}, "setting 'cache' must be a file path in an existing "
          .. "directory; 'nodir' does not exist")
  refused(run, {"cache=" .. dir}, ("setting 'cache' must be a file path in an existing "
          .. "directory; '%s' is a directory"):format(dir))
end)

t.test("env=: the default comes from the environment, typed; requires= pairs settings", function()
  local run = declared([[url = rl.setting{type = "string", env = "T_URL", requires = "model"},
      model = rl.setting{type = "string", env = "T_MODEL"},
      api = rl.setting{"chat", env = "T_API", choices = {"chat", "completions"}},
      retries = rl.setting{4, env = "T_RETRIES", min = 0}]],
    "cfg.url, cfg.model, cfg.api, cfg.retries")
  local st, out, err = run({}, "T_URL=http://h T_MODEL=m T_API=completions T_RETRIES=2")
  t.eq(st, 0, err); t.eq(out, "http://h\tm\tcompletions\t2\n")
  st, out = run({"model=cli"}, "T_MODEL=m")  -- the command line wins
  t.eq(st, 0); t.eq(out, "nil\tcli\tchat\t4\n")
  st, out = run({}, "T_URL= T_API=")  -- set but empty: as if unset
  t.eq(st, 0); t.eq(out, "nil\tnil\tchat\t4\n")
  refused(run, {}, "setting 'model' (environment T_MODEL) must be set when 'url' "
                   .. "(environment T_URL) is set", "T_URL=http://h")
  refused(run, {"url=http://h"}, "setting 'model' (environment T_MODEL) must be set when 'url' "
                                 .. "(environment T_URL) is set")
  refused(run, {}, "setting 'api' (environment T_API) must be one of 'chat', 'completions' "
                   .. "(got 'gemini')", "T_API=gemini")
  refused(run, {}, "environment variable T_RETRIES (setting 'retries') expects an integer, "
                   .. "got 'many'", "T_RETRIES=many")
  refused(run, {}, "setting 'retries' (environment T_RETRIES) must be >= 0 (got -1)",
          "T_RETRIES=-1")
end)

t.test("check=: a function of the value and the whole config", function()
  local run = declared([[micro_batch = rl.setting{4, min = 1, check = function(v, cfg)
        return cfg.batch % v == 0, ("a divisor of batch (%d)"):format(cfg.batch) end},
      batch = rl.setting{8, min = 1}]], "cfg.batch, cfg.micro_batch")
  local st, out = run({"micro_batch=2"})
  t.eq(st, 0); t.eq(out, "8\t2\n")
  refused(run, {"micro_batch=3"}, "setting 'micro_batch' must be a divisor of batch (8) (got 3)")
end)

t.test("defaults are checked too; nested tables hold declarations", function()
  local run = declared([[group = rl.setting{0, min = 1}]])
  refused(run, {}, "setting 'group' must be >= 1 (got 0)")
  run = declared([[opt = {beta = rl.setting{0.9, min = 0, below = 1}, name = "adam"}]],
                 "cfg.opt.beta, cfg.opt.name")
  local st, out = run({"opt.beta=0.5"})
  t.eq(st, 0); t.eq(out, "0.5\tadam\n")
  refused(run, {"opt.beta=1"}, "setting 'opt.beta' must be >= 0 and < 1 (got 1.0)")
end)

t.test("a mistake in a declaration names the recipe line", function()
  for _, c in ipairs{
    {"steps = rl.setting{10, mni = 1}", "unknown option 'mni' %(did you mean 'min'%?%)"},
    {"steps = rl.setting{10, choices = {}}", "choices= must be a non%-empty list"},
    {"name = rl.setting{'x', min = 1}", "min= needs a number and a setting of a numeric type"},
    {"name = rl.setting{min = 1}", "give a default or type ="},
    {"name = rl.setting{5, type = 'string'}", "the default 5 is not of type string"},
    {"name = rl.optional('str')", "rl.optional: type must be string"},
    {"url = rl.setting{type = 'string', requires = 'modle'}, model = 'x'",
     "'url' requires 'modle', which is not a setting of this recipe"}} do
    local st, _, err = declared(c[1])()
    t.eq(st, 2, err)
    t.match(err, "decl%d+%.lua:2: config error: ")
    t.match(err, c[2])
  end
end)

t.test("resolved().settings keeps each declaration (type, default, rules, help)", function()
  local run = declared([[group = rl.setting{8, min = 1, help = "samples per prompt"}, steps = 3]],
    "require('rl.config').resolved().settings.group.help, "
    .. "require('rl.config').resolved().settings.group.min, "
    .. "require('rl.config').resolved().settings.group.type, "
    .. "require('rl.config').resolved().settings.steps")
  local st, out, err = run()
  t.eq(st, 0, err)
  t.eq(out, "samples per prompt\t1\tinteger\tnil\n")
end)

t.test("rl.run refuses a dir that is a file or a dangling symlink before anything runs", function()
  local r = dir .. "/rundir.lua"
  t.write(r, [[
local rl = require "rl"
local run = rl.run{dir = arg[1], plot = false, progress = false}
print("constructed")
]])
  local st, out, err = t.rlhost({r, dir .. "/afile"})
  t.eq(st, 2); t.eq(out, "")
  t.eq(err, ("rlhost: config error: rl.run: dir must be a directory or a path that can be "
             .. "created; '%s/afile' is a regular file\n"):format(dir))
  st, out, err = t.rlhost({r, dir .. "/dangling/"})
  t.eq(st, 2); t.match(err, "'.-/dangling' is a dangling symlink")
  t.eq(t.slurp(dir .. "/afile"), "x")
end)

rl.fs.remove(dir)
t.done()
