-- run:log_samples: samples.jsonl lines and the completion/reward metrics, on
-- hand-made samples (no engine): a fallback chain's sources, a weighted sum's parts,
-- groups whose rewards all agree, clipped completions and the size limit.
local t = require "tap"
local rl = require "rl"

local root = os.tmpname()
os.remove(root)
rl.fs.mkdir(root)

local function read_jsonl(path)
  local out = {}
  for line in io.lines(path) do out[#out + 1] = rl.json.decode(line) end
  return out
end

local function sample(i, len, finish)
  local ids = {}
  for j = 1, len do ids[j] = j end
  return {prompt = "p" .. ((i - 1) // 2 + 1), text = "t" .. i, reference = "ref", ids = ids,
          finish = finish, version = 3, source = "policy", group = (i - 1) // 2 + 1}
end

t.test("metrics by source and part, zero-std groups, clipped ratio; samples kept to the limit", function()
  local dir = root .. "/a"
  local run = rl.run{dir = dir, plot = false, progress = false, log_samples = 3}
  for _ in run:steps(1) do
    local samples = {sample(1, 2, "stop"), sample(2, 4, "length"), sample(3, 6, "stop"),
                     sample(4, 8, "length")}
    -- group 1 (samples 1, 2) agrees; group 2 does not
    local rewards = {0.5, 0.5, 1.0, 0.0}
    local info = {{source = "judge", parts = {0.5, 0.5}}, {source = "native", parts = {1.0, 0.0}},
                  {source = "judge", parts = {1.0, 1.0}, reason = "exact"},
                  {source = "native", parts = {0.0, 0.0}}}
    run:log_samples(samples, {rewards = rewards, info = info, advantages = {0, 0, 1, -1},
                              group = 2})
  end
  local m = read_jsonl(dir .. "/metrics.jsonl")[1]
  t.eq(m.completion_length.mean, 5.0)
  t.eq(m.completion_length.min, 2)
  t.eq(m.completion_length.max, 8)
  t.eq(m.tokens, 20)
  t.eq(m.clipped_ratio, 0.5)
  t.eq(m.reward_by_source.judge, 0.75)
  t.eq(m.reward_by_source.native, 0.25)
  t.eq(m.reward_parts.part1, 0.625)
  t.eq(m.reward_parts.part2, 0.375)
  t.eq(m.frac_reward_zero_std, 0.5)
  local s = read_jsonl(dir .. "/samples.jsonl")
  t.eq(#s, 3, "log_samples=3 keeps three")
  t.eq(s[3].completion, "t3")
  t.eq(s[3].reward, 1.0)
  t.eq(s[3].reward_source, "judge")
  t.eq(s[3].reason, "exact")
  t.eq(s[3].advantage, 1)
  t.eq(s[3].length, 6)
  t.eq(s[2].finish, "length")
  t.eq(s[1].step, 1)
end)

t.test("log_samples must be an integer >= -1", function()
  t.raises(function() rl.run{dir = root .. "/b", log_samples = -2} end, "log_samples")
  t.raises(function() rl.run{dir = root .. "/b", log_samples = 1.5} end, "log_samples")
end)

-- rl.generate on a source that echoes a fixed text: no engine needed.
local echo = {generate = function(_, texts, opts)
  local out = {}
  for i = 1, #texts * (opts.n or 1) do out[i] = {text = "generated " .. i, finish = "stop"} end
  return out
end}

t.test("a row's completion is the sample's reference; the generated text is sample.text", function()
  local s = rl.generate(echo, {{prompt = "p", completion = "the answer"},
                               {prompt = "q", completion = "c", reference = "r"}}, {n = 2})
  t.eq(s[1].text, "generated 1")
  t.eq(s[1].reference, "the answer")
  t.eq(s[1].completion, "the answer", "kept for rewards written before")
  t.eq(s[3].reference, "r", "a row's own reference wins")
end)

t.test("a reward that never reads sample.text and scores all alike is warned about, once", function()
  local script = root .. "/warn.lua"
  t.write(script, [[
local rl = require "rl"
local echo = {generate = function(_, texts, opts)
  local out = {}
  for i = 1, #texts * (opts.n or 1) do out[i] = {text = "g" .. i} end
  return out
end}
local rows = {{prompt = "p", completion = "a"}, {prompt = "q", completion = "b"}}
local function wrong(s) return s.completion == s.reference and 1.0 or 0.0 end
local function right(s) return s.text == s.reference and 1.0 or 0.0 end
for _ = 1, 2 do rl.score(wrong, rl.generate(echo, rows, {n = 2})) end
rl.score(right, rl.generate(echo, rows, {n = 2}))
local r = rl.score(wrong, rl.generate(echo, rows, {n = 2}))
print(#r, r[1])
]])
  local status, out, err = t.rlhost({script})
  t.eq(status, 0, err)
  t.match(out, "^4\t1%.0")
  local _, count = err:gsub("warning: the reward function at [^\n]*warn%.lua:8 gave all 4 samples 1%.0 "
                            .. "and never read sample%.text", "")
  t.eq(count, 1, err)
end)

os.execute("rm -rf '" .. root .. "'")
t.done()
