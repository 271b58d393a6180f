-- rl.endpoint{url=, api=, model=, ...}: a teacher model over HTTP (OpenAI chat,
-- OpenAI completions, Anthropic messages). The transport (concurrency, retries,
-- the API key) is C (host/lendpoint.c, host/http.c); this file shapes requests and
-- reads replies.
--
--   ep:chat(requests, opts)     -- raw batch: requests are prompt strings, message
--   ep:complete(requests, opts)    lists or {messages=|prompt=, ...} tables; returns
--                                  one reply per request: {ok=true, texts={..},
--                                  finish={..}, logprobs={..} (choices' logprobs
--                                  objects, when the server sent them),
--                                  usage={prompt=,completion=}, attempts=,
--                                  latency_ms=} or {ok=false, kind=, message=,
--                                  retryable=, status=, attempts=}
--   ep:generate(prompts, opts)  -- the generation-source interface: prompt-major
--                                  samples {prompt=, text=, finish=, source=, index=}
--   ep:stats()                  -- {requests=, attempts=, retries=, failures=,
--                                   prompt_tokens=, completion_tokens=}
local C = require "rl.endpoint_c"
local json = require "rl.json"
local core = require "rl.core"
local util = require "rl.util"

local M = {}
local methods = C.methods

-- Transport reasons (host/http.c) to the error kinds recipes and fallbacks match on.
local KIND = { http = "http", connect = "http", too_big = "http", rate_limit = "rate_limit",
               timeout = "timeout", interrupted = "interrupted", internal = "internal" }
M.KIND = KIND

local FINISH = { end_turn = "stop", stop_sequence = "stop", max_tokens = "length",
                 tool_use = "tool", stop = "stop", length = "length" }

