-- The worker transport against a fake worker: a shell script standing in for
-- <venv>/bin/python (RLHOST_VENV points the host at it), misbehaving on cue. Covers
-- what a well-behaved engine never does: garbage lines, stale and future reply ids,
-- null ids, non-finite numbers, dying with a traceback, dying at start, hanging.
-- No torch here: these run in a second or two.
package.path = arg[0]:gsub("[^/]+$", "") .. "?.lua;" .. package.path
local t = require "tap"

local venv = os.tmpname()
os.remove(venv)
assert(os.execute("mkdir -p " .. t.shquote(venv .. "/bin")))

-- The prompt of a generate request picks the misbehaviour.
t.write(venv .. "/bin/python", [=[#!/bin/sh
echo "fake worker starting, PYTHONPATH=$PYTHONPATH HF_HUB_OFFLINE=$HF_HUB_OFFLINE" >&2
[ -n "$FAKE_DIE_AT_START" ] && { echo "ImportError: no torch here" >&2; exit 4; }
while IFS= read -r line; do
  id=$(printf '%s' "$line" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
  sample='{"text":"x","prompt_ids":[1],"ids":[2],"logprobs":[-0.5],"finish":"length","version":0}'
  ok="{\"id\":$id,\"ok\":true,\"samples\":[[$sample]]}"
  case "$line" in
    *'"op":"load"'*)
      case "$line" in
        *'"path":"die-at-load"'*) echo "Traceback (most recent call last):" >&2
                                  echo "  RuntimeError: cannot load" >&2; exit 5 ;;
      esac
      echo "{\"id\":$id,\"ok\":true,\"model\":1,\"info\":{\"version\":0}}" ;;
    *'"op":"info"'*) echo "{\"id\":$id,\"ok\":true,\"version\":0}" ;;
    *'["ok"]'*) echo "$ok" ;;
    *'["log"]'*) echo "a log line from the engine" >&2; echo "$ok" ;;
    *'["exit3"]'*) echo "Traceback (most recent call last):" >&2
                   echo "  File \"engine.py\", line 1, in generate" >&2
                   echo "RuntimeError: boom" >&2; exit 3 ;;
    *'["garbage"]'*) echo "this is not json" ;;
    *'["array"]'*) echo "[1,2,3]" ;;
    *'["stale"]'*) echo "{\"id\":$((id - 1)),\"ok\":true,\"samples\":[]}"; echo "$ok" ;;
    *'["future"]'*) echo "{\"id\":$((id + 5)),\"ok\":true,\"samples\":[]}" ;;
    *'["nullid"]'*) echo '{"id":null,"ok":false,"error":{"kind":"config","message":"request is not valid JSON","traceback":""}}' ;;
    *'["nan"]'*) echo "{\"id\":$id,\"ok\":true,\"samples\":[[{\"text\":\"x\",\"prompt_ids\":[1],\"ids\":[2],\"logprobs\":[NaN],\"finish\":\"length\",\"version\":0}]]}" ;;
    *'["hang"]'*) sleep 30 ;;
    *'["blank"]'*) echo ""; echo "$ok" ;;
    *) echo "{\"id\":$id,\"ok\":false,\"error\":{\"kind\":\"internal\",\"message\":\"fake: unexpected request\",\"traceback\":\"\"}}" ;;
  esac
done
exit 0
]=])
assert(os.execute("chmod +x " .. t.shquote(venv .. "/bin/python")))

-- Run Lua code in a fresh host pointed at the fake venv.
local PRE = [[
local rl = require "rl"
local function try(f, ...) local ok, e = pcall(f, ...); return ok, e end
local m = rl.model { path = "fake", transport = "worker" }
local function gen(p, o) return rl.generate(m, { p }, o) end
]]
local function host(code, env)
  return t.rlhost({ "-e", PRE .. code },
                  { env = "RLHOST_VENV=" .. t.shquote(venv) .. " " .. (env or "") })
end

