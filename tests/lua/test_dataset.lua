-- rl.dataset: JSON Lines and JSON array reading, the field's row formats (strings or
-- chat messages), errors with file, line and field, shuffling, epochs, batches, the
-- checkpointable cursor and sharding.
local t = require "tap"
local rl = require "rl"

local dir = os.tmpname()
os.remove(dir)
rl.fs.mkdir(dir)

local function write_rows(name, n, extra)
  local lines = {}
  for i = 1, n do
    lines[#lines + 1] = rl.json.encode({prompt = "p" .. i, completion = "c" .. i, id = i,
                                        meta = {k = i}}, {sort_keys = true})
  end
  if extra then lines[#lines + 1] = extra end
  local p = dir .. "/" .. name
  t.write(p, table.concat(lines, "\n") .. "\n")
  return p
end

local function ids(rows)
  local out = {}
  for i, r in ipairs(rows) do out[i] = r.id end
  return table.concat(out, ",")
end

t.test("rows ride along with all their fields, in file order without shuffle", function()
  local ds = rl.dataset(write_rows("a.jsonl", 5))
  t.eq(#ds, 5); t.eq(ds:size(), 5)
  local b = ds:next(2)
  t.eq(ids(b), "1,2"); t.eq(b[1].completion, "c1"); t.eq(b[1].meta.k, 1)
  b[1].prompt = "changed"  -- batches are copies
  t.eq(ds:get(1).prompt, "p1")
  t.eq(table.concat(rl.prompts(ds:next(2)), ","), "p3,p4")
end)

t.test("batches cross epochs; epochs= stops; blank lines are skipped", function()
  local p = write_rows("b.jsonl", 3, "")
  local ds = rl.dataset(p, {epochs = 2})
  t.eq(ids(ds:next(2)), "1,2")
  t.eq(ids(ds:next(2)), "3,1"); t.eq(ds.epoch, 2)
  t.eq(ids(ds:next(5)), "2,3")
  t.eq(ds:next(1), nil)
  local n = 0
  for _ in rl.dataset(p, {epochs = 1}):batches(2) do n = n + 1 end
  t.eq(n, 2)
end)

t.test("shuffle depends on the seed and the epoch, not on math.random", function()
  local p = write_rows("c.jsonl", 20)
  local a = rl.dataset(p, {shuffle = true, seed = 7})
  math.randomseed(1)
  local e1 = ids(a:next(20)); local e2 = ids(a:next(20))
  local b = rl.dataset(p, {shuffle = true, seed = 7})
  math.randomseed(99)
  t.eq(ids(b:next(20)), e1); t.eq(ids(b:next(20)), e2)
  t.ok(e1 ~= e2, "each epoch has its own order")
  local c = rl.dataset(p, {shuffle = true, seed = 8})
  t.ok(ids(c:next(20)) ~= e1, "another seed, another order")
  -- every row once per epoch
  local seen = {}
  for id in e1:gmatch("%d+") do seen[tonumber(id)] = (seen[tonumber(id)] or 0) + 1 end
  for i = 1, 20 do t.eq(seen[i], 1) end
end)

t.test("the cursor saved by state() resumes exactly", function()
  local p = write_rows("d.jsonl", 7)
  local a = rl.dataset(p, {shuffle = true, seed = 3})
  a:next(5)
  local st = rl.json.decode(rl.json.encode(a:state()))  -- as a checkpoint stores it
  local want = ids(a:next(6)) .. "|" .. ids(a:next(4))
  local b = rl.dataset(p, {shuffle = true, seed = 3})
  b:set_state(st)
  t.eq(ids(b:next(6)) .. "|" .. ids(b:next(4)), want)
  -- a dataset of another size refuses the cursor
  local c = rl.dataset(write_rows("e.jsonl", 8), {shuffle = true, seed = 3})
  local e = t.raises(function() c:set_state(st) end, "8 rows but the checkpoint's had 7")
  t.eq(e.kind, "config")
end)

t.test("shard(rank, world) splits rows without overlap", function()
  local ds = rl.dataset(write_rows("f.jsonl", 7))
  t.eq(ids(ds:shard(0, 3):all()), "1,4,7")
  t.eq(ids(ds:shard(2, 3):all()), "3,6")
  t.raises(function() ds:shard(3, 3) end, "rank")
end)

t.test("a bad line is a config error naming the file and line", function()
  local p = write_rows("g.jsonl", 2, '{"prompt": "x",}')
  local e = t.raises(function() rl.dataset(p) end, "g.jsonl:3:")
  t.eq(e.kind, "config")
  t.write(dir .. "/h.jsonl", '{"prompt": "a"}\n\n{"completion": "b"}\n')
  t.raises(function() rl.dataset(dir .. "/h.jsonl") end, "h.jsonl:3: missing field 'prompt'")
  t.write(dir .. "/i.jsonl", '{"prompt": 3}\n')
  t.raises(function() rl.dataset(dir .. "/i.jsonl") end, "i.jsonl:1: field 'prompt' must be a string")
  t.write(dir .. "/j.jsonl", '[1,2]\n')
  t.raises(function() rl.dataset(dir .. "/j.jsonl") end, "j.jsonl:1: expected a JSON object")
  local e2 = t.raises(function() rl.dataset(dir .. "/missing.jsonl") end, "missing.jsonl")
  t.eq(e2.kind, "config")
  t.write(dir .. "/k.jsonl", "\n")
  t.raises(function() rl.dataset(dir .. "/k.jsonl") end, "empty dataset")
end)

t.test("a bad file exits 2 from a recipe", function()
  t.write(dir .. "/bad.jsonl", '{"prompt": "a"}\n{oops\n')
  t.write(dir .. "/r.lua", ('local rl = require "rl"; rl.dataset(%q)'):format(dir .. "/bad.jsonl"))
  local status, _, err = t.rlhost({dir .. "/r.lua"})
  t.eq(status, 2); t.match(err, "bad%.jsonl:2:")
end)

t.test("in-memory rows and strings work too", function()
  local ds = rl.dataset({"x", {prompt = "y", reference = "Y"}})
  local b = ds:next(2)
  t.eq(b[1].prompt, "x"); t.eq(b[2].reference, "Y")
end)

-- ---- the field's formats ------------------------------------------------------------

local function jsonl(name, rows)
  local lines = {}
  for i, r in ipairs(rows) do lines[i] = type(r) == "string" and r or rl.json.encode(r) end
  local p = dir .. "/" .. name
  t.write(p, table.concat(lines, "\n") .. "\n")
  return p
end

local function user(c) return {role = "user", content = c} end
local function assistant(c) return {role = "assistant", content = c} end

t.test("TRL's formats read from JSON Lines: prompt, prompt-completion, messages", function()
  local ds = rl.dataset(jsonl("f1.jsonl", {{prompt = {user "hi"}}, {prompt = {user "yo"}}}))
  t.eq(ds.format, "prompt"); t.eq(ds.conversational, true)
  t.eq(ds:next(1)[1].prompt[1].content, "hi")
  ds = rl.dataset(jsonl("f2.jsonl", {{prompt = {user "2+2?"}, completion = {assistant "4"},
                                      reference = "4"}}))
  t.eq(ds.format, "prompt-completion"); t.eq(ds:get(1).completion[1].content, "4")
  t.eq(ds:get(1).reference, "4")
  ds = rl.dataset(jsonl("f3.jsonl", {{messages = {{role = "system", content = "be brief"},
                                                  user "a", assistant "b", user "c",
                                                  assistant "d"}}}))
  t.eq(ds.format, "messages"); t.eq(#ds:get(1).messages, 5)
  ds = rl.dataset(jsonl("f4.jsonl", {{prompt = "a", completion = "b"}}))
  t.eq(ds.format, "prompt-completion"); t.eq(ds.conversational, false)
end)

t.test("preference rows: explicit prompt, and TRL's implicit prompt split off", function()
  local ds = rl.dataset(jsonl("p1.jsonl", {{prompt = "Q:", chosen = " yes", rejected = " no"}}))
  t.eq(ds.format, "preference"); t.eq(ds:get(1).chosen, " yes")
  ds = rl.dataset(jsonl("p2.jsonl", {
    {chosen = {user "2+2?", assistant "4"}, rejected = {user "2+2?", assistant "5"}},
    {chosen = {user "a", assistant "b", user "c", assistant "d"},
     rejected = {user "a", assistant "b", user "c", assistant "e", user "f", assistant "g"}}}))
  local r = ds:get(1)
  t.eq(#r.prompt, 1); t.eq(r.prompt[1].content, "2+2?")
  t.eq(#r.chosen, 1); t.eq(r.chosen[1].content, "4"); t.eq(r.rejected[1].content, "5")
  r = ds:get(2)
  t.eq(#r.prompt, 3); t.eq(#r.chosen, 1); t.eq(#r.rejected, 3)
  -- strings: the shared text, not splitting off the space that starts the answers
  ds = rl.dataset(jsonl("p3.jsonl", {{chosen = "The sky is blue.",
                                      rejected = "The sky is green."}}))
  r = ds:get(1)
  t.eq(r.prompt, "The sky is"); t.eq(r.chosen, " blue."); t.eq(r.rejected, " green.")
  t.raises(function()
    rl.dataset(jsonl("p4.jsonl", {{chosen = {user "x", assistant "a"},
                                   rejected = {user "y", assistant "a"}}}))
  end, "p4.jsonl:1: 'chosen' and 'rejected' share no prompt messages")
  t.raises(function() rl.dataset(jsonl("p5.jsonl", {{prompt = "q", chosen = "a"}})) end,
           "p5.jsonl:1: missing field 'rejected'")
end)

t.test("a JSON array (.json) reads the same; errors name the row's line", function()
  local rows = {{prompt = {user "2+2?"}, completion = {assistant "4"}},
                {prompt = {user "3+3?"}, completion = {assistant "6"}}}
  local p = dir .. "/arr.json"
  t.write(p, "[\n" .. rl.json.encode(rows[1]) .. ",\n  " .. rl.json.encode(rows[2]) .. "\n]\n")
  local ds = rl.dataset(p)
  t.eq(#ds, 2); t.eq(ds.format, "prompt-completion"); t.eq(ds:get(2).completion[1].content, "6")
  t.eq(ds.fingerprint, rl.fs.sha256_string(t.slurp(p)))
  -- the third row starts on line 7 (a string holding brackets and commas before it)
  t.write(dir .. "/bad.json", '[\n {"prompt": "a [x], {y}", "completion": "b"},\n'
          .. ' {"prompt": "c\\" ]", "completion": "d"}\n,\n\n\n {"prompt": "e"}\n]')
  t.raises(function() rl.dataset(dir .. "/bad.json") end,
           "bad%.json:7: a 'prompt' row, but .-bad%.json:2 is a 'prompt%-completion' row")
  t.write(dir .. "/bad2.json", '[\n{"prompt": "a"},\n{"prompt": }\n]')
  t.raises(function() rl.dataset(dir .. "/bad2.json") end, "bad2%.json: invalid JSON .*line 3")
  t.write(dir .. "/empty.json", "[]")
  t.raises(function() rl.dataset(dir .. "/empty.json") end, "empty dataset")
end)

t.test("unknown and inconsistent rows are refused with the file, line and field", function()
  local cases = {
    {{{question = "q"}}, "c1.jsonl:1: missing field 'prompt' %(a row has"},
    {{{prompt = "a", completion = "b"}, {messages = {user "a", assistant "b"}}},
     "c2.jsonl:2: a 'messages' row, but .-c2.jsonl:1 is a 'prompt%-completion' row"},
    {{{prompt = "a"}, {prompt = {user "b"}}},
     "c3.jsonl:2: messages, but .-c3.jsonl:1 has strings"},
    {{{prompt = "a", completion = {assistant "b"}}},
     "c4.jsonl:1: field 'completion' is messages but the others are strings"},
    {{{prompt = {{role = "usr", content = "a"}}}},
     "c5.jsonl:1: field 'prompt': message 1 has role 'usr' %(known:"},
    {{{prompt = {{role = "user"}}}},
     "c6.jsonl:1: field 'prompt': message 1 %(user%) needs a string 'content'"},
    {{{prompt = {user "a", {content = "b"}}}},
     "c7.jsonl:1: field 'prompt': message 2 has no role"},
    {{{messages = {user "a", user "b"}}},
     "c8.jsonl:1: field 'messages' has no assistant message"},
    {{{messages = {user "a", assistant "b"}, prompt = "x"}},
     "c9.jsonl:1: field 'prompt' with 'messages'"},
    {{{messages = "hello"}}, "c10.jsonl:1: field 'messages' must be a list of messages"},
    {{{prompt = {}}}, "c11.jsonl:1: field 'prompt' must be a string or a list of messages"},
    {{{prompt = "a", chosen = "b", rejected = "c", completion = "d"}},
     "c12.jsonl:1: field 'completion' in a preference row"},
  }
  for i, c in ipairs(cases) do
    local e = t.raises(function() rl.dataset(jsonl(("c%d.jsonl"):format(i), c[1])) end, c[2])
    t.eq(e.kind, "config")
  end
  -- a recipe that takes some formats refuses the others up front
  local p = jsonl("conv.jsonl", {{messages = {user "a", assistant "b"}}})
  t.raises(function() rl.dataset(p, {formats = {"prompt", "prompt-completion"}}) end,
           "conv.jsonl:1: a 'messages' row; this dataset takes 'prompt' or "
           .. "'prompt%-completion' rows")
  t.raises(function() rl.dataset(p, {formats = {"chat"}}) end, "unknown format 'chat'")
  -- in-memory rows are checked alike, and the caller's tables are not changed
  local row = {chosen = {user "q", assistant "a"}, rejected = {user "q", assistant "b"}}
  local ds = rl.dataset({row})
  t.eq(#ds:get(1).prompt, 1); t.eq(#row.chosen, 2); t.eq(row.prompt, nil)
  t.raises(function() rl.dataset({{prompt = "a"}, {messages = {user "a", assistant "b"}}}) end,
           "rl.dataset: row 2: a 'messages' row")
end)

t.test("a bad messages file exits 2 from a recipe, naming the line and field", function()
  local p = jsonl("exit.jsonl", {{prompt = {user "a"}, completion = {assistant "b"}},
                                 {prompt = {user "a"}, completion = {{role = "assistant"}}}})
  t.write(dir .. "/r2.lua", ('local rl = require "rl"; rl.dataset(%q)'):format(p))
  local status, _, err = t.rlhost({dir .. "/r2.lua"})
  t.eq(status, 2); t.match(err, "exit%.jsonl:2: field 'completion': message 1")
end)

rl.fs.remove(dir)
t.done()
