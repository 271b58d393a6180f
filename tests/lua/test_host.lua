-- test_host.lua — the command line as a user meets it: exit statuses, error reports,
-- -e/-i/-, arg, require paths, interruption, out-of-memory, install.
local t = require "tap"

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. t.shquote(dir)))
local function file(name, text)
  local p = dir .. "/" .. name
  t.write(p, text)
  return p
end

t.test("a recipe that succeeds exits 0 and gets arg and ...", function()
  local r = file("ok.lua", [[
    local a, b = ...
    print(arg[0], arg[1], arg[2], a, b, arg[-1] ~= nil)
  ]])
  local st, out = t.rlhost{r, "x", "lr=3"}
  t.eq(st, 0)
  t.eq(out, r .. "\tx\tlr=3\tx\tlr=3\ttrue\n")
end)

t.test("a runtime error exits 1, FILE:LINE: message first, then a traceback", function()
  local r = file("boom.lua", "local function f()\n  error('boom')\nend\nf()\n")
  local st, _, err = t.rlhost{r}
  t.eq(st, 1)
  t.eq(err:match("^[^\n]*"), r .. ":2: boom")
  t.match(err, "stack traceback:")
  t.match(err, "in local 'f'")
end)

t.test("error tables print through __tostring, with the traceback", function()
  local r = file("tbl.lua", [[
    local rl = require "rl"
    error(rl.error{kind = "timeout", message = "judge did not answer", retryable = true})
  ]])
  local st, _, err = t.rlhost{r}
  t.eq(st, 1)
  t.match(err, "^" .. r:gsub("%p", "%%%0") .. ":2: timeout error: judge did not answer\n")
  t.match(err, "stack traceback:")
end)

t.test("a table error without __tostring still reports", function()
  local st, _, err = t.rlhost{"-e", "error({1,2})"}
  t.eq(st, 1)
  t.match(err, "^%(error object is a table value with no message%)")
end)

t.test("configuration errors exit 2 with one line, no traceback", function()
  local r = file("cfg.lua", "local rl = require 'rl'\nlocal c = rl.config{lr = 0.1, steps = 3}\n")
  local st, _, err = t.rlhost{r, "lrr=1"}
  t.eq(st, 2)
  t.eq(err, "rlhost: config error: unknown setting 'lrr' (did you mean 'lr'?)\n")
  st, _, err = t.rlhost{r, "steps=abc"}
  t.eq(st, 2)
  t.eq(err, "rlhost: config error: setting 'steps' expects an integer, got string 'abc'\n")
end)

t.test("malformed settings exit 2 with one clear line", function()
  local r = file("noop.lua", "")
  for _, case in ipairs{
    {"=3", "malformed setting '=3': empty key"},
    {"lr=", "malformed setting 'lr=': no value"},
    {"a..b=1", "empty part in a dotted key"},
  } do
    local st, out, err = t.rlhost{r, case[1]}
    t.eq(st, 2, case[1])
    t.eq(out, "")
    t.ok(err:find("rlhost: malformed setting '" .. case[1] .. "'", 1, true), err)
    t.ok(err:find(case[2], 1, true), err)
    t.eq(select(2, err:gsub("\n", "")), 1, "one line")
  end
  local st, _, err = t.rlhost{r, "lr=1", "lr=2"}
  t.eq(st, 2)
  t.match(err, "setting 'lr' is given twice")
end)

t.test("a missing recipe and a syntax error exit 2 naming file and line", function()
  local st, _, err = t.rlhost{dir .. "/nope.lua"}
  t.eq(st, 2)
  t.match(err, "cannot open recipe '.*nope.lua': No such file")
  local r = file("syntax.lua", "local x = 1\nlocal y = = 2\n")
  st, _, err = t.rlhost{r}
  t.eq(st, 2)
  t.match(err, "syntax.lua:2: unexpected symbol near '='")
  t.eq(select(2, err:gsub("\n", "")), 1, "one line, no traceback")
end)

t.test("-e runs chunks with rl loaded; an invalid chunk exits 2", function()
  local st, out = t.rlhost{"-e", "x = 40", "-e", "print(x + 2, type(rl.json.encode))"}
  t.eq(st, 0)
  t.eq(out, "42\tfunction\n")
  local err
  st, _, err = t.rlhost{"-e", "x = ("}
  t.eq(st, 2)
  t.match(err, "^rlhost: %(command line%):1:")
end)

