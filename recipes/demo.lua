-- recipes/demo.lua — the job `make run` runs: teach builtin:tiny (a 0.86M-parameter
-- byte-level transformer, from scratch) to sort five digits, in three stages:
--
--   1. SFT warm start  recipes/sft.lua    on the task's demonstrations   -> runs/demo/sft/
--   2. RLAIF           recipes/rlaif.lua  from the SFT checkpoint         -> runs/demo/rlaif/
--   3. evaluation      recipes/eval.lua   both checkpoints on held-out
--                                         prompts, side by side          -> runs/demo/eval/
--
-- then runs/demo/demo.png (held-out reward across both stages and the comparison).
-- Each stage is the command a user would type (printed as it starts), run as a child
-- rlhost, so every recipe keeps its own config, run directory and exit status.
--
-- Running it again resumes: a finished stage has nothing left to do and returns at
-- once, an interrupted one (Ctrl-C, a crash) continues from its last checkpoint, and
-- the evaluation is redone. fresh=true starts everything again from scratch.
-- With RL_TEACHER_URL set (see recipes/rlaif.lua) the RL stage is scored by the
-- teacher with recipes/rubrics/sort.txt; without it, by the task's native reward.
local rl = require "rl"

local cfg = rl.config(rl.recipe.settings {
  dir = rl.setting{"runs/demo", dir = true},
  seed = 1,
  sft_steps = rl.setting{250, min = 1}, -- warm start: see README ("The demo") for why this many
  sft_schedule = rl.setting{"constant", choices = {"constant", "linear", "cosine"}},
  rl_steps = rl.setting{60, min = 1},
  rl_lr = rl.setting{3e-4, min = 0},
  prompts = rl.setting{16, min = 1},
  group = rl.setting{8, min = 1},
  fresh = false,        -- remove what an earlier demo left and start again
  threads = rl.setting{0, min = 0}, -- torch threads per stage; 0 = one per core
})

local host = arg[-1] or "rlhost"  -- this rlhost binary
local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local function say(msg) io.stderr:write("demo: " .. msg .. "\n") io.stderr:flush() end

-- CPU seconds of finished child processes (the stages), from /proc.
local function children_cpu()
  local f = io.open("/proc/self/stat")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  local fields = {}
  for x in s:gsub("^.-%) ", ""):gmatch("%S+") do fields[#fields + 1] = x end
  return (tonumber(fields[14]) + tonumber(fields[15])) / 100  -- cutime + cstime, in ticks
end

local function stage(name, recipe, settings)
  local args = {q(host), q(rl.home .. "/recipes/" .. recipe)}
  for _, kv in ipairs(settings) do args[#args + 1] = q(kv) end
  say(("%s: %s"):format(name, table.concat(args, " ")))
  local t0, c0 = rl.fs.monotonic(), children_cpu()
  local ok, how, code = os.execute(table.concat(args, " "))
  local wall, cpu = rl.fs.monotonic() - t0, children_cpu()
  if not ok then
    local status = how == "exit" and code or 128 + code
    if status == 130 or how == "signal" and code == 2 then
      error(rl.error{kind = "interrupted", where = "demo: ",
                     message = name .. " interrupted; run the demo again to resume"}, 0)
    end
    error(rl.error{kind = status == 2 and "config" or "value", where = "demo: ",
                   message = ("%s failed (exit status %d)%s"):format(name, status, status == 2
                     and "; if the demo's settings changed since its last run, start it "
                         .. "again with fresh=true" or "")}, 0)
  end
  say(("%s done in %.0f s (%.0f s of CPU)"):format(name, wall, cpu and c0 and cpu - c0 or 0))
  return wall, cpu and c0 and cpu - c0 or nil
end

local t_start = rl.fs.monotonic()
local dir = cfg.dir
if cfg.fresh then
  for _, sub in ipairs{"sft", "rlaif", "eval"} do rl.fs.remove(dir .. "/" .. sub) end
  rl.fs.remove(dir .. "/demo.png")
end
rl.fs.mkdir(dir)
rl.fs.write(dir .. "/config.json", rl.json.encode(require("rl.config").resolved().config,
                                                  {indent = true}) .. "\n")
-- The model settings given on the command line (model=, lora_r=, ...) go to every stage.
local common = {"seed=" .. cfg.seed, "threads=" .. cfg.threads, table.unpack(rl.recipe.forward(cfg))}

-- 1. SFT: learn the answer format and most of the skill from demonstrations.
local times = {}
times.sft = {stage("SFT", "sft.lua", {"dir=" .. dir .. "/sft", "steps=" .. cfg.sft_steps,
                                      "schedule=" .. cfg.sft_schedule, table.unpack(common)})}
-- 2. RLAIF: sample, score, reinforce what scored above its group's average.
times.rl = {stage("RLAIF", "rlaif.lua", {"dir=" .. dir .. "/rlaif", "init=" .. dir .. "/sft",
                                         "steps=" .. cfg.rl_steps, "lr=" .. cfg.rl_lr,
                                         "prompts=" .. cfg.prompts, "group=" .. cfg.group,
                                         "eval_every=10",
                                         table.unpack(common)})}
-- 3. Both checkpoints on the held-out prompts, greedy, side by side.
times.eval = {stage("evaluation", "eval.lua", {"checkpoint=" .. dir .. "/sft", "label=SFT",
                                               "compare=" .. dir .. "/rlaif",
                                               "compare_label=SFT+RLAIF",
                                               "out=" .. dir .. "/eval", table.unpack(common)})}

local plotted, why = require("rl.run").plot({"--stages", dir .. "/sft", dir .. "/rlaif",
                                             "--report", dir .. "/eval/report.json",
                                             "-o", dir .. "/demo.png"})
if not plotted then say("plot skipped: " .. tostring(why)) end

-- The headline: held-out mean reward and exact-match rate before and after RL.
local rep = rl.json.decode(rl.checkpoint.read(dir .. "/eval/report.json"))
local by = {}
for _, r in ipairs(rep.rows) do by[r.model .. "/" .. r.scorer] = r end
local a, b = by["SFT/native"], by["SFT+RLAIF/native"]
local ea, eb = by["SFT/exact"], by["SFT+RLAIF/exact"]
local wall = rl.fs.monotonic() - t_start
local cpu = children_cpu()
print(("held-out mean reward (200 prompts, greedy): SFT %.3f ± %.3f -> SFT+RLAIF %.3f ± %.3f")
      :format(a.mean, a.stderr or 0, b.mean, b.stderr or 0))
print(("exact match: SFT %.1f%% -> SFT+RLAIF %.1f%%"):format(100 * ea.mean, 100 * eb.mean))
print(("demo: %.0f s wall, %.0f s CPU (SFT %.0f s, RLAIF %.0f s, evaluation %.0f s wall); "
       .. "report %s/eval/report.md%s"):format(wall, cpu or 0, times.sft[1], times.rl[1],
                                               times.eval[1], dir,
                                               plotted and (", plot " .. dir .. "/demo.png") or ""))
print(("final model: %s/rlaif/model (the SFT stage's: %s/sft/model)"):format(dir, dir))