t.test("stderr lines are forwarded with the worker's pid; env is set", function()
  local st, out, err = host([[print(#gen("log"))]])
  t.eq(st, 0, err)
  t.eq(out, "1\n")
  t.match(err, "%[worker %d+%] fake worker starting, PYTHONPATH=[^ ]*/scripts HF_HUB_OFFLINE=1\n")
  t.match(err, "%[worker %d+%] a log line from the engine\n")
end)

t.test("a worker that exits mid-request: kind=crash with status and traceback", function()
  local st, out, err = host([[
    local ok, e = try(gen, "exit3")
    print(e.kind, e.retryable, e.status, e.exit)
    print(e.message)
    print(#gen("ok"), (select(3, m:_transport())))]])
  t.eq(st, 0, err)
  t.match(out, "^crash\ttrue\t3\texited with status 3\n")
  t.match(out, "generate: worker %d+ exited with status 3 %(the next call starts a new one%); "
               .. "its last stderr lines:\n")
  t.match(out, "RuntimeError: boom\n")
  t.match(out, "\n1\t1\n$", "the next call restarted the worker")
end)

t.test("garbage and non-object replies: kind=parse, the handle goes on", function()
  local st, out, err = host([[
    local ok, e = try(gen, "garbage"); print(e.kind)
    ok, e = try(gen, "array"); print(e.kind, e.message)
    print(#gen("ok"))]])
  t.eq(st, 0, err)
  t.match(out, "^parse\nparse\tgenerate: the worker's reply is not a JSON object with an "
               .. "'ok' field\n1\n$")
end)

t.test("stale replies are skipped; blank lines ignored; NaN decoded", function()
  local st, out, err = host([[
    print(#gen("stale"), #gen("blank"))
    local s = gen("nan"); print(s[1].logprobs[1] ~= s[1].logprobs[1])]])
  t.eq(st, 0, err)
  t.eq(out, "1\t1\ntrue\n")
end)

t.test("a reply from the future is a protocol error; the worker is replaced", function()
  local st, out, err = host([[
    local ok, e = try(gen, "future"); print(e.kind, e.message)
    print(#gen("ok"), (select(3, m:_transport())))]])
  t.eq(st, 0, err)
  t.match(out, "^crash\tgenerate: the worker answered out of order")
  t.match(out, "\n1\t1\n$")
end)

t.test("an error reply with a null id answers the request in flight", function()
  local st, out, err = host([[
    local ok, e = try(gen, "nullid"); print(e.kind, e.message, e.op)
    print(#gen("ok"))]])
  t.eq(st, 0, err)
  t.eq(out, "config\trequest is not valid JSON\tgenerate\n1\n")
end)

t.test("a hung worker: kind=timeout after the call's deadline, then a new worker", function()
  local st, out, err = host([[
    local t0 = os.time()
    local ok, e = try(gen, "hang", { timeout = 0.3 }); print(e.kind, e.retryable)
    print(#gen("ok"), (select(3, m:_transport())), os.time() - t0 < 5)]])
  t.eq(st, 0, err)
  t.eq(out, "timeout\ttrue\n1\t1\ttrue\n")
end)

t.test("a worker that dies at start or at load: kind=crash from rl.model, with its stderr", function()
  local st, out, err = t.rlhost({ "-e", [[
    local rl = require "rl"
    local ok, e = pcall(rl.model, { path = "die-at-load", transport = "worker" })
    print(e.kind, e.status); print(e.message)]] }, { env = "RLHOST_VENV=" .. t.shquote(venv) })
  t.eq(st, 0, err)
  t.match(out, "^crash\t5\nload: worker %d+ exited with status 5")
  t.match(out, "RuntimeError: cannot load")
  st, out, err = host("", "FAKE_DIE_AT_START=1")
  t.eq(st, 1)
  t.match(err, "crash error: load: worker %d+ exited with status 4")
  t.match(err, "ImportError: no torch here")
end)

t.test("a missing interpreter is a config error naming it", function()
  local st, _, err = t.rlhost({ "-e", [[require "rl".model { path = "x", transport = "worker" }]] },
                              { env = "RLHOST_VENV=/nonexistent/venv" })
  t.eq(st, 2)
  t.match(err, "config error: rl%.model: .*/nonexistent/venv/bin/python")
end)

os.execute("rm -rf " .. t.shquote(venv))
t.done()
