-- rl.server{command=, port="auto", host="127.0.0.1", ready="/v1/models", base="/v1",
--           timeout=120, log=, run=, env=, cwd=, grace=5}
--
-- Start an OpenAI-compatible server (llama.cpp's, vLLM, a test server) as a child of
-- the host, wait until it answers, and stop it when the recipe is done with it:
--
--   local srv <close> = rl.server { command = "llama-server -m model.gguf --port {port}",
--                                   ready = "/v1/models", timeout = 120, run = run }
--   local judge = rl.judge { endpoint = rl.endpoint { url = srv.url, model = "m" } }
--
-- command: a list of strings (argv, no shell; argv[1] is looked up on PATH) or a
-- string run by /bin/sh -c "exec <command>" (the server replaces the shell). {port}
-- and {host} in it are replaced by the port and host. env: variables set for the
-- server on top of the host's environment ({CUDA_VISIBLE_DEVICES = "0"}). port="auto" (the default) takes
-- a loopback port that was free a moment ago; a number uses that port.
-- ready: a path probed with HTTP GET until it answers 200, for at most `timeout`
-- seconds; a server that exits first fails at once. Either failure raises kind
-- "crash" (exited) or "timeout" with the last lines of the log in the message.
-- log: the file the server's stdout and stderr go to; default <run.dir>/server-<port>.log
-- with run= (an rl.run), else a file in the temporary directory. srv.url is
-- http://host:port<base>.
--
-- The server never outlives the host: srv:close(), leaving the scope of a <close>
-- variable (also on an error), garbage collection and the end of the host stop it
-- (SIGTERM to its process group, SIGKILL after `grace` seconds); a host killed by a
-- signal it cannot catch takes it along (PR_SET_PDEATHSIG, host/service.h).
local C = require "rl.service_c"
local util = require "rl.util"

local M = {}
local Server = {}
Server.__index = Server

local KNOWN = { command = 1, port = 1, host = 1, ready = 1, base = 1, timeout = 1, log = 1,
                run = 1, env = 1, cwd = 1, grace = 1 }

local function config_error(msg, ...)
  util.raise("config", "rl.server: " .. msg:format(...))
end

local function substitute(s, vars)
  return (s:gsub("{(%w+)}", function(k) return vars[k] and tostring(vars[k]) end))
end

-- The last `bytes` of the log, for error messages.
local function tail(path, bytes)
  local f = io.open(path, "rb")
  if not f then return "" end
  local size = f:seek("end")
  f:seek("set", math.max(0, size - bytes))
  local s = f:read("a") or ""
  f:close()
  return s
end

function M.server(opts)
  if type(opts) ~= "table" then config_error("expected a table of options") end
  util.check_options(opts, KNOWN, "rl.server")
  local cmd = opts.command
  if type(cmd) ~= "string" and type(cmd) ~= "table" or (type(cmd) == "table" and #cmd == 0)
     or cmd == "" then
    config_error("'command' must be a string or a non-empty list of strings")
  end
  local host = opts.host or "127.0.0.1"
  local port = opts.port or "auto"
  if port == "auto" then
    port = C.free_port()
  elseif math.type(port) ~= "integer" or port < 1 or port > 65535 then
    config_error("'port' must be \"auto\" or a port number, not %s", tostring(port))
  end
  local timeout = opts.timeout or 120
  if type(timeout) ~= "number" or not (timeout > 0) then
    config_error("'timeout' must be a positive number of seconds")
  end
  local grace = opts.grace or 5
  if type(grace) ~= "number" or grace < 0 then config_error("'grace' must be seconds >= 0") end
  local vars = { port = port, host = host }
  local argv = {}
  if type(cmd) == "string" then
    argv = { "/bin/sh", "-c", "exec " .. substitute(cmd, vars) }
  else
    for i, a in ipairs(cmd) do
      if type(a) ~= "string" then config_error("'command[%d]' must be a string", i) end
      argv[i] = substitute(a, vars)
    end
  end
  if opts.env ~= nil then -- env(1) sets them and executes the command in its place
    if type(opts.env) ~= "table" then config_error("'env' must be a table of NAME = value") end
    local pre = { "env" }
    for _, k in ipairs(require("rl.batch").sorted_keys(opts.env)) do
      local v = opts.env[k]
      if type(k) ~= "string" or not k:match("^[%a_][%w_]*$") or type(v) ~= "string" and type(v) ~= "number" then
        config_error("'env' must map variable names to strings (%s)", tostring(k))
      end
      pre[#pre + 1] = k .. "=" .. v
    end
    table.move(argv, 1, #argv, #pre + 1, pre)
    argv = pre
  end
  local log = opts.log
  if log == nil and opts.run then
    require("rl.fs").mkdir(opts.run.dir) -- a run makes its directory at its first step
    log = ("%s/server-%d.log"):format(opts.run.dir, port)
  end
  if log == nil then log = ("%s/rlhost-server-%d-%d.log"):format(os.getenv("TMPDIR") or "/tmp",
                                                                require("rl.fs").getpid(), port) end
  local self = setmetatable({ host = host, port = port, log = log, argv = argv,
                              url = ("http://%s:%d%s"):format(host, port, opts.base or "/v1") }, Server)
  self.handle = C.start { argv = argv, cwd = opts.cwd, log = log,
                          term_ms = math.floor(grace * 1000) }
  self.pid = self.handle:pid()
  if opts.ready ~= false then
    local ready_url = ("http://%s:%d%s"):format(host, port, opts.ready or "/v1/models")
    local state, status, why = self.handle:wait_ready(ready_url, timeout)
    if state ~= "ready" then
      local ended = self.handle:stop()
      local kind = state == "exited" and "crash" or state == "interrupted" and "interrupted"
                   or "timeout"
      local what = state == "exited" and ("%s before it was ready"):format(ended)
                   or state == "interrupted" and "interrupted while waiting for it"
                   or ("not ready after %gs (last probe of %s: %s)"):format(timeout, ready_url,
                                                                           status > 0 and
                                                                           ("HTTP " .. status) or why)
      util.raise(kind, ("rl.server: %s %s; log %s ends:\n%s"):format(argv[#argv], what, log,
                                                                     tail(log, 2000)))
    end
  end
  return self
end

--- srv:alive() -> whether the server process still runs
function Server:alive() return self.handle:running() end

--- srv:close() -> how it ended ("killed by signal SIGTERM", "exited with status 0", ...)
function Server:close() return self.handle:stop() end
Server.__close = Server.close
Server.__gc = Server.close

function Server:__tostring()
  return ("rl.server(%s, pid %s, %s)"):format(self.url, tostring(self.pid), self.handle:exit_text())
end

return M