t.test("- reads the recipe from standard input", function()
  local st, out = t.rlhost({"-", "a"}, {stdin = "print('from stdin', ...)\n"})
  t.eq(st, 0)
  t.eq(out, "from stdin\ta\n")
end)

t.test("require finds lua/rl and modules beside the recipe, from any directory", function()
  file("helper.lua", "return {answer = 42}")
  local r = file("req.lua", "print(require('helper').answer, require('rl').version ~= nil)")
  local out = os.tmpname()
  local ok = os.execute("cd / && " .. t.shquote(t.host) .. " " .. t.shquote(r) .. " >" .. out)
  t.ok(ok)
  t.eq(t.slurp(out), "42\ttrue\n")
  os.remove(out)
end)

t.test("--help lists options and exit statuses; --version the libraries", function()
  local st, out = t.rlhost{"--help"}
  t.eq(st, 0)
  for _, s in ipairs{"%-e CODE", "%-i", "%-%-version", "130", "key=value"} do t.match(out, s) end
  st, out = t.rlhost{"--version"}
  t.eq(st, 0)
  t.match(out, "^rlhost %d+%.%d+%.%d+\nbuilt with Lua 5%.4%.%d+, Python 3%.%d+[^,]*, libcurl [%d.]+, cJSON [%d.]+")
  local err
  st, _, err = t.rlhost{"--bogus"}
  t.eq(st, 2)
  t.match(err, "unknown option '%-%-bogus'")
end)

t.test("-i: expressions print, statements continue across lines, rl is there", function()
  local st, out, err = t.rlhost({"-i"}, {stdin = "1 + 1\nlocal function f()\n  return 'multi'\nend print(f())\nrl.json.encode({1})\nerror('oops')\nprint('still here')\n"})
  t.eq(st, 0, err)
  t.match(out, "\n2\nmulti\n%[1%]\nstill here\n")
  t.match(err, "oops")
end)

t.test("out of memory is reported, not crashed on", function()
  local st, _, err = t.rlhost({"-e", "local t = {} for i = 1, 1e8 do t[i] = ('x'):rep(64) .. i end"},
                              {env = "RLHOST_MEMORY_LIMIT=64"})
  t.eq(st, 1)
  t.match(err, "not enough memory")
end)

-- Run the host in the background, send SIGINTs, return its exit status and stderr.
local function interrupt(recipe, signals)
  local errf = os.tmpname()
  local script = ("%s %s 2>%s & pid=$!; sleep 0.5; for i in $(seq %d); do kill -INT $pid; sleep 0.3; done; wait $pid; echo $?")
    :format(t.shquote(t.host), t.shquote(recipe), errf, signals)
  local p = io.popen(script)
  local status = tonumber(p:read("a"):match("(%d+)%s*$"))
  p:close()
  local err = t.slurp(errf)
  os.remove(errf)
  return status, err
end

t.test("the first SIGINT is a flag the recipe reads; it then exits 130", function()
  local r = file("sigint1.lua", [[
    local rl = require "rl"
    local steps = 0
    while not rl.interrupted() do steps = steps + 1; local x = 0; for i = 1, 1e5 do x = x + i end end
    io.stderr:write("finished step ", steps, " cleanly\n")
  ]])
  local st, err = interrupt(r, 1)
  t.eq(st, 130)
  t.match(err, "finishing the current step")
  t.match(err, "finished step %d+ cleanly")
end)

t.test("a second SIGINT stops a busy recipe at once with 130", function()
  local r = file("sigint2.lua", "while true do end\n")
  local st, err = interrupt(r, 2)
  t.eq(st, 130)
  t.match(err, "interrupted")
end)

t.test("make install: the installed binary finds its tree from anywhere", function()
  local build = t.host:match("^(.*)/rlhost$")
  local root = build:match("^(.*)/[^/]+$")
  local prefix = dir .. "/prefix"
  local ok = os.execute(("make -s -C %s install PREFIX=%s BUILD=%s >/dev/null 2>&1")
    :format(t.shquote(root), t.shquote(prefix), t.shquote(build)))
  t.ok(ok, "make install")
  local out = os.tmpname()
  ok = os.execute(("cd / && %s/bin/rlhost -e 'print(rl.core and \"x\" or rl.home)' >%s 2>&1")
    :format(t.shquote(prefix), out))
  t.ok(ok, t.slurp(out))
  t.eq(t.slurp(out), prefix .. "/share/rlhost\n")
  os.remove(out)
end)

os.execute("rm -rf " .. t.shquote(dir))
t.done()
