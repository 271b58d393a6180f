-- rl.dataset: JSON Lines reading, errors with file and line, shuffling, epochs,
-- batches, the checkpointable cursor and sharding.
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

rl.fs.remove(dir)
t.done()