local function messages_of(req, opts)
  if type(req) == "string" then
    local m = {}
    if opts.system then m[1] = { role = "system", content = opts.system } end
    m[#m + 1] = { role = "user", content = req }
    return m
  end
  if req.messages then return req.messages end
  if req[1] then return req end
  return { { role = "user", content = assert(req.prompt, "request needs messages or prompt") } }
end

local function set(body, k, v) if v ~= nil then body[k] = v end end

-- One request body for the handle's API. `n` is what to ask for (Anthropic has no
-- n: callers send several requests instead).
local function build(info, req, opts, n)
  local body = { model = opts.model or info.model }
  local r = type(req) == "table" and not req[1] and req or {}
  local function o(k) if r[k] ~= nil then return r[k] end return opts[k] end
  if info.api == "anthropic" then
    local msgs, system = {}, o("system")
    for _, m in ipairs(messages_of(req, opts)) do
      if m.role == "system" then system = m.content else msgs[#msgs + 1] = m end
    end
    body.messages = msgs
    set(body, "system", system)
    body.max_tokens = o("max_tokens") or 1024
    set(body, "temperature", o("temperature"))
    set(body, "top_p", o("top_p"))
    set(body, "stop_sequences", o("stop"))
  else
    if info.api == "openai-completions" then
      body.prompt = type(req) == "string" and req or r.prompt
    else
      body.messages = messages_of(req, opts)
    end
    set(body, "max_tokens", o("max_tokens"))
    set(body, "temperature", o("temperature"))
    set(body, "top_p", o("top_p"))
    set(body, "seed", o("seed"))
    set(body, "stop", o("stop"))
    if n and n > 1 then body.n = n end
  end
  if opts.extra then for k, v in pairs(opts.extra) do body[k] = v end end
  return json.encode(body)
end

local function failure(res, kind, msg, retryable)
  return { ok = false, kind = kind, message = msg, retryable = retryable, status = res.status,
           attempts = res.attempts, latency_ms = res.latency_ms, body = res.body }
end

-- Read one HTTP result into a reply.
local function read(info, res, state)
  if not res.ok then
    return failure(res, KIND[res.reason] or "http", res.message, res.retryable)
  end
  local ct = res.content_type or ""
  if not ct:lower():find("json", 1, true) then
    return failure(res, "http", ("%s: response has content type '%s', not JSON"):format(
      info.url, ct), true)
  end
  local ok, doc = pcall(json.decode, res.body)
  if not ok or type(doc) ~= "table" then
    return failure(res, "http", ("%s: response body is not a JSON object (%d bytes)"):format(
      info.url, #res.body), true)
  end
  local texts, finish, usage, logprobs = {}, {}, { prompt = 0, completion = 0 }, {}
  if info.api == "anthropic" then
    local parts = {}
    for _, block in ipairs(type(doc.content) == "table" and doc.content or {}) do
      if block.type == "text" and type(block.text) == "string" then parts[#parts + 1] = block.text end
    end
    if doc.content == nil then
      return failure(res, "http", info.url .. ": reply has no content blocks", true)
    end
    texts[1] = table.concat(parts)
    finish[1] = FINISH[doc.stop_reason] or tostring(doc.stop_reason)
    local u = type(doc.usage) == "table" and doc.usage or {}
    usage.prompt, usage.completion = tonumber(u.input_tokens) or 0, tonumber(u.output_tokens) or 0
  else
    if type(doc.choices) ~= "table" then
      return failure(res, "http", info.url .. ": reply has no choices", true)
    end
    for i, ch in ipairs(doc.choices) do
      local t
      if info.api == "openai-completions" then t = ch.text
      else t = type(ch.message) == "table" and ch.message.content or nil end
      texts[i] = type(t) == "string" and t or ""
      finish[i] = FINISH[ch.finish_reason] or tostring(ch.finish_reason)
      -- Kept as the server sent it (a judge reads its top log-probs: rl.judge).
      if type(ch.logprobs) == "table" then logprobs[i] = ch.logprobs end
    end
    local u = type(doc.usage) == "table" and doc.usage or {}
    usage.prompt, usage.completion = tonumber(u.prompt_tokens) or 0, tonumber(u.completion_tokens) or 0
  end
  state.prompt_tokens = (state.prompt_tokens or 0) + usage.prompt
  state.completion_tokens = (state.completion_tokens or 0) + usage.completion
  return { ok = true, texts = texts, finish = finish, usage = usage, logprobs = logprobs,
           attempts = res.attempts,
           latency_ms = res.latency_ms, status = res.status }
end

-- Send bodies (JSON texts) and read the replies, in order. The C side scrubbed the
-- API key from each body in every encoding it knows; the decoded texts and messages
-- are scrubbed again (ep:_scrub), which also catches a key that the server split
-- across fields that read() joins (Anthropic text blocks).
function methods:_send(bodies)
  local info, state = self:_info(), self:_state()
  local out = {}
  for i, res in ipairs(self:_post(bodies)) do
    local rep = read(info, res, state)
    for k, t in ipairs(rep.texts or {}) do rep.texts[k] = self:_scrub(t) end
    if rep.message then rep.message = self:_scrub(rep.message) end
    out[i] = rep
  end
  return out
end

local function batch(self, requests, opts, api_check)
  opts = opts or {}
  local info = self:_info()
  if api_check and not api_check(info.api) then
    error(core.error { kind = "usage", message = ("this endpoint speaks %s"):format(info.api) }, 2)
  end
  local bodies = {}
  for i, req in ipairs(requests) do bodies[i] = build(info, req, opts, opts.n) end
  return self:_send(bodies)
end

function methods:chat(requests, opts)
  return batch(self, requests, opts, function(a) return a ~= "openai-completions" end)
end

function methods:complete(requests, opts)
  return batch(self, requests, opts, function(a) return a == "openai-completions" end)
end

-- The generation-source interface (see lua/rl/generate.lua). Asks for n choices per
-- prompt; servers that return fewer (llama.cpp, Ollama ignore n; Anthropic has no n)
-- are asked again for the rest, one request per missing sample after the first
-- short round. A prompt that still cannot be served raises its error (an rl.error
-- with kind http/timeout/rate_limit/...), so a fallback generator can take over.
function methods:generate(prompts, opts)
  opts = opts or {}
  local info = self:_info()
  local n = opts.n or 1
  local got = {}
  for i = 1, #prompts do got[i] = {} end
  local per_request = info.api == "anthropic" and 1 or n
  local rounds = 0
  while true do
    local bodies, owners = {}, {}
    for i, p in ipairs(prompts) do
      local missing = n - #got[i]
      if missing > 0 then
        if per_request > 1 then
          bodies[#bodies + 1] = build(info, p, opts, math.min(missing, per_request))
          owners[#owners + 1] = i
        else
          for _ = 1, missing do
            bodies[#bodies + 1] = build(info, p, opts, 1)
            owners[#owners + 1] = i
          end
        end
      end
    end
    if #bodies == 0 then break end
    rounds = rounds + 1
    local replies = self:_send(bodies)
    local progress = false
    for k, rep in ipairs(replies) do
      local i = owners[k]
      if not rep.ok then
        error(core.error { kind = rep.kind, message = rep.message, retryable = rep.retryable,
                           status = rep.status, where = "rl.endpoint:generate: " }, 0)
      end
      for c, t in ipairs(rep.texts) do
        if #got[i] < n then
          got[i][#got[i] + 1] = { text = t, finish = rep.finish[c] }
          progress = true
        end
      end
    end
    if not progress or rounds > 2 * n + 2 then
      error(core.error { kind = "http", retryable = false, where = "rl.endpoint:generate: ",
                         message = "the server returned no choices" }, 0)
    end
    -- A short reply means n was ignored: ask one sample per request from now on.
    per_request = 1
  end
  local source = "endpoint:" .. info.model
  local samples = {}
  for i, p in ipairs(prompts) do
    for j = 1, n do
      local g = got[i][j]
      samples[#samples + 1] = { prompt = p, text = g.text, finish = g.finish, source = source,
                                index = j }
    end
  end
  return samples
end

function methods:stats()
  local t, s = self:_transport_stats(), self:_state()
  t.prompt_tokens = s.prompt_tokens or 0
  t.completion_tokens = s.completion_tokens or 0
  return t
end

function methods:info() return self:_info() end

-- Option names rl.endpoint{} reads (host/lendpoint.c); any other is a typo that
-- would otherwise be ignored (api_key_evn: no key sent, a 401 much later).
local KNOWN = { url = 1, api = 1, model = 1, api_key_env = 1, ca_file = 1, headers = 1,
                timeout = 1, connect_timeout = 1, deadline = 1, concurrency = 1,
                max_retries = 1, rpm = 1, retry_base = 1, retry_max = 1, retry_after_max = 1 }

function M.new(opts)
  if type(opts) ~= "table" then
    error(core.error { kind = "config", message = "rl.endpoint{url=...}: expected a table" }, 2)
  end
  util.check_options(opts, KNOWN, "rl.endpoint")
  return C.new(opts)
end

return M
