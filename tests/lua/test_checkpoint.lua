-- rl.checkpoint and rl.random in-process: what a checkpoint holds, how it is
-- verified, restored in place, cleaned and pruned; plus a real model handle's
-- save/restore through a run (skipped when the engine cannot start).
local t = require "tap"
local rl = require "rl"
local ck = rl.checkpoint

local root = os.tmpname()
os.remove(root)
rl.fs.mkdir(root)

local function fake_model(w)
  local m = {w = w, saves = 0}
  function m:save(d)
    self.saves = self.saves + 1
    rl.fs.mkdir(d .. "/sub")
    rl.fs.write(d .. "/weights.json", rl.json.encode(self.w))
    rl.fs.write(d .. "/sub/opt.bin", string.rep("\0\1", 1000))
  end
  function m:restore(d) self.w = rl.json.decode(ck.read(d .. "/weights.json")) end
  return m
end

t.test("rl.random: state() and set_state() reproduce math.random's draws", function()
  t.ok(rl.random.check())
  math.randomseed(123)
  local s = rl.random.state()
  t.eq(#s, 64)
  local a = {math.random(), math.random(1, 100), math.random(0)}
  rl.random.set_state(s)
  local b = {math.random(), math.random(1, 100), math.random(0)}
  for i = 1, 3 do t.eq(a[i], b[i]) end
  t.raises(function() rl.random.set_state("abc") end, "64 hex digits")
  t.raises(function() rl.random.set_state(string.rep("zz", 32)) end, "hex")
end)

t.test("write: manifest lists every file with size and SHA-256; state.json holds the rest", function()
  local dir = root .. "/w"
  rl.fs.mkdir(dir)
  local m = fake_model({1.5, 2})
  local ds = rl.dataset({"a", "b", "c"})
  ds:next(2)
  local tbl = {best = 0.25, list = {1, 2}}
  local p = ck.write(dir, 7, {models = {{"model", m}}, cursors = {{"data", ds}}, tables = {{"stats", tbl}}})
  t.eq(p, dir .. "/ckpt-7")
  local man = rl.json.decode(t.slurp(p .. "/manifest.json"))
  local paths = {}
  for _, f in ipairs(man.files) do paths[#paths + 1] = f.path end
  t.eq(table.concat(paths, ","), "model/sub/opt.bin,model/weights.json,state.json")
  t.eq(man.files[1].size, 2000)
  t.eq(man.files[1].sha256, (rl.fs.sha256(p .. "/model/sub/opt.bin")))
  local st = rl.json.decode(t.slurp(p .. "/state.json"))
  t.eq(st.step, 7); t.eq(st.cursors.data.pos, 2); t.eq(st.tables.stats.best, 0.25)
  t.eq(#st.random, 64); t.eq(st.models[1], "model")
  -- nothing temporary is left
  for _, n in ipairs(rl.fs.list(dir)) do t.ok(not n:find("tmp"), n) end
  t.ok(ck.verify(p))
end)

t.test("latest() skips incomplete and corrupt checkpoints, newest first", function()
  local dir = root .. "/l"
  rl.fs.mkdir(dir)
  local m = fake_model({1})
  for _, k in ipairs{1, 2, 3, 4, 10} do ck.write(dir, k, {models = {{"model", m}}}) end
  rl.fs.remove(dir .. "/ckpt-10/manifest.json")                          -- incomplete
  t.write(dir .. "/ckpt-4/model/weights.json", "[2]")                    -- same size, other bytes
  t.write(dir .. "/ckpt-3/model/sub/opt.bin", "short")                   -- size mismatch
  t.write(dir .. "/ckpt-2/manifest.json", '{"format": 99, "files": []}')  -- newer format
  local warnings = {}
  local c = ck.latest(dir, function(w) warnings[#warnings + 1] = w end)
  t.eq(c.step, 1)
  t.eq(#warnings, 4)
  t.match(warnings[1], "ckpt%-10: no manifest")
  t.match(warnings[2], "ckpt%-4: model/weights.json does not match its SHA%-256")
  t.match(warnings[3], "ckpt%-3: model/sub/opt.bin has 5 bytes")
  t.match(warnings[4], "ckpt%-2: written in checkpoint format 99")
  t.eq(ck.latest(root .. "/none"), nil)
end)

t.test("restore() fills registered tables in place and restores cursors and the RNG", function()
  local dir = root .. "/r"
  rl.fs.mkdir(dir)
  local m = fake_model({3, 4})
  local ds = rl.dataset({"a", "b", "c", "d"}, {shuffle = true, seed = 5})
  ds:next(3)
  local tbl = {x = 1, nested = {y = 2.5}}
  math.randomseed(9)
  ck.write(dir, 1, {models = {{"model", m}}, cursors = {{"data", ds}}, tables = {{"stats", tbl}}})
  local want_draw = math.random(0)
  local want_rows = rl.prompts(ds:next(3))
  -- change everything, then restore
  m.w = {0, 0}
  local keep = tbl
  tbl.x, tbl.extra, tbl.nested = 99, true, nil
  ds:next(1)
  math.randomseed(1)
  local c = ck.latest(dir)
  ck.restore(c, {models = {{"model", m}}, cursors = {{"data", ds}}, tables = {{"stats", tbl}}})
  t.eq(m.w[1], 3); t.eq(m.w[2], 4)
  t.ok(keep == tbl); t.eq(tbl.x, 1); t.eq(tbl.extra, nil); t.eq(tbl.nested.y, 2.5)
  t.eq(math.random(0), want_draw)
  t.eq(table.concat(rl.prompts(ds:next(3)), ","), table.concat(want_rows, ","))
end)

t.test("find() locates a model in a checkpoint or a run's newest one", function()
  local dir = root .. "/find"
  rl.fs.mkdir(dir)
  local m = fake_model({1})
  ck.write(dir, 1, {models = {{"model", m}}})
  ck.write(dir, 2, {models = {{"model", m}}})
  t.eq((ck.find(dir)), dir .. "/ckpt-2/model")
  t.eq((ck.find(dir .. "/ckpt-1")), dir .. "/ckpt-1/model")
  t.raises(function() ck.find(dir, "critic") end, "has no 'critic'")
  t.raises(function() ck.find(root .. "/nowhere") end, "no checkpoint or run directory")
  rl.fs.remove(dir .. "/ckpt-1/manifest.json")
  local e = t.raises(function() ck.find(dir .. "/ckpt-1") end, "not usable: no manifest")
  t.eq(e.kind, "config")
end)

t.test("state that JSON cannot hold is a value error and leaves no temp dir", function()
  local dir = root .. "/bad"
  rl.fs.mkdir(dir)
  local e = t.raises(function() ck.write(dir, 1, {tables = {{"s", {f = print}}}}) end, "JSON")
  t.eq(e.kind, "value")
  t.eq(#rl.fs.list(dir), 0)
end)

t.test("a write over the file-size limit (a full disk) says so, keeps the previous one", function()
  -- In a child under `ulimit -f`: the host must get EFBIG, not die of SIGXFSZ, and
  -- the failed checkpoint must leave no partial directory behind.
  local dir = root .. "/fsize"
  local script = root .. "/fsize.lua"
  t.write(script, ([[
local rl = require "rl"
local ck = rl.checkpoint
local dir = %q
rl.fs.mkdir(dir)
local m = {n = 1000}
function m:save(d) rl.fs.mkdir(d); rl.fs.write(d .. "/w.bin", string.rep("x", self.n)) end
function m:restore() end
ck.write(dir, 1, {models = {{"model", m}}})
m.n = 400000
ck.write(dir, 2, {models = {{"model", m}}})
]]):format(dir))
  local st, _, err = t.rlhost({script}, {env = "ulimit -f 200;"})
  t.eq(st, 1, err)
  t.ok(err:find("checkpoint " .. dir .. "/ckpt-2 not written", 1, true), err)
  t.ok(err:find("the previous checkpoint " .. dir .. "/ckpt-1 is kept", 1, true), err)
  t.eq(table.concat(rl.fs.list(dir), ","), "ckpt-1")
  t.ok(ck.verify(dir .. "/ckpt-1"))
end)

t.test("clean() removes temp leftovers; prune() keeps the newest k", function()
  local dir = root .. "/c"
  rl.fs.mkdir(dir .. "/.tmp-ckpt-3-123/model")
  t.write(dir .. "/metrics.jsonl.tmp-AbC123", "x")
  t.write(dir .. "/metrics.jsonl", "keep")
  local removed = ck.clean(dir)
  t.eq(table.concat(removed, ","), ".tmp-ckpt-3-123,metrics.jsonl.tmp-AbC123")
  t.eq(table.concat(rl.fs.list(dir), ","), "metrics.jsonl")
  local m = fake_model({1})
  for k = 1, 5 do ck.write(dir, k * 10, {models = {{"model", m}}}) end
  ck.prune(dir, 2)
  local names = {}
  for _, c in ipairs(ck.list(dir)) do names[#names + 1] = c.name end
  t.eq(table.concat(names, ","), "ckpt-50,ckpt-40")
end)

t.test("prune() counts only usable checkpoints and leaves unusable ones alone", function()
  local dir = root .. "/p"
  local m = fake_model({1})
  for _, k in ipairs{2, 4, 6, 99} do ck.write(dir, k, {models = {{"model", m}}}) end
  t.write(dir .. "/ckpt-99/manifest.json", '{"format": 1, "fi')       -- a cut manifest
  t.write(dir .. "/ckpt-2/model/weights.json", "[7]")                  -- a changed byte
  local known = {}
  local removed, unusable = ck.prune(dir, 2, known)
  local names = {}
  for _, c in ipairs(ck.list(dir)) do names[#names + 1] = c.name end
  t.eq(table.concat(names, ","), "ckpt-99,ckpt-6,ckpt-4,ckpt-2")
  t.eq(#removed, 0)
  t.eq(#unusable, 2)
  t.eq(unusable[1].name, "ckpt-99"); t.eq(unusable[1].why, "manifest.json is not a valid manifest")
  t.eq(unusable[2].name, "ckpt-2")
  t.eq(unusable[2].why, "model/weights.json does not match its SHA-256")
  -- the next checkpoint pushes out the oldest usable one, still not the broken ones
  ck.write(dir, 8, {models = {{"model", m}}})
  known[dir .. "/ckpt-8"] = true
  removed, unusable = ck.prune(dir, 2, known)
  t.eq(table.concat(removed, ","), "ckpt-4")
  t.eq(#unusable, 2)
  names = {}
  for _, c in ipairs(ck.list(dir)) do names[#names + 1] = c.name end
  t.eq(table.concat(names, ","), "ckpt-99,ckpt-8,ckpt-6,ckpt-2")
  -- verdicts are remembered: a checkpoint known good is not hashed again
  t.eq(known[dir .. "/ckpt-6"], true)
  t.eq(known[dir .. "/ckpt-4"], nil)
end)

t.test("rl.fs: atomic write, listing, stat, errors are kind io", function()
  local p = root .. "/f.txt"
  rl.fs.write(p, "hello")
  t.eq(t.slurp(p), "hello")
  t.eq(rl.fs.stat(p).size, 5); t.eq(rl.fs.stat(p).type, "file")
  t.eq(rl.fs.stat(root .. "/nope"), nil)
  t.eq(rl.fs.sha256_string("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
  local e = t.raises(function() rl.fs.write(root .. "/no/dir/x", "y") end, "no/dir")
  t.eq(e.kind, "io")
  t.ok(rl.fs.free_space(root) > 0)
  local t0 = rl.fs.monotonic(); rl.fs.sleep(0.01); t.ok(rl.fs.monotonic() - t0 >= 0.009)
end)

-- A real model handle through rl.run: the checkpoint calls model:save(dir) and a
-- resumed run model:restore(dir), and the restored weights give the same next step.
local ok_model, model_mod = pcall(require, "rl.model")
local have_engine = ok_model and rl.fs.stat((rl.home or ".") .. "/.venv/bin/python")
if not have_engine then
  t.skip("a real model handle checkpoints and restores through rl.run", "no engine here")
else
  t.test("a real model handle: killed after a checkpoint and resumed, it ends bitwise equal", function()
    local recipe = root .. "/real.lua"
    t.write(recipe, [[
local rl = require "rl"
local cfg = rl.config{steps = 2, dir = ""}
local run = rl.run{dir = cfg.dir, resume = true, checkpoint_every = 1, plot = false, progress = false}
local m <close> = rl.model{path = "builtin:tiny", transport = "worker", device = "cpu", threads = 1, seed = 3}
run:model(m)
for step in run:steps(cfg.steps) do
  local s = rl.generate(m, {"ab", "cd"}, {n = 2, max_tokens = 4, temperature = 1.0})
  local r = {}
  for i, x in ipairs(s) do r[i] = #x.text + math.random() end
  local adv = rl.advantages(r, {group = 2})
  local st = m:train_step(s, {loss = "pg", advantages = adv, clip = 1.0})
  run:log{loss = st.loss, grad_norm = st.grad_norm, text = s[1].text .. "|" .. s[4].text}
  if os.getenv("DIE_AT") and step == tonumber(os.getenv("DIE_AT")) then
    os.execute("kill -9 " .. rl.fs.getpid())
  end
end
m:save(cfg.dir .. "/final")
]])
    local a, b = root .. "/realA", root .. "/realB"
    local q = t.shquote
    -- the uninterrupted run and the one killed in step 2 run side by side
    os.execute(("%s %s dir=%s >/dev/null 2>%s & DIE_AT=2 %s %s dir=%s >/dev/null 2>&1 & wait")
      :format(q(t.host), q(recipe), q(a), q(root .. "/a.err"), q(t.host), q(recipe), q(b)))
    t.ok(rl.checkpoint.verify(a .. "/ckpt-2"), "run A finished: " .. t.slurp(root .. "/a.err"))
    t.ok(rl.checkpoint.verify(b .. "/ckpt-1"), "run B checkpointed step 1")
    t.ok(not rl.fs.stat(b .. "/ckpt-2"), "run B died in step 2")
    t.ok(rl.fs.stat(b .. "/ckpt-1/model/engine.json"), "model:save wrote into the checkpoint")
    local st, _, err = t.rlhost({recipe, "dir=" .. b})
    t.eq(st, 0, err)
    t.match(err, "from ckpt%-1")
    local function lines(d)
      local out = {}
      for line in t.slurp(d .. "/metrics.jsonl"):gmatch("[^\n]+") do
        local rec = rl.json.decode(line)
        rec.time = nil
        out[#out + 1] = rl.json.encode(rec, {sort_keys = true})
      end
      return table.concat(out, "\n")
    end
    t.eq(lines(b), lines(a))
    local compared = 0
    for _, f in ipairs(rl.fs.list(a .. "/final")) do
      if f:find("safetensors$") then
        compared = compared + 1
        t.eq(rl.fs.sha256(b .. "/final/" .. f), (rl.fs.sha256(a .. "/final/" .. f)), f)
      end
    end
    t.ok(compared >= 2, "weights and optimizer state compared")
  end)
end

rl.fs.remove(root)
t.done()
