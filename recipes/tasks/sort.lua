-- The demo task: sort five digits. Its native reward scores an answer the way the
-- rubric (recipes/rubrics/sort.txt) asks a teacher to: the fraction of the five
-- positions holding the right digit, with little credit for a malformed answer.
-- It is deterministic and free, so it is also what the recipes fall back on when
-- no teacher is configured or the teacher fails.
local M = {}

-- Paths from this file's own place, so a recipe saved anywhere (and an installed
-- rlhost) finds the task's data: <dir of recipes/tasks>/../data/...; a copy of this
-- file without the data beside it uses the rlhost tree's.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local recipes = here:match("^(.*)/tasks$") or (here .. "/..")
local function path(rel)
  local p = recipes .. "/" .. rel
  local f = io.open(p, "r")
  if f then f:close(); return p end
  return (require("rl.core").home or ".") .. "/recipes/" .. rel
end
M.rubric = path("rubrics/sort.txt")
M.train = path("data/sort_train.jsonl")
M.heldout = path("data/sort_heldout.jsonl")
M.stop = {"\n"}
M.max_tokens = 12

local function digits(s)
  local out = {}
  for tok in s:gmatch("%S+") do out[#out + 1] = tok end
  return out
end

-- reward(sample) -> number in [0, 1], reason
function M.reward(sample)
  local want = digits(sample.reference or error("sort task: sample has no reference"))
  local got = digits(sample.text or "")
  local right = 0
  for i = 1, #want do
    if got[i] == want[i] then right = right + 1 end
  end
  for _, tok in ipairs(got) do
    if not tok:match("^%d$") then return math.min(right, 1) / #want, "not digits" end
  end
  if #got ~= #want then
    return math.min(right, 1) / #want, ("%d digits, want %d"):format(#got, #want)
  end
  return right / #want, right == #want and "exact" or nil
end

return M
