-- rl.model and rl.generate over both transports (host/lmodel.c, host/py.c,
-- host/proc.c, lua/rl/model.lua, lua/rl/generate.lua) with builtin:tiny.
package.path = arg[0]:gsub("[^/]+$", "") .. "?.lua;" .. package.path
local t = require "tap"
local rl = require "rl"
local M = require "rl.model"

-- Under `make san` the embedded interpreter and torch run inside the ASan build too;
-- what they keep allocated until exit is suppressed in tests/lsan.supp.
local EMBEDDED = true
local NO_EMBED = "no embedded transport"

local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p " .. t.shquote(p)))
  return p
end

local function exists(p)
  local f = io.open(p, "rb")
  if f then f:close() return true end
  return false
end

local function my_pid()
  local f = assert(io.open("/proc/self/stat"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match("^(%d+)"))
end

-- Children of this process (all, or those in state Z), leaving out the shell and cat
-- that read /proc for us.
local function children(state_wanted)
  local me, out = my_pid(), {}
  local p = io.popen("cat /proc/[0-9]*/stat 2>/dev/null")
  for line in p:lines() do
    local pid, comm, state, ppid = line:match("^(%d+) %((.-)%) (%a) (%d+)")
    if pid and tonumber(ppid) == me and comm ~= "sh" and comm ~= "cat"
       and (not state_wanted or state == state_wanted) then
      out[#out + 1] = pid
    end
  end
  p:close()
  return out
end
local function zombies() return children("Z") end

local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local s = f:read("a")
  f:close()
  return not s:match("^%d+ %(.-%) Z")
end

local function same_list(a, b, what)
  t.eq(#a, #b, what .. " length")
  for i = 1, #a do t.eq(a[i], b[i], what .. "[" .. i .. "]") end
end

local function err_of(f, ...)
  local ok, e = pcall(f, ...)
  t.ok(not ok, "expected an error")
  t.ok(rl.is_error(e), "an rl error table, got " .. tostring(e))
  return e
end

local BASE = { path = "builtin:tiny", seed = 7, threads = 1, lr = 1e-3 }
local function opts(extra)
  local o = {}
  for k, v in pairs(BASE) do o[k] = v end
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

local PROMPTS = { "The cat", { prompt = "2+2=", answer = "4" } }

t.test("the host starts no Python until an embedded model is made", function()
  local st, out = t.rlhost({ "-e", [[
    local rl = require "rl"
    local m = require "rl.model"
    print(type(rl.model), type(rl.generate), type(rl.train_step), m.python_started())]] })
  t.eq(st, 0)
  t.eq(out, "function\tfunction\tfunction\tfalse\n")
end)

t.test("bad options raise kind=config naming the field, before the engine", function()
  local e = err_of(rl.model, opts { lrr = 1e-3 })
  t.eq(e.kind, "config")
  t.match(e.message, "unknown option 'lrr' %(did you mean 'lr'%?%)")
  e = err_of(rl.model, opts { lr = "fast" })
  t.eq(e.kind, "config")
  t.match(e.message, "option 'lr' must be a number, got a string")
  e = err_of(rl.model, opts { threads = 1.5 })
  t.match(e.message, "'threads' must be an integer")
  e = err_of(rl.model, opts { betas = { 0.9 } })
  t.match(e.message, "'betas' must be a list of two numbers")
  e = err_of(rl.model, opts { transport = "carrier-pigeon" })
  t.match(e.message, "'transport' must be 'embedded' or 'worker'")
  e = err_of(rl.model, opts { timeout = -1 })
  t.match(e.message, "'timeout' must be a positive number")
  e = err_of(rl.model, opts { precision = 16 })
  t.match(e.message, "option 'precision' must be a string")
  e = err_of(rl.model, opts { gradient_checkpointing = "yes" })
  t.match(e.message, "option 'gradient_checkpointing' must be a boolean")
  e = err_of(rl.model, { seed = 1 })
  t.match(e.message, "'path' is required")
  t.match(tostring(e), "test_model.lua:%d+: config error")
  t.eq(M.python_started(), false, "no interpreter was started for bad options")
end)

t.test("a missing model directory is a config error naming it", function()
  local e = err_of(rl.model, opts { path = "/nonexistent/model-dir", transport = "worker" })
  t.eq(e.kind, "config")
  t.match(e.message, "/nonexistent/model%-dir")
  t.eq(#children(), 0, "the worker of a failed load is gone at once")
end)

-- The two transports, each loaded with the same options.
local emb = EMBEDDED and rl.model(opts { transport = "embedded" })
local wrk = rl.model(opts { transport = "worker" })

t.test("a worker handle reports its transport and pid", function()
  local info = wrk:info()
  t.eq(info.transport, "worker")
  t.ok(math.type(info.pid) == "integer" and alive(info.pid), "worker pid alive")
  t.eq(info.version, 0)
  t.eq(info.restarts, 0)
  t.match(tostring(wrk), "^rl%.model%(builtin:tiny, worker, open%)$")
end)

t.test("rl.generate: flat prompt-major samples with ride-along fields", function()
  local s = rl.generate(wrk, PROMPTS, { n = 3, max_tokens = 6, seed = 11 })
  t.eq(#s, 6)
  for i, x in ipairs(s) do
    local g = (i - 1) // 3 + 1
    t.eq(x.group, g, "group")
    t.eq(x.prompt, g == 1 and "The cat" or "2+2=", "prompt")
    t.eq(x.source, "model")
    t.eq(x.version, 0)
    t.eq(type(x.text), "string")
    t.eq(#x.ids, #x.logprobs, "one log-prob per token")
    t.ok(x.finish == "stop" or x.finish == "length", "finish")
    t.eq(x.answer, g == 2 and "4" or nil, "ride-along field")
  end
end)

t.test("rl.generate validates prompts and n, naming the index", function()
  local e = err_of(rl.generate, wrk, {}, { n = 1 })
  t.eq(e.kind, "config")
  t.match(e.message, "empty")
  e = err_of(rl.generate, wrk, { "a" }, { n = 0 })
  t.match(e.message, "'n' must be an integer >= 1, got 0")
  e = err_of(rl.generate, wrk, { "a", "b", 3 }, {})
  t.match(e.message, "prompts%[3%] must be a string")
  e = err_of(rl.generate, wrk, { "a", { text = "x" } }, {})
  t.match(e.message, "prompts%[2%]%.prompt must be a string")
  e = err_of(rl.generate, wrk, { "a" }, { n = 1, bogus = true })
  t.eq(e.kind, "config")
  t.match(e.message, "bogus")
  t.eq(type(e.traceback), "string", "engine errors carry the Python traceback")
  t.eq(#rl.generate(wrk, { "a" }, { max_tokens = 2 }), 1, "the handle still works")
end)

local function run_same(m)
  local out = {}
  out.g1 = rl.generate(m, PROMPTS, { n = 2, max_tokens = 8, seed = 3 })
  out.st = rl.train_step(m, out.g1, { loss = "pg", advantages = { 1, -1, 0.5 }, clip = 1.0 })
  out.g2 = rl.generate(m, PROMPTS, { n = 2, max_tokens = 8, temperature = 0.7, top_k = 20 })
  out.lp = m:logprobs(out.g1)
  out.ppo = m:backward(out.g2, { loss = "ppo", advantages = { 0.5, nil, -1, 2 } })
  out.st2 = m:step { clip = 1.0 }
  return out
end

if EMBEDDED then
  t.test("embedded and worker give identical generations and losses", function()
    -- Fresh handles: the model's own sampling generator (used without a seed) has
    -- a history, and the two must start from the same one.
    local e2 <close> = rl.model(opts { transport = "embedded" })
    local w2 <close> = rl.model(opts { transport = "worker" })
    local a, b = run_same(e2), run_same(w2)
    for _, k in ipairs { "g1", "g2" } do
      t.eq(#a[k], #b[k])
      for i = 1, #a[k] do
        t.eq(a[k][i].text, b[k][i].text, k .. " text " .. i)
        same_list(a[k][i].ids, b[k][i].ids, k .. " ids " .. i)
        same_list(a[k][i].logprobs, b[k][i].logprobs, k .. " logprobs " .. i)
        t.eq(a[k][i].version, b[k][i].version)
      end
    end
    for _, k in ipairs { "loss", "grad_norm", "lr", "tokens", "version" } do
      t.eq(a.st[k], b.st[k], "step " .. k)
    end
    t.eq(a.st.version, 1)
    t.eq(a.g2[1].version, 1, "samples carry the version that made them")
    for i = 1, #a.lp do same_list(a.lp[i], b.lp[i], "logprobs " .. i) end
    for _, k in ipairs { "loss", "clip_frac", "tokens", "samples" } do
      t.eq(a.ppo[k], b.ppo[k], "ppo " .. k)
    end
    t.eq(a.ppo.samples, 3, "a nil advantage leaves its sample out")
    t.eq(a.st2.grad_norm, b.st2.grad_norm, "second step")
    t.eq(a.st2.version, 2)
  end)
else
  t.skip("embedded and worker give identical generations and losses", NO_EMBED)
end

-- Field case: model.lua forwarded only prompt, text and logprobs, so a text sample cut
-- at max_tokens (finish="length") was scored and trained with an EOS it never had
-- (7 tokens for " 1 2 3" instead of 6), on every op and both transports.
t.test("a text sample cut at max_tokens gets no EOS, on every op and transport", function()
  local cut = { prompt = "sort 3 2 1 =", text = " 1 2 3", finish = "length" }
  local ended = { prompt = "sort 3 2 1 =", text = " 1 2 3", finish = "stop" }
  local empty = { prompt = "sort 3 2 1 =", text = "", finish = "length" }
  for _, m in ipairs { emb or false, wrk } do
    if m then
      local tr = m:_transport()
      local lp = m:logprobs { cut, ended, { prompt = cut.prompt, text = cut.text } }
      t.eq(#lp[1], 6, tr .. ": logprobs of the cut sample")
      t.eq(#lp[2], 7, tr .. ": a sample that ended has its EOS")
      t.eq(#lp[3], 7, tr .. ": text without finish ended naturally")
      t.eq(#m:logprobs({ empty })[1], 0, tr .. ": an empty cut sample has no tokens")
      local b = m:backward({ cut }, { loss = "pg", advantages = { 1 } })
      t.eq(b.tokens, 6, tr .. ": backward")
      b = m:backward({ ended }, { loss = "sft" })
      t.eq(b.tokens, 7, tr .. ": backward, sft")
      m:step {}
      local st = m:train_step({ cut, empty }, { loss = "pg", advantages = { 1, -1 }, clip = 1.0 })
      t.eq(st.tokens, 6, tr .. ": train_step; the empty cut sample adds no token")
      t.eq(st.samples, 1, tr .. ": the empty cut sample trains nothing")
      -- ppo reads the recorded log-probs: one per completion token, none for the empty one
      local c2 = { prompt = cut.prompt, text = cut.text, finish = "length", logprobs = lp[1] }
      local e2 = { prompt = cut.prompt, text = "", finish = "length", logprobs = {} }
      b = m:backward({ c2, e2 }, { loss = "ppo", advantages = { 1, 1 } })
      t.eq(b.tokens, 6, tr .. ": ppo"); t.eq(b.samples, 1, tr .. ": ppo samples")
      m:step {}
      -- a batch of nothing but empty cut samples: no loss, no NaN, the step still counts
      b = m:backward({ empty }, { loss = "pg", advantages = { 1 }, total_tokens = 0 })
      t.eq(b.tokens, 0, tr .. ": empty"); t.eq(b.samples, 0); t.eq(b.loss, 0.0)
      st = m:step { clip = 1.0 }
      t.eq(st.tokens, 0, tr .. ": step tokens"); t.eq(st.grad_norm, 0.0, tr .. ": no gradient")
      t.ok(st.loss == st.loss, tr .. ": the step's loss is a number")
    end
  end
end)

-- Weight files the engine process `pid` exported (named rlengine-PID-...): other
-- processes' exports (a concurrent engine test) do not count.
local function shm_exports(pid)
  local n = 0
  for _, name in ipairs(rl.fs.list("/dev/shm")) do
    if name:find("rlengine-" .. pid .. "-", 1, true) == 1 then n = n + 1 end
  end
  return n
end

t.test("sync: trainer weights reach a worker generator, same log-probs", function()
  local trainer = emb or rl.model(opts { transport = "worker", seed = 99 })
  local gen <close> = rl.model(opts { transport = "worker", seed = 12345 })
  local samples = rl.generate(trainer, { "abc", "hello" }, { n = 2, max_tokens = 6, seed = 1 })
  trainer:train_step(samples, { loss = "sft", clip = 1.0 })
  local _, wpid = trainer:_transport()
  local exporter = wpid or my_pid()
  local before = shm_exports(exporter)
  local v = trainer:sync(gen)
  t.eq(v, trainer:info().version)
  t.eq(gen:info().version, v, "the generator takes the trainer's version")
  t.eq(shm_exports(exporter), before, "the weight file was removed after its one read")
  local lt = trainer:logprobs(samples)
  local lg = gen:logprobs(samples)
  for i = 1, #lt do same_list(lt[i], lg[i], "synced logprobs " .. i) end
  local s = rl.generate(gen, { "abc" }, { max_tokens = 3 })
  t.eq(s[1].version, v)
  if trainer ~= emb then trainer:close() end
end)

t.test("save and restore through the handle reproduce the next step", function()
  local d = tmpdir()
  local m = emb or wrk
  local samples = rl.generate(m, { "xyz" }, { n = 2, max_tokens = 5, seed = 2 })
  local saved = m:save(d)
  t.ok(#saved.files >= 2, "files listed")
  local a = m:train_step(samples, { loss = "pg", advantages = { 1, -0.5 }, clip = 1.0 })
  local r = m:restore(d)
  t.eq(r.version, saved.version)
  local b = m:train_step(samples, { loss = "pg", advantages = { 1, -0.5 }, clip = 1.0 })
  t.eq(a.loss, b.loss)
  t.eq(a.grad_norm, b.grad_norm)
  t.eq(a.version, b.version)
  os.execute("rm -rf " .. t.shquote(d))
end)

t.test("corrupt safetensors, another model's checkpoint: config errors, handle usable", function()
  local d = tmpdir()
  wrk:save(d)
  -- Another model: same files, other architecture in the manifest.
  local f = assert(io.open(d .. "/engine.json"))
  local meta = rl.json.decode(f:read("a"))
  f:close()
  local k = next(meta.arch)
  for key, val in pairs(meta.arch) do
    if math.type(val) == "integer" then k = key break end
  end
  meta.arch[k] = meta.arch[k] + 1
  t.write(d .. "/engine.json", rl.json.encode(meta))
  local e = err_of(wrk.restore, wrk, d)
  t.eq(e.kind, "config")
  t.match(e.message, "another model")
  -- Corrupt weights.
  wrk:save(d)
  t.write(d .. "/model.safetensors", "\xff\xff\xff\xff\xff\xff\xff\x7fnot a safetensors file")
  e = err_of(wrk.restore, wrk, d)
  t.eq(e.kind, "config")
  t.match(e.message, "model%.safetensors")
  t.eq(#rl.generate(wrk, { "still" }, { max_tokens = 2 }), 1, "the handle still works")
  os.execute("rm -rf " .. t.shquote(d))
end)

t.test("a deadline exceeded is kind=timeout; the next call starts a new worker", function()
  local _, pid = wrk:_transport()
  local e = err_of(wrk.generate, wrk, { "a long one" },
                   { n = 16, max_tokens = 240, timeout = 0.05 })
  t.eq(e.kind, "timeout")
  t.eq(e.retryable, true)
  t.ok(not alive(pid), "the hung worker was stopped")
  local s = rl.generate(wrk, { "again" }, { max_tokens = 3 })
  t.eq(#s, 1)
  local info = wrk:info()
  t.eq(info.restarts, 1)
  t.ok(info.pid ~= pid, "a new worker")
  t.eq(#zombies(), 0, "no zombies")
end)

t.test("SIGKILL in the middle of generate: kind=crash, then a fresh worker", function()
  local m <close> = rl.model(opts { transport = "worker" })
  local _, pid = m:_transport()
  -- The kill lands while the worker is busy with a long generate.
  os.execute(("(sleep 0.4; kill -9 %d) >/dev/null 2>&1 &"):format(pid))
  local e = err_of(m.generate, m, { "long", "longer" }, { n = 32, max_tokens = 240 })
  t.eq(e.kind, "crash")
  t.eq(e.retryable, true)
  t.match(e.message, "killed by signal SIGKILL")
  t.eq(e.pid, pid)
  t.eq(e.signal, 9)
  t.eq(e.exit, "killed by signal SIGKILL")
  t.ok(not alive(pid), "the dead worker was reaped")
  local s = rl.generate(m, { "after" }, { n = 2, max_tokens = 3, seed = 1 })
  t.eq(#s, 2)
  local _, pid2, restarts = m:_transport()
  t.ok(pid2 and pid2 ~= pid, "a new worker")
  t.eq(restarts, 1)
  t.eq(#zombies(), 0, "no zombies")
end)

-- Descriptors of this process, listed in-process (a popen'd `ls` would race with
-- the closing of its own pipe's write end).
local function open_fds()
  local names = rl.fs.list("/proc/self/fd")
  return #names, table.concat(names, " ")
end

t.test("close: the worker exits, the handle refuses use, closing twice is fine", function()
  local fds, before = open_fds()
  local m = rl.model(opts { transport = "worker" })
  local now, after = open_fds()
  t.eq(now, fds + 3, "stdin, stdout and stderr pipes of the worker: before " .. before
                     .. "; after " .. after)
  local _, pid = m:_transport()
  m:close()
  t.ok(not alive(pid), "worker gone after close")
  t.eq(m:isopen(), false)
  local e = err_of(m.info, m)
  t.eq(e.kind, "usage")
  t.match(e.message, "closed")
  m:close()
  do
    local m2 <close> = rl.model(opts { transport = "worker" })
    _, pid = m2:_transport()
  end
  t.ok(not alive(pid), "worker gone at the end of a <close> scope")
  t.eq(#zombies(), 0, "no zombies")
  t.eq(open_fds(), fds, "no descriptor leaked")
end)

if emb then emb:close() end
wrk:close()
t.done()
