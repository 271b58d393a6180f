-- rl.generate(source, prompts, opts) -> samples: the card's first primitive.
--
-- `source` is anything with a `:generate(prompt_strings, opts) -> flat samples`
-- method (a model handle; an endpoint handle; a fallback chain of them). Prompts
-- are strings or tables {prompt=..., ...}; a table's other fields ride along into
-- each of its samples (an answer key for a reward, an id). The result is a flat,
-- prompt-major list: samples[(i-1)*n + j] is sample j of prompt i, with
-- prompt, text, prompt_ids, ids, logprobs, finish, version, source and group = i
-- (fields a source cannot give, such as token ids from a text-only API, are nil).
--
-- The generated text is `sample.text`. A row's reference answer is
-- `sample.reference`; a row that has only a `completion` (SFT data: prompt and
-- completion) gives it as `sample.reference` too. `sample.completion` stays, for
-- rewards written before, as the dataset's completion, never the generated text.

local M = {}

local raise = require("rl.util").raise  -- errors name the recipe line

local function config_error(msg) raise("config", "rl.generate: " .. msg) end

function M.generate(source, prompts, opts)
  if type(source) ~= "table" and type(source) ~= "userdata" then
    config_error("the source must be a model or endpoint handle, got a " .. type(source))
  end
  local ok_gen = pcall(function() return source.generate end)
  if not ok_gen or type(source.generate) ~= "function" then
    config_error("the source has no generate method")
  end
  if type(prompts) ~= "table" then
    config_error("prompts must be a list, got a " .. type(prompts))
  end
  local np = #prompts
  if np == 0 then config_error("the prompt list is empty") end
  if opts ~= nil and type(opts) ~= "table" then
    config_error("options must be a table, got a " .. type(opts))
  end
  opts = opts or {}
  local n = opts.n
  if n == nil then
    n = 1
  elseif math.type(n) ~= "integer" and not (type(n) == "number" and n == math.floor(n)) then
    config_error("option 'n' must be an integer >= 1, got " .. tostring(n))
  elseif n < 1 then
    config_error("option 'n' must be an integer >= 1, got " .. tostring(n))
  end
  n = math.tointeger(n)
  local texts, extras = {}, {}
  for i = 1, np do
    local p = prompts[i]
    if type(p) == "string" then
      texts[i] = p
    elseif type(p) == "table" then
      if type(p.prompt) ~= "string" then
        config_error(("prompts[%d].prompt must be a string, got a %s"):format(i, type(p.prompt)))
      end
      texts[i] = p.prompt
      local extra
      for k, v in pairs(p) do
        if k ~= "prompt" then
          extra = extra or {}
          extra[k] = v
        end
      end
      extras[i] = extra
    else
      config_error(("prompts[%d] must be a string or a {prompt=...} table, got a %s")
                   :format(i, type(p)))
    end
  end
  local samples = source:generate(texts, opts)
  if type(samples) ~= "table" or #samples ~= np * n then
    raise("internal", ("rl.generate: the source returned %s samples for %d prompts x %d")
                      :format(type(samples) == "table" and #samples or type(samples), np, n))
  end
  for i = 1, np do
    local extra = extras[i]
    for j = 1, n do
      local s = samples[(i - 1) * n + j]
      s.prompt, s.group = texts[i], i
      if extra then
        -- The sample's own fields win: a dataset column named `text` must not
        -- overwrite the generated text.
        for k, v in pairs(extra) do
          if s[k] == nil then s[k] = v end
        end
        if s.reference == nil and type(extra.completion) == "string" then
          s.reference = extra.completion
        end
      end
    end
  end
  return samples
end

return M
