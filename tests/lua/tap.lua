-- tap.lua — a small TAP producer for Lua tests run by build/rlhost (tests/run counts).
--   local t = require "tap"
--   t.test("name", function() t.eq(1 + 1, 2) end)
--   t.done()
-- Helpers to run the host itself: t.rlhost(args, {stdin=}) -> status, stdout, stderr;
-- to wait for processes and files by fact: t.gone, t.wait_gone, t.kill_and_wait,
-- t.wait_for, t.sh_wait_file.
local M = {}
local n, failed = 0, 0

local function fail(msg, level)
  error({tap_failure = msg}, (level or 1) + 1)
end

function M.ok(v, msg) if not v then fail(msg or "expected a true value", 2) end return v end

local function show(v)
  if type(v) == "string" then return ("%q"):format(v) end
  return tostring(v)
end

function M.eq(a, b, msg)
  if a ~= b or math.type(a) ~= math.type(b) then
    fail(("%s: got %s (%s), want %s (%s)"):format(msg or "eq", show(a), math.type(a) or type(a),
                                                 show(b), math.type(b) or type(b)), 2)
  end
end

function M.match(s, pat, msg)
  if type(s) ~= "string" or not s:find(pat) then
    fail(("%s: %s does not match %q"):format(msg or "match", show(s), pat), 2)
  end
end

-- Call f, expect an error; return it.
function M.raises(f, pat, msg)
  local ok, err = pcall(f)
  if ok then fail((msg or "raises") .. ": no error", 2) end
  if pat and not tostring(err):find(pat) then
    fail(("%s: error %s does not match %q"):format(msg or "raises", show(tostring(err)), pat), 2)
  end
  return err
end

function M.test(name, f)
  n = n + 1
  local ok, err = xpcall(f, function(e)
    if type(e) == "table" and e.tap_failure then
      return e.tap_failure .. "\n" .. debug.traceback("", 3)
    end
    return tostring(e) .. "\n" .. debug.traceback("", 2)
  end)
  if ok then
    print(("ok %d - %s"):format(n, name))
  else
    failed = failed + 1
    print(("not ok %d - %s"):format(n, name))
    for line in tostring(err):gmatch("[^\n]+") do print("#   " .. line) end
  end
  io.stdout:flush()
end

function M.skip(name, why)
  n = n + 1
  print(("ok %d - %s # SKIP %s"):format(n, name, why))
end

function M.done()
  print("1.." .. n)
  os.exit(failed == 0 and 0 or 1)
end

-- The host binary under test: $RLHOST (set by tests/run), else arg[-1].
M.host = os.getenv("RLHOST") or arg[-1]
if M.host:sub(1, 1) ~= "/" then M.host = os.getenv("PWD") .. "/" .. M.host end

local function shquote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
M.shquote = shquote

function M.tmpname()
  local p = os.tmpname()
  return p
end

local function slurp(p)
  local f = io.open(p, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end
M.slurp = slurp

function M.write(p, s)
  local f = assert(io.open(p, "wb"))
  f:write(s)
  f:close()
end

-- Waiting by fact, not by time. A process sent SIGKILL is not gone when kill returns
-- (one inside an fsync dies late, still holding its run lock), and a child started in
-- the background is not ready after a fixed sleep on a loaded machine. So tests poll
-- for the fact with a deadline, and fail naming what they waited for.
local function rlfs() return require("rl").fs end

-- True when pid has exited: no /proc entry, or a zombie (which holds nothing).
function M.gone(pid)
  local f = io.open("/proc/" .. math.tointeger(pid) .. "/stat", "rb")
  if not f then return true end
  local stat = f:read("a") or ""
  f:close()
  local state = stat:match("^.*%) (%a)")  -- after the last ')': the name may hold any byte
  return state == nil or state == "Z" or state == "X"
end

-- Poll pred() every 20 ms until it returns a true value (returned), or fail after
-- `secs` seconds (default 30) naming `what`.
function M.wait_for(pred, secs, what)
  local fs = rlfs()
  local deadline = fs.monotonic() + (secs or 30)
  while true do
    local v = pred()
    if v then return v end
    if fs.monotonic() > deadline then
      fail(("timed out after %g s waiting for %s"):format(secs or 30, what or "a condition"), 2)
    end
    fs.sleep(0.02)
  end
end

-- Wait until pid is gone (see M.gone), or fail after `secs` seconds.
function M.wait_gone(pid, secs, what)
  return M.wait_for(function() return M.gone(pid) end, secs,
                    ("%s %d to end"):format(what or "process", math.tointeger(pid)))
end

-- Send a signal (default KILL) to pid and wait until it is gone.
function M.kill_and_wait(pid, sig, secs)
  os.execute(("kill -%s %d 2>/dev/null"):format(sig or "KILL", math.tointeger(pid)))
  return M.wait_gone(pid, secs)
end

-- A shell fragment that waits until file `path` exists and is not empty, with a
-- deadline of `secs` seconds (exit status 124 from the fragment on timeout); for
-- background-process scripts run through io.popen / os.execute.
function M.sh_wait_file(path, secs)
  return ("n=0; while [ ! -s %s ]; do n=$((n+1)); [ $n -gt %d ] && exit 124; sleep 0.02; done")
    :format(shquote(path), math.ceil((secs or 30) / 0.02))
end

-- Run the host with args (a list, quoted here); returns exit status, stdout, stderr.
function M.rlhost(args, opts)
  opts = opts or {}
  local out, err = os.tmpname(), os.tmpname()
  local cmd = { (opts.env or "") .. " " .. shquote(M.host) }
  for _, a in ipairs(args) do cmd[#cmd + 1] = shquote(a) end
  local input = ""
  if opts.stdin then
    local inp = os.tmpname()
    M.write(inp, opts.stdin)
    input = " <" .. shquote(inp)
  else
    input = " </dev/null"
  end
  local line = table.concat(cmd, " ") .. input .. " >" .. shquote(out) .. " 2>" .. shquote(err)
  local ok, how, code = os.execute(line)
  local status = how == "exit" and code or 128 + code
  local o, e = slurp(out), slurp(err)
  os.remove(out); os.remove(err)
  return status, o, e
end

return M
