-- rl.model on a local Hugging Face directory (a tiny random Qwen2 and a tokenizer
-- that tests/engine/test_hf.py builds, made here with the venv's python): both
-- transports agree, and a corrupt safetensors file is a config error naming it.
package.path = arg[0]:gsub("[^/]+$", "") .. "?.lua;" .. package.path
local t = require "tap"
local rl = require "rl"

local home = rl.home
local dir = os.tmpname()
os.remove(dir)
local function sh(cmd) return os.execute(cmd) end

local made = sh(("cd %s && PYTHONPATH=scripts:tests/engine HF_HUB_OFFLINE=1 "
                 .. ".venv/bin/python -c %s %s >/dev/null 2>&1"):format(t.shquote(home), t.shquote("import sys, pathlib; from test_hf import make_model; "
                                     .. "make_model('qwen2', pathlib.Path(sys.argv[1]))"),
          t.shquote(dir .. "/qwen2")))

if not made then
  t.skip("a Hugging Face model directory through both transports",
         "could not build the test model (transformers/tokenizers missing from .venv?)")
  t.done()
end

t.test("a Hugging Face model directory gives the same samples through both transports", function()
  local out = {}
  for _, tr in ipairs { "embedded", "worker" } do
    local m <close> = rl.model { path = dir .. "/qwen2", transport = tr, threads = 1, seed = 0 }
    local info = m:info()
    t.eq(info.arch, "Qwen2ForCausalLM")
    out[tr] = rl.generate(m, { "the cat", { prompt = "hello", id = 7 } },
                          { n = 2, max_tokens = 6, seed = 1 })
  end
  local a, b = out.embedded, out.worker
  t.eq(#a, 4)
  for i = 1, #a do
    t.eq(a[i].text, b[i].text, "text " .. i)
    for j = 1, #a[i].logprobs do t.eq(a[i].logprobs[j], b[i].logprobs[j], "logprob") end
  end
  t.eq(a[3].id, 7, "ride-along field")
end)

t.test("a corrupt safetensors file is a config error naming it", function()
  sh(("cp -r %s %s && printf 'garbage' > %s"):format(t.shquote(dir .. "/qwen2"),
     t.shquote(dir .. "/bad"), t.shquote(dir .. "/bad/model.safetensors")))
  for _, tr in ipairs { "embedded", "worker" } do
    local ok, e = pcall(rl.model, { path = dir .. "/bad", transport = tr, threads = 1 })
    t.ok(not ok, "load fails")
    t.eq(e.kind, "config", tr)
    t.match(e.message, "bad/model%.safetensors")
  end
end)

t.test("lora crosses both transports; a worker generator syncs the adapter only", function()
  local lora = { r = 4, alpha = 8, targets = { "q_proj", "v_proj" } }
  local trainer <close> = rl.model { path = dir .. "/qwen2", lora = lora, threads = 1,
                                     lr = 0.05, reference = true }
  local gen <close> = rl.model { path = dir .. "/qwen2", lora = lora, threads = 1,
                                 transport = "worker" }
  local ti, gi = trainer:info(), gen:info()
  t.eq(gi.trainable, ti.trainable)
  t.ok(ti.trainable < ti.params / 10, "adapter only")
  t.eq(ti.lora.r, 4)
  t.eq(ti.lora.targets[2], "v_proj")
  local sft = { { prompt = "the cat", text = " sat on the mat" } }
  trainer:train_step(sft, { loss = "sft" })
  t.eq(trainer:sync(gen), 1)
  local a = trainer:logprobs(sft)
  local b = gen:logprobs(sft)
  for j = 1, #a[1] do t.eq(a[1][j], b[1][j], "logprob " .. j) end
end)

t.test("lora and short-name errors are config errors naming the option", function()
  local ok, e = pcall(rl.model, { path = dir .. "/qwen2", lora = 4 })
  t.ok(not ok)
  t.eq(e.kind, "config")
  t.match(e.message, "option 'lora' must be a table, got a number")
  for _, tr in ipairs { "embedded", "worker" } do
    ok, e = pcall(rl.model, { path = dir .. "/qwen2", transport = tr, lora = { r = 2, targets = { "nope" } } })
    t.eq(e.kind, "config", tr)
    t.match(e.message, "'lora%.targets' names %['nope'%]")
    ok, e = pcall(rl.model, { path = "no-such-model-xyz", transport = tr })
    t.eq(e.kind, "config", tr)
    t.match(e.message, "make models")
  end
end)

sh("rm -rf " .. t.shquote(dir))
t.done()
