-- Chat messages through the Lua side: rl.generate's samples carry the prompt as the
-- model saw it and the messages; model:backward takes prompt-completion and messages
-- rows; recipes/sft.lua trains identically on strings and messages without a template.
-- The HF model is a tiny random Qwen2 with a ChatML template that
-- tests/engine/test_chat.py builds (run with the venv's python).
package.path = arg[0]:gsub("[^/]+$", "") .. "?.lua;" .. package.path
local t = require "tap"
local rl = require "rl"

local dir = os.tmpname()
os.remove(dir)
rl.fs.mkdir(dir)

local function user(c) return {role = "user", content = c} end
local function assistant(c) return {role = "assistant", content = c} end

t.test("builtin model (no template): message prompts are their text; samples keep the list",
       function()
  local m <close> = rl.model{path = "builtin:tiny", threads = 1}
  local msgs = {{role = "system", content = "be brief"}, user "sort 3 1 2 ="}
  local s = rl.generate(m, {{prompt = msgs, id = 7}, "sort 2 1 ="},
                        {max_tokens = 3, seed = 1, n = 2})
  t.eq(#s, 4)
  t.eq(s[1].prompt, "be brief\nsort 3 1 2 ="); t.eq(#s[1].messages, 2)
  t.eq(s[1].messages[2].content, "sort 3 1 2 ="); t.eq(s[2].id, 7)
  t.eq(s[3].prompt, "sort 2 1 ="); t.eq(s[3].messages, nil)
  -- the same text as a string gives the same prompt ids
  local same = rl.generate(m, {"be brief\nsort 3 1 2 ="}, {max_tokens = 3, seed = 1, n = 2})
  t.eq(table.concat(same[1].prompt_ids, ","), table.concat(s[1].prompt_ids, ","))
  local e = t.raises(function() rl.generate(m, {{user "a", {role = "user"}}}) end,
                     "prompts%[1%]%[2%] must be a message")
  t.eq(e.kind, "config")
  e = t.raises(function() m:generate({"a"}, {system = "x"}) end, "'system' needs the chat template")
  t.eq(e.kind, "config")
  -- the load options are checked before anything loads
  e = t.raises(function() rl.model{path = "builtin:tiny", chat = "yes"} end,
               "option 'chat' must be a boolean")
  t.eq(e.kind, "config")
  t.raises(function() rl.model{path = "builtin:tiny", system = 5} end,
           "option 'system' must be a string")
  t.raises(function() rl.model{path = "builtin:tiny", chat = true} end,
           "'chat' is true but this model's tokenizer has no chat template")
end)

t.test("recipes/sft.lua: strings, prompt-completion messages, conversations and a .json "
       .. "array train identically without a template", function()
  local lines = {}
  for l in io.lines(rl.home .. "/recipes/data/sort_train.jsonl") do
    lines[#lines + 1] = rl.json.decode(l)
    if #lines == 32 then break end
  end
  local files = {s = {}, m = {}, c = {}}
  for i, r in ipairs(lines) do
    files.s[i] = rl.json.encode{prompt = r.prompt, completion = r.completion}
    files.m[i] = rl.json.encode{prompt = {user(r.prompt)}, completion = {assistant(r.completion)}}
    files.c[i] = rl.json.encode{messages = {user(r.prompt), assistant(r.completion)}}
  end
  for k, rows in pairs(files) do
    t.write(("%s/%s.jsonl"):format(dir, k), table.concat(rows, "\n"))
  end
  t.write(dir .. "/a.json", "[" .. table.concat(files.m, ",\n") .. "]")
  local losses = {}
  for _, f in ipairs{"s.jsonl", "m.jsonl", "c.jsonl", "a.json"} do
    local run = dir .. "/run-" .. f
    local status, out, err = t.rlhost{rl.home .. "/recipes/sft.lua", "data=" .. dir .. "/" .. f,
                                      "steps=2", "dir=" .. run, "eval_every=0", "plot=false",
                                      "threads=1", "batch=16", "micro_batch=8"}
    t.eq(status, 0, f .. ": " .. tostring(out) .. tostring(err))
    local ls = {}
    for l in io.lines(run .. "/metrics.jsonl") do ls[#ls + 1] = rl.json.decode(l).loss end
    t.eq(#ls, 2)
    losses[f] = ("%.17g %.17g"):format(ls[1], ls[2])
  end
  t.eq(losses["m.jsonl"], losses["s.jsonl"]); t.eq(losses["c.jsonl"], losses["s.jsonl"])
  t.eq(losses["a.json"], losses["s.jsonl"])
end)

t.test("recipes/sft.lua refuses a multi-turn conversation for a model without a template "
       .. "before writing the run directory", function()
  local conv = {messages = {user "a", assistant "b", user "c", assistant "d"}}
  t.write(dir .. "/multi.jsonl", rl.json.encode{messages = {user "x", assistant "y"}} .. "\n\n"
          .. rl.json.encode(conv) .. "\n")
  local run = dir .. "/run-multi"
  local status, _, err = t.rlhost{rl.home .. "/recipes/sft.lua", "data=" .. dir .. "/multi.jsonl",
                                  "steps=1", "dir=" .. run, "eval_every=0", "threads=1"}
  t.eq(status, 2)
  t.match(err, "multi%.jsonl:3: field 'messages': a conversation other than prompt messages "
               .. "then one assistant message needs a chat template, and model builtin:tiny")
  t.eq(rl.fs.stat(run), nil, "no run directory")
  -- the same check on in-memory rows names the row
  local ds = rl.dataset({{messages = {user "x", assistant "y"}}, conv})
  t.raises(function() ds:check_single_turn("why") end, "rows: row 2: field 'messages'")
  rl.dataset({{messages = {user "x", assistant "y"}}}):check_single_turn("why")
end)

local made = os.execute(("cd %s && PYTHONPATH=scripts:tests/engine HF_HUB_OFFLINE=1 "
  .. ".venv/bin/python -c %s %s >/dev/null 2>&1"):format(t.shquote(rl.home),
  t.shquote("import sys, pathlib; from test_chat import make_model; "
            .. "make_model('qwen2', 'chatml', pathlib.Path(sys.argv[1]))"),
  t.shquote(dir .. "/chatml")))

if not made then
  t.skip("a chat-template model through rl.generate and model:backward",
         "could not build the test model (transformers/tokenizers missing from .venv?)")
else
  t.test("chat-template model: samples carry the rendered prompt and the messages; "
         .. "backward takes rows", function()
    for _, tr in ipairs{"embedded", "worker"} do
      local m <close> = rl.model{path = dir .. "/chatml", threads = 1, transport = tr,
                                 lr = 1e-3, system = "be brief"}
      local s = rl.generate(m, {{prompt = {user "what is two plus two"}, reference = "4"},
                                "hello"}, {max_tokens = 2, seed = 0})
      t.eq(s[1].prompt, "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n"
                        .. "what is two plus two<|im_end|>\n<|im_start|>assistant\n", tr)
      t.eq(#s[1].messages, 2); t.eq(s[1].messages[1].content, "be brief")
      t.eq(s[1].reference, "4")
      t.eq(s[2].messages[2].content, "hello")
      -- a rewards function sees what the model saw
      local seen = {}
      rl.score(function(x) seen[#seen + 1] = x.prompt; return 1 end, s)
      t.eq(seen[1], s[1].prompt)
      -- per call: the template off
      local raw = m:generate({"hello"}, {max_tokens = 1, seed = 0, chat = false})
      t.eq(raw[1].prompt, "hello"); t.eq(raw[1].messages, nil)
      -- rows as they come from a dataset: the same turn as a pair and as a conversation
      local pair = {prompt = {user "what is two plus two"}, completion = {assistant "four"}}
      local conv = {messages = {user "what is two plus two", assistant "four"}}
      local a = m:logprobs({pair})[1]
      local b = m:logprobs({conv})[1]
      t.eq(#a, #b); for j = 1, #a do t.eq(a[j], b[j]) end
      local st = m:backward({pair, conv, {prompt = "hello", completion = "world"}},
                            {loss = "sft", agg = "seq-mean"})
      t.eq(st.samples, 3); t.ok(st.tokens > 2 * #a)
    end
  end)
end

os.execute("rm -rf " .. t.shquote(dir))
t.done()
