-- json_bench.lua — rl.json encode/decode throughput on a ~10 MB document of mixed
-- numbers, strings and nesting, side by side with Debian's lua-cjson in the same
-- process, on the same data. Prints one JSON object of figures.
--   build/rlhost tests/bench/json_bench.lua [target_mb=10] [rounds=5]
local rl = require "rl"
local cfg = rl.config { target_mb = 10, rounds = 5 }
local ok, cjson = pcall(require, "cjson")
if not ok then
  io.stderr:write("json_bench: lua-cjson not found (apt-get install lua-cjson)\n")
  os.exit(2)
end

math.randomseed(7)
local words = {"alpha", "beta", "gamma", "say \"hi\"", "tab\there", "line\nbreak", "caf\u{e9}", "\u{1F600} ok"}
local function record(i)
  return {
    id = i,
    name = words[i % #words + 1] .. " #" .. i,
    score = math.random() * 200 - 100,   -- full-precision doubles: the hard case
    logprob = -math.random() * 5,
    count = math.random(0, 1 << 40),
    ok = i % 3 == 0,
    tags = {"t" .. (i % 7), "u" .. (i % 11)},
    nested = {x = i / 8, y = {1, 2, 3, i}, z = {deep = {deeper = "v" .. i}}},
  }
end
local doc, size = {}, 0
repeat
  for _ = 1, 1000 do doc[#doc + 1] = record(#doc + 1) end
  size = #rl.json.encode(doc)
until size >= cfg.target_mb * 1000 * 1000

local function best(f)
  local b = math.huge
  for _ = 1, cfg.rounds do
    local t0 = os.clock()
    f()
    b = math.min(b, os.clock() - t0)
  end
  return b
end

-- lua-cjson prints numbers with at most 14 significant digits (its maximum), so it
-- does less work than rl.json and loses precision; the ratio is still the one asked.
local text = rl.json.encode(doc)
local ctext = cjson.encode(doc)
local mb = #text / 1e6
local r = {}
r.json_doc_mb = mb
r.json_encode_mb_s = mb / best(function() rl.json.encode(doc) end)
r.json_decode_mb_s = mb / best(function() rl.json.decode(text) end)
r.cjson_encode_mb_s = mb / best(function() cjson.encode(doc) end)
r.cjson_decode_mb_s = mb / best(function() cjson.decode(ctext) end)
r.json_encode_ratio_vs_cjson = r.cjson_encode_mb_s / r.json_encode_mb_s   -- time ratio
r.json_decode_ratio_vs_cjson = r.cjson_decode_mb_s / r.json_decode_mb_s
-- Round trip check: the bench measures a bridge that is exact.
local back = rl.json.decode(text)
assert(back[1].score == doc[1].score and back[#back].count == doc[#doc].count)
print(rl.json.encode(r, {sort_keys = true}))
