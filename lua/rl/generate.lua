-- rl.generate(source, prompts, opts) -> samples: the card's first primitive.
--
-- `source` is anything with a `:generate(prompts, opts) -> flat samples` method (a
-- model handle; an endpoint handle; a fallback chain of them). A prompt is a string,
-- a list of chat messages {{role=, content=}, ...}, or a table {prompt=<either>, ...}
-- (a dataset row) whose other fields ride along into each of its samples (an answer
-- key for a reward, an id). The result is a flat, prompt-major list:
-- samples[(i-1)*n + j] is sample j of prompt i, with prompt, messages, text,
-- prompt_ids, ids, logprobs, finish, version, source and group = i (fields a source
-- cannot give, such as token ids from a text-only API, are nil).
--
-- sample.prompt is the text the model saw: a local model's prompt rendered with its
-- chat template; from a source that renders elsewhere (an endpoint), a message
-- list's contents joined by newlines. sample.messages is the message list the
-- prompt was (the one the template rendered, with its system message), nil for a
-- string prompt given to a model without a chat template.
--
-- The generated text is `sample.text`. A row's reference answer is
-- `sample.reference`; a row that has only a `completion` (SFT data: prompt and
-- completion) gives it as `sample.reference` too. `sample.completion` stays, for
-- rewards written before, as the dataset's completion, never the generated text.

local M = {}

local raise = require("rl.util").raise  -- errors name the recipe line

local function config_error(msg) raise("config", "rl.generate: " .. msg) end

-- A message list: a non-empty sequence of {role=<string>, content=<string>}. The
-- source checks the rest (a model's template, an API).
local function is_messages(v)
  return type(v) == "table" and type(v[1]) == "table"
end

local function check_messages(v, where)
  for j, m in ipairs(v) do
    if type(m) ~= "table" or type(m.role) ~= "string" or type(m.content) ~= "string" then
      config_error(("%s[%d] must be a message {role=<string>, content=<string>}"):format(where, j))
    end
  end
end

-- The text of a message list where no template renders it.
local function plain_text(msgs)
  local parts = {}
  for j, m in ipairs(msgs) do parts[j] = m.content end
  return table.concat(parts, "\n")
end

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
  local values, extras = {}, {}
  for i = 1, np do
    local p = prompts[i]
    if type(p) == "string" then
      values[i] = p
    elseif is_messages(p) then
      check_messages(p, ("prompts[%d]"):format(i))
      values[i] = p
    elseif type(p) == "table" then
      if is_messages(p.prompt) then
        check_messages(p.prompt, ("prompts[%d].prompt"):format(i))
      elseif type(p.prompt) ~= "string" then
        config_error(("prompts[%d].prompt must be a string or a list of messages, got a %s")
                     :format(i, type(p.prompt)))
      end
      values[i] = p.prompt
      local extra
      for k, v in pairs(p) do
        if k ~= "prompt" then
          extra = extra or {}
          extra[k] = v
        end
      end
      extras[i] = extra
    else
      config_error(("prompts[%d] must be a string, a list of messages or a {prompt=...} "
                    .. "table, got a %s"):format(i, type(p)))
    end
  end
  local samples = source:generate(values, opts)
  if type(samples) ~= "table" or #samples ~= np * n then
    raise("internal", ("rl.generate: the source returned %s samples for %d prompts x %d")
                      :format(type(samples) == "table" and #samples or type(samples), np, n))
  end
  for i = 1, np do
    local extra, v = extras[i], values[i]
    local msgs = type(v) == "table" and v or nil
    for j = 1, n do
      local s = samples[(i - 1) * n + j]
      -- A model returns the prompt it rendered; keep it (judges see what it saw).
      if type(s.prompt) ~= "string" then s.prompt = msgs and plain_text(msgs) or v end
      if s.messages == nil then s.messages = msgs end
      s.group = i
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
