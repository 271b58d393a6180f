-- rl.run: the run directory, metrics lines, exact resume after SIGKILL, SIGINT,
-- config checks on resume, newer formats and foreign checkpoints refused with the
-- directory left as it was. Recipes run in child hosts with a fake model whose
-- weights are a JSON file, so the tests need no engine.
local t = require "tap"
local rl = require "rl"

local root = os.tmpname()
os.remove(root)
rl.fs.mkdir(root)

local data = root .. "/data.jsonl"
do
  local lines = {}
  for i = 1, 10 do lines[i] = ('{"prompt": "p%d", "id": %d}'):format(i, i) end
  t.write(data, table.concat(lines, "\n") .. "\n")
end

-- The recipe: state evolves with math.random, the dataset cursor and a recipe
-- table, so any of them restored wrongly changes the numbers.
local recipe = root .. "/recipe.lua"
t.write(recipe, ([[
local rl = require "rl"
local cfg = rl.config{steps = 6, every = 2, lr = 0.5, dir = "", keep = 0}
local run = rl.run{dir = cfg.dir, resume = true, checkpoint_every = cfg.every,
                   allow_config_change = {"steps"},
                   keep_last = cfg.keep > 0 and cfg.keep or nil, plot = false,
                   progress_every = 1}
local size = tonumber(os.getenv("MODEL_SIZE") or "3")
local model = {w = {}}
for i = 1, size do model.w[i] = 0.0 end
function model:save(d)
  rl.fs.mkdir(d)
  rl.fs.write(d .. "/weights.json", rl.json.encode(self.w))
end
function model:restore(d)
  local w = rl.json.decode(rl.checkpoint.read(d .. "/weights.json"))
  if #w ~= #self.w then
    error(rl.error{kind = "config", message = ("checkpoint %%s holds a model of size %%d, this one is %%d")
                   :format(d, #w, #self.w)}, 0)
  end
  self.w = w
end
local data = rl.dataset(%q, {shuffle = true, seed = 1})
local stats = {seen = 0, history = {}}
run:model(model); run:dataset(data); run:state{stats = stats}
local die = tonumber(os.getenv("DIE_AT") or "")
local pause = tonumber(os.getenv("STEP_SLEEP") or "")
for step in run:steps(cfg.steps) do
  local batch = run:time("generate", data.next, data, 3)
  for i, row in ipairs(batch) do
    model.w[i] = model.w[i] + cfg.lr * math.random() * row.id
  end
  stats.seen = stats.seen + #batch
  stats.history[#stats.history + 1] = batch[1].id
  run:log{reward = model.w[1], samples = #batch, seen = stats.seen, r = math.random(1000),
          nan = 0/0, nested = {a = step}}
  if pause then rl.fs.sleep(pause) end
  if die and step == die then os.execute("kill -9 " .. rl.fs.getpid()) end
end
rl.fs.write(cfg.dir .. "/final.json", rl.json.encode({w = model.w, stats = stats}, {sort_keys = true}))
]]):format(data))

local function host(dir, extra, env)
  local args = {recipe, "dir=" .. dir}
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  return t.rlhost(args, {env = env})
end

-- metrics lines without the wall-clock part
local function metrics(dir)
  local out = {}
  for line in t.slurp(dir .. "/metrics.jsonl"):gmatch("[^\n]+") do
    local rec = rl.json.decode(line)
    rec.time = nil
    out[#out + 1] = rl.json.encode(rec, {sort_keys = true})
  end
  return table.concat(out, "\n")
end

local function listing(dir)
  local out = {}
  local function walk(d, rel)
    for _, n in ipairs(rl.fs.list(d)) do
      local st = rl.fs.stat(d .. "/" .. n)
      local r = rel .. n
      if st.type == "dir" then out[#out + 1] = r .. "/"; walk(d .. "/" .. n, r .. "/")
      else out[#out + 1] = r .. " " .. rl.fs.sha256(d .. "/" .. n) end
    end
  end
  walk(dir, "")
  return table.concat(out, "\n")
end

local ref = root .. "/ref"
t.test("an uninterrupted run writes config, run.json, one metrics line per step, checkpoints", function()
  local st, _, err = host(ref)
  t.eq(st, 0, err)
  local cfg = rl.json.decode(t.slurp(ref .. "/config.json"))
  t.eq(cfg.steps, 6); t.eq(cfg.lr, 0.5)
  t.eq(rl.json.decode(t.slurp(ref .. "/run.json")).format, 1)
  local lines = {}
  for line in t.slurp(ref .. "/metrics.jsonl"):gmatch("[^\n]+") do lines[#lines + 1] = rl.json.decode(line) end
  t.eq(#lines, 6)
  t.eq(lines[1].step, 1); t.eq(lines[6].step, 6); t.eq(lines[1].samples, 3)
  t.ok(lines[1].nan == rl.json.null, "NaN becomes null")
  t.ok(type(lines[1].time.generate) == "number" and type(lines[1].time.step) == "number")
  t.match(t.slurp(ref .. "/metrics.jsonl"), '^{"nan":null,"nested":{"a":1},"r":')  -- sorted keys
  for _, k in ipairs{2, 4, 6} do t.ok(rl.fs.stat(ref .. "/ckpt-" .. k), "ckpt-" .. k) end
  t.ok(rl.checkpoint.verify(ref .. "/ckpt-6"))
  t.match(err, "step 6/6")  -- plain progress lines when stderr is not a terminal
end)

t.test("running again with resume=true on a finished run does nothing more", function()
  local before = metrics(ref)
  local st, _, err = host(ref)
  t.eq(st, 0, err)
  t.eq(metrics(ref), before)
  t.match(err, "resuming .* from ckpt%-6")
end)

t.test("SIGKILL after step k, then resume: same metrics and final state as uninterrupted", function()
  local dir = root .. "/killed"
  local st = host(dir, {}, "DIE_AT=5")
  t.eq(st, 137)
  t.ok(not rl.fs.stat(dir .. "/final.json"))
  local st2, _, err = host(dir)
  t.eq(st2, 0, err)
  t.match(err, "from ckpt%-4")
  t.eq(metrics(dir), metrics(ref))
  t.eq(t.slurp(dir .. "/final.json"), t.slurp(ref .. "/final.json"))
end)

t.test("a damaged metrics line is moved to metrics.jsonl.damaged with a warning naming it", function()
  local dir = root .. "/damaged"
  t.eq((host(dir, {}, "DIE_AT=5")), 137)                -- ckpt-4; metrics lines 1..4
  local lines = {}
  for line in t.slurp(dir .. "/metrics.jsonl"):gmatch("[^\n]+") do lines[#lines + 1] = line end
  t.eq(#lines, 4)
  local bad = lines[2]:sub(1, 20) .. "\0\255" .. lines[2]:sub(40)   -- a bad sector in step 2
  lines[2] = bad
  -- and a last line cut short by a death mid-write: dropped without a word
  t.write(dir .. "/metrics.jsonl", table.concat(lines, "\n") .. "\n" .. '{"step": 5, "rew')
  local st, _, err = host(dir)
  t.eq(st, 0, err)
  local steps = {}
  for line in t.slurp(dir .. "/metrics.jsonl"):gmatch("[^\n]+") do
    steps[#steps + 1] = rl.json.decode(line).step
  end
  t.eq(table.concat(steps, ","), "1,3,4,5,6")
  t.eq(t.slurp(dir .. "/metrics.jsonl.damaged"), bad .. "\n")
  local warnings = {}
  for line in err:gmatch("[^\n]+") do
    if line:find("warning:", 1, true) then warnings[#warnings + 1] = line end
  end
  t.eq(#warnings, 1, err)
  t.eq(warnings[1], ("rlhost: warning: %s/metrics.jsonl: line 2 is damaged (not a JSON object "
                     .. "with a step); moved to %s/metrics.jsonl.damaged"):format(dir, dir))
  -- a second damage later is appended: nothing kept aside is lost
  t.write(dir .. "/metrics.jsonl", t.slurp(dir .. "/metrics.jsonl"):gsub("^[^\n]*", "garbage", 1))
  st, _, err = host(dir)
  t.eq(st, 0, err)
  t.match(err, "metrics.jsonl: line 1 is damaged")
  t.eq(t.slurp(dir .. "/metrics.jsonl.damaged"), bad .. "\ngarbage\n")
end)

t.test("SIGKILL in the middle of a checkpoint write: the previous one is used", function()
  local dir = root .. "/midckpt"
  local pidf = root .. "/pid"
  os.execute(("RLHOST_TEST_CHECKPOINT_DELAY=0.15 %s %s dir=%s every=1 >/dev/null 2>&1 & echo $! > %s")
    :format(t.shquote(t.host), t.shquote(recipe), t.shquote(dir), t.shquote(pidf)))
  local pid
  for _ = 1, 200 do
    pid = pid or tonumber(t.slurp(pidf))
    local found = false
    if rl.fs.stat(dir) then
      for _, n in ipairs(rl.fs.list(dir)) do if n:find("^%.tmp%-ckpt%-3%-") then found = true end end
    end
    if found and pid then break end
    rl.fs.sleep(0.02)
  end
  rl.fs.sleep(0.2)  -- inside the write: after the model, before the manifest
  os.execute("kill -9 " .. pid)
  rl.fs.sleep(0.1)
  local names = table.concat(rl.fs.list(dir), " ")
  t.match(names, "%.tmp%-ckpt%-3%-")
  t.ok(not names:find("ckpt%-3 ") and not names:find("ckpt%-3$"), "no ckpt-3: " .. names)
  local st, _, err = host(dir, {"every=1"})
  t.eq(st, 0, err)
  t.match(err, "removed .*%.tmp%-ckpt%-3")
  t.match(err, "from ckpt%-2")
  t.eq(metrics(dir), metrics(ref))
  t.eq(t.slurp(dir .. "/final.json"), t.slurp(ref .. "/final.json"))
end)

t.test("a corrupt newest checkpoint is skipped with a warning", function()
  local dir = root .. "/corrupt"
  t.eq((host(dir, {"steps=4"})), 0)
  -- flip the stored weights of the newest checkpoint (same size)
  local p = dir .. "/ckpt-4/model/weights.json"
  local s = t.slurp(p)
  t.write(p, (s:gsub("%d", "7", 1)))
  local st, _, err = host(dir, {"steps=4"})
  t.eq(st, 0, err)
  t.match(err, "skipping checkpoint .*ckpt%-4: model/weights.json does not match its SHA%-256")
  t.match(err, "from ckpt%-2")
  -- a checkpoint without a manifest is incomplete
  rl.fs.remove(dir .. "/ckpt-4/manifest.json")
  local _, why = rl.checkpoint.verify(dir .. "/ckpt-4")
  t.match(why, "no manifest")
end)

t.test("keys listed in allow_config_change may differ: a finished run is extended", function()
  local dir = root .. "/extend"
  t.eq((host(dir, {"steps=4"})), 0)
  local st, _, err = host(dir, {"steps=6"})
  t.eq(st, 0, err)
  t.match(err, "config changed where allowed: steps: 4 %-> 6")
  t.eq(metrics(dir), metrics(ref))
  t.eq(rl.json.decode(t.slurp(dir .. "/config.json")).steps, 6)
end)

t.test("keep_last prunes old checkpoints", function()
  local dir = root .. "/keep"
  t.eq((host(dir, {"every=1", "keep=2"})), 0)
  local ck = {}
  for _, n in ipairs(rl.fs.list(dir)) do if n:find("^ckpt%-") then ck[#ck + 1] = n end end
  t.eq(table.concat(ck, ","), "ckpt-5,ckpt-6")
end)

t.test("keep_last counts only usable checkpoints; unusable ones are reported once, kept", function()
  local dir = root .. "/keep-broken"
  t.eq((host(dir, {"steps=4", "keep=2", "every=1"})), 0)      -- ckpt-3, ckpt-4
  -- an unusable newest checkpoint (cut manifest) and an unusable oldest one (a copy
  -- under another step's name)
  os.execute(("cp -r %s %s"):format(t.shquote(dir .. "/ckpt-4"), t.shquote(dir .. "/ckpt-99")))
  t.write(dir .. "/ckpt-99/manifest.json", '{"format": 1, "fi')
  os.execute(("cp -r %s %s"):format(t.shquote(dir .. "/ckpt-3"), t.shquote(dir .. "/ckpt-1")))
  local st, _, err = host(dir, {"steps=8", "keep=2", "every=1"})
  t.eq(st, 0, err)
  local ck = {}
  for _, c in ipairs(rl.checkpoint.list(dir)) do ck[#ck + 1] = c.name end
  t.eq(table.concat(ck, ","), "ckpt-99,ckpt-8,ckpt-7,ckpt-1")
  t.eq(t.slurp(dir .. "/ckpt-99/manifest.json"), '{"format": 1, "fi')
  -- each unusable checkpoint is named in exactly one line
  local function lines_naming(name)
    local n = 0
    for line in err:gmatch("[^\n]+") do if line:find(name, 1, true) then n = n + 1 end end
    return n
  end
  t.eq(lines_naming("ckpt-99"), 1, err)
  t.match(err, "skipping checkpoint .*ckpt%-99: manifest.json is not a valid manifest")
  t.eq(lines_naming("ckpt-1 "), 1, err)
  t.match(err, "checkpoint .*/ckpt%-1 is not usable %(state.json does not match its directory%); "
               .. "left in place, not counted toward keep_last")
  t.match(err, "from ckpt%-4")
end)

t.test("resume with another config is refused (exit 2), directory untouched", function()
  local before = listing(ref)
  local st, _, err = host(ref, {"lr=0.25"})
  t.eq(st, 2)
  t.match(err, "another config")
  t.match(err, "lr: 0%.5 %-> 0%.25")
  t.eq(listing(ref), before)
end)

t.test("a run directory of a newer format is refused, nothing modified", function()
  local dir = root .. "/newer"
  rl.fs.mkdir(dir)
  t.write(dir .. "/run.json", '{"format": 99}\n')
  t.write(dir .. "/.tmp-ckpt-1-1", "stale")
  local before = listing(dir)
  local st, _, err = host(dir)
  t.eq(st, 2)
  t.match(err, "newer rlhost")
  t.eq(listing(dir), before)
end)

t.test("a checkpoint from another model: config error, directory left as it was", function()
  local dir = root .. "/other"
  t.eq((host(dir, {"steps=2"})), 0)
  t.write(dir .. "/.tmp-ckpt-9-1", "stale")  -- would be cleaned by a run that starts
  local before = listing(dir)
  local st, _, err = host(dir, {"steps=2"}, "MODEL_SIZE=4")
  t.eq(st, 2)
  t.match(err, "model of size 3")
  t.eq(listing(dir), before)
end)

t.test("the first SIGINT finishes the step, checkpoints, exits 130; resume completes", function()
  local dir = root .. "/sigint"
  local script = ("STEP_SLEEP=0.1 %s %s dir=%s steps=40 every=100 2>%s & pid=$!; "
                  .. "while [ ! -s %s/metrics.jsonl ]; do sleep 0.02; done; kill -INT $pid; wait $pid; echo $?")
    :format(t.shquote(t.host), t.shquote(recipe), t.shquote(dir), t.shquote(root .. "/sigint.err"), t.shquote(dir))
  local p = io.popen(script)
  local status = tonumber(p:read("a"))
  p:close()
  t.eq(status, 130)
  local err = t.slurp(root .. "/sigint.err")
  t.match(err, "interrupted after step (%d+)")
  local k = tonumber(err:match("interrupted after step (%d+)"))
  t.ok(k < 40, "stopped early")
  t.ok(rl.checkpoint.verify(dir .. "/ckpt-" .. k), "checkpoint at the interrupted step")
  local n = 0
  for _ in t.slurp(dir .. "/metrics.jsonl"):gmatch("[^\n]+") do n = n + 1 end
  t.eq(n, k)
  local st, _, err2 = host(dir, {"steps=40", "every=100"})
  t.eq(st, 0, err2)
  n = 0
  for _ in t.slurp(dir .. "/metrics.jsonl"):gmatch("[^\n]+") do n = n + 1 end
  t.eq(n, 40)
end)

t.test("two processes cannot run in one directory at once", function()
  local dir = root .. "/locked"
  local script = ("STEP_SLEEP=0.05 %s %s dir=%s steps=30 >/dev/null 2>&1 & pid=$!; "
                  .. "while [ ! -s %s/metrics.jsonl ]; do sleep 0.02; done; "
                  .. "%s %s dir=%s steps=30 2>&1; echo status=$?; kill -9 $pid; wait $pid 2>/dev/null")
    :format(t.shquote(t.host), t.shquote(recipe), t.shquote(dir), t.shquote(dir),
            t.shquote(t.host), t.shquote(recipe), t.shquote(dir))
  local p = io.popen(script)
  local out = p:read("a")
  p:close()
  t.match(out, "in use by another rlhost process")
  t.match(out, "status=2")
  -- the kernel dropped the killed holder's lock: resuming works
  local st, _, err = host(dir, {"steps=30"})
  t.eq(st, 0, err)
end)

t.test("without Python the plots are skipped with a note", function()
  local dir = root .. "/noplot"
  t.write(root .. "/noplot.lua", ([[
local rl = require "rl"
local run = rl.run{dir = %q}
for _ in run:steps(2) do run:log{reward = 1} end
]]):format(dir))
  local st, _, err = t.rlhost({root .. "/noplot.lua"}, {env = "RLHOST_VENV=/nonexistent"})
  t.eq(st, 0, err)
  t.match(err, "plots skipped: no /nonexistent/bin/python")
end)

t.test("a fresh run in a used directory needs resume or overwrite", function()
  t.write(root .. "/fresh.lua", ([[
local rl = require "rl"
local run = rl.run{dir = %q, plot = false, progress = false, overwrite = (...) == "over"}
for _ in run:steps(2) do run:log{x = 1} end
]]):format(ref))
  local st, _, err = t.rlhost({root .. "/fresh.lua"})
  t.eq(st, 2); t.match(err, "already holds a run")
  local st2, _, err2 = t.rlhost({root .. "/fresh.lua", "over"})
  t.eq(st2, 0, err2)
  t.ok(not rl.fs.stat(ref .. "/ckpt-6"), "old checkpoints removed")
  t.ok(rl.fs.stat(ref .. "/ckpt-2"))
end)

t.test("break ends the step normally (logged and checkpointed); plots are written", function()
  local dir = root .. "/brk"
  t.write(root .. "/brk.lua", ([[
local rl = require "rl"
local run = rl.run{dir = %q, progress = false}
for step in run:steps() do
  run:log{reward = step * 0.1, loss = 1 / step}
  if step == 3 then break end
end
]]):format(dir))
  local st, _, err = t.rlhost({root .. "/brk.lua"})
  t.eq(st, 0, err)
  local n = 0
  for _ in t.slurp(dir .. "/metrics.jsonl"):gmatch("[^\n]+") do n = n + 1 end
  t.eq(n, 3)
  t.ok(rl.checkpoint.verify(dir .. "/ckpt-3"))
  t.ok(rl.fs.stat(dir .. "/metrics.png"), "metrics.png: " .. err)
end)

rl.fs.remove(root)
t.done()
