"""Bad input, tried as a new user would (issue 6): a table of mistakes across the
command line, recipes, configs, datasets, rubrics, model directories, checkpoints and
endpoint settings, each run through $RLHOST in a temporary directory.

Every case must give one clear message naming what is wrong and where (file, line,
field, setting), the documented exit status (README: 2 for usage, configuration and
load errors, 1 for a recipe's runtime error), no Python or sanitizer traceback, no
death by a signal, and, where a run directory is involved, leave it byte for byte as
it was. Endpoints are real loopback servers: tests/servers/teacher.py (one plain, one
with a self-signed certificate, both shared by the module) and a closed port.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "servers"))
from teacher import Teacher  # noqa: E402

RLHOST = os.environ.get("RLHOST", str(ROOT / "build" / "rlhost"))
PYTHON = str(ROOT / ".venv" / "bin" / "python")
GOOD_KEY = "sk-right-4c1f0e9d8b7a"
BAD_KEY = "sk-wrong-SECRET-77aa31"

pytestmark = pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built")

# What must never reach a user's terminal: a Python traceback, a sanitizer report,
# a C-level crash, Lua's unprotected-error panic.
FORBIDDEN = ("Traceback (most recent call last)", "AddressSanitizer", "LeakSanitizer",
             "runtime error:", "Segmentation fault", "core dumped", "unprotected Lua error",
             "panic")

# ---- recipes the cases run ---------------------------------------------------------

CFG = """local rl = require "rl"
local cfg = rl.config { steps = 3, lr = 1e-4, name = "x", flag = true, opt = { beta = 0.9 } }
print(cfg.steps)
"""

DATASET = """local rl = require "rl"
local data = rl.dataset(arg[1])
print(#data:next(2))
"""

# A one-step training run on builtin:tiny with a run directory; `init` warm-starts
# from a checkpoint as recipes/rlaif.lua does.
TRAIN = """local rl = require "rl"
local cfg = rl.config { dir = "run", steps = 1, model = "builtin:tiny", resume = true,
                        init = rl.optional "string" }
local run = rl.run { dir = cfg.dir, resume = cfg.resume, plot = false, progress = false,
                     allow_config_change = { "steps" } }
local m = rl.model { path = cfg.model, threads = 1 }
if cfg.init then m:restore(rl.checkpoint.find(cfg.init)) end
run:model(m)
for _ in run:steps(cfg.steps) do
  local s = rl.generate(m, { "a b" }, { n = 2, max_tokens = 4 })
  m:train_step(s, { loss = "pg", advantages = { 1, -1 } })
  run:log { loss = 0 }
end
"""


def model(opts: str) -> str:
    return f"""local rl = require "rl"
local m = rl.model {{ {opts} }}
print(m:info().params)
"""


def endpoint(opts: str, call: str = "generate") -> str:
    """A recipe that makes an endpoint and asks it for one completion (or, with
    call="judge", scores one sample with a judge that must raise when it is down)."""
    head = f"""local rl = require "rl"
local ep = rl.endpoint {{ {opts} }}
"""
    if call == "judge":
        return head + """local s = { { prompt = "p", text = "t" } }
local r = rl.score(rl.judge { endpoint = ep }, s, { raise = true })
print(r[1])
"""
    return head + """local s = ep:generate({ "hi" }, { n = 1, max_tokens = 4 })
print(s[1].text)
"""


def judge(opts: str) -> str:
    return f"""local rl = require "rl"
local ep = rl.endpoint {{ url = "http://127.0.0.1:9/v1" }}
local j = rl.judge {{ endpoint = ep, {opts} }}
print(j)
"""


# ---- the table ----------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    id: str
    area: str
    args: list[str]                       # after $RLHOST; @TOKENS@ substituted
    status: int                           # documented exit status
    want: list[str]                       # all in stderr; want[0] exactly once
    files: dict[str, str | bytes] = dataclasses.field(default_factory=dict)
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    stdin: Optional[str] = None
    run: Optional[Callable[[Path], None]] = None  # makes ./run from the base run, then this
    prep: Optional[Callable[[Path, Path], None]] = None  # (tmp dir, base run) before it runs
    locked: bool = False                  # another process holds ./run/.lock
    absent: list[str] = dataclasses.field(default_factory=list)  # must not be created
    secret: Optional[str] = None          # must not appear in stderr or stdout
    xfail: Optional[str] = None


def copy_run(mutate: Optional[Callable[[Path], None]] = None) -> Callable[[Path], None]:
    """A copy of the base run in ./run, changed by mutate (if given)."""
    def make(run: Path) -> None:
        if mutate:
            mutate(run)
    return make


def other_model_at(name: str) -> Callable[[Path, Path], None]:
    """A copy of the base run's checkpoint at ./name claiming another model."""
    def make(tmp: Path, base: Path) -> None:
        shutil.copytree(base / "ckpt-1", tmp / name)
        other_model(tmp / name)
    return make


def rewrite_manifest(ckpt: Path) -> None:
    """Make the manifest match the files again (so only a deeper check can refuse)."""
    man = json.loads((ckpt / "manifest.json").read_text())
    for entry in man["files"]:
        data = (ckpt / entry["path"]).read_bytes()
        entry["size"] = len(data)
        entry["sha256"] = hashlib.sha256(data).hexdigest()
    (ckpt / "manifest.json").write_text(json.dumps(man))


def other_model(ckpt: Path) -> None:
    """The checkpoint claims another architecture (d_model 64), manifest consistent."""
    eng = ckpt / "model" / "engine.json"
    meta = json.loads(eng.read_text())
    meta["arch"]["d_model"] = 64
    eng.write_text(json.dumps(meta))
    rewrite_manifest(ckpt)


def truncate(path: Path, n: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(n)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def set_manifest_format(ckpt: Path, fmt: int) -> None:
    man = json.loads((ckpt / "manifest.json").read_text())
    man["format"] = fmt
    (ckpt / "manifest.json").write_text(json.dumps(man))


HF_CONFIG = json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]})

CASES: list[Case] = [
    # -- the command line --
    Case("unknown option", "cli", ["--bogus", "r.lua"], 2, ["unknown option '--bogus'"],
         {"r.lua": CFG}),
    Case("-e without code", "cli", ["-e"], 2, ["'-e' needs an argument"]),
    Case("missing recipe", "cli", ["nope.lua"], 2, ["cannot open recipe 'nope.lua'",
                                                     "No such file"]),
    Case("recipe is a directory", "cli", ["adir"], 2, ["cannot read adir", "directory"],
         {"adir/.keep": ""}),
    Case("setting without a recipe", "cli", ["steps=3"], 2,
         ["no recipe given before the setting 'steps=3'"]),
    Case("override with an empty key", "cli", ["r.lua", "=5"], 2, ["malformed setting '=5'"],
         {"r.lua": CFG}),
    Case("override without a value", "cli", ["r.lua", "steps="], 2,
         ["malformed setting 'steps='", "steps='\"\"'"], {"r.lua": CFG}),
    Case("override given twice", "cli", ["r.lua", "steps=1", "steps=2"], 2,
         ["setting 'steps' is given twice"], {"r.lua": CFG}),
    Case("unknown key", "cli", ["r.lua", "lrr=1e-4"], 2,
         ["unknown setting 'lrr'", "did you mean 'lr'"], {"r.lua": CFG}),
    Case("string for an integer", "cli", ["r.lua", "steps=abc"], 2,
         ["setting 'steps' expects an integer, got string 'abc'"], {"r.lua": CFG}),
    Case("float for an integer", "cli", ["r.lua", "steps=1.5"], 2,
         ["setting 'steps' expects an integer, got float"], {"r.lua": CFG}),
    Case("word for a boolean", "cli", ["r.lua", "flag=yes"], 2,
         ["setting 'flag' expects a boolean, got string 'yes'"], {"r.lua": CFG}),
    Case("number for a string", "cli", ["r.lua", "name=123"], 2,
         ["setting 'name' expects a string, got integer '123'", "name='\"123\"'"],
         {"r.lua": CFG}),
    Case("float out of range", "cli", ["r.lua", "lr=1e999"], 2,
         ["setting 'lr' expects a float", "out of range"], {"r.lua": CFG}),
    Case("value for a table", "cli", ["r.lua", "opt=3"], 2,
         ["setting 'opt' is a table", "opt.<field>"], {"r.lua": CFG}),
    Case("unknown nested key", "cli", ["r.lua", "opt.gamma=0.9"], 2,
         ["unknown setting 'opt.gamma'"], {"r.lua": CFG}),
    Case("-e syntax error", "cli", ["-e", "x ="], 2, ["(command line):1:", "near <eof>"]),
    Case("-e runtime error", "cli", ["-e", "error('boom')"], 1, ["(command line):1: boom"]),
    Case("-e reads an unknown setting", "cli",
         ["-e", "local c = rl.config{steps=1}; print(c.stpes)"], 2,
         ["(command line):1:", "no setting 'stpes'", "did you mean 'steps'"]),
    Case("stdin syntax error", "cli", ["-"], 2, ["stdin:2:", "near <eof>"],
         stdin="print(1)\nlocal x ="),

    # -- recipes --
    Case("recipe syntax error", "recipe", ["syn.lua"], 2,
         ["syn.lua:3: ')' expected (to close '(' at line 2)"],
         {"syn.lua": "local x = 1\nprint(x\n"}),
    Case("recipe runtime error", "recipe", ["rt.lua"], 1,
         ["rt.lua:3: attempt to index a nil value (local 't')"],
         {"rt.lua": "local rl = require 'rl'\nlocal t = nil\nprint(t.x)\n"}),
    Case("recipe raises an rl.error", "recipe", ["et.lua"], 1,
         ["et.lua:2: value error: custom failure"],
         {"et.lua": "local rl = require 'rl'\n"
                    "error(rl.error{kind='value', message='custom failure'})\n"}),
    Case("recipe raises a plain error table", "recipe", ["pt.lua"], 1,
         ["value error: half done", "pt.lua:1"],
         {"pt.lua": "error({kind='value', message='half done'})\n"}),
    Case("recipe raises a table without a message", "recipe", ["nt.lua"], 1,
         ["(error object is a table value with no message)", "nt.lua:1"],
         {"nt.lua": "error({1, 2})\n"}),
    Case("recipe raises a config error table", "recipe", ["ct.lua"], 2,
         ["config error: teacher_url is required"],
         {"ct.lua": "error({kind='config', message='teacher_url is required'})\n"}),
    Case("recipe requires a missing module", "recipe", ["rq.lua"], 2,
         ["rq.lua:1: config error: module 'no_such_helper' not found", "the recipe's directory"],
         {"rq.lua": "local h = require 'no_such_helper'\n"}),
    Case("recipe over its memory limit", "recipe", ["mem.lua"], 1,
         ["not enough memory"],
         {"mem.lua": "local t = {}\nfor i = 1, 1e7 do t[i] = ('x'):rep(100) .. i end\n"},
         env={"RLHOST_MEMORY_LIMIT": "8"}),

    # -- configs (rl.config, rl.run) --
    Case("recipe reads an unknown setting", "config", ["rd.lua"], 2,
         ["rd.lua:3:", "no setting 'stepz'", "did you mean 'steps'"],
         {"rd.lua": "local rl = require 'rl'\n"
                    "local c = rl.config { steps = 3 }\nprint(c.stepz)\n"}),
    Case("rl.config without a table", "config", ["cf.lua"], 2,
         ["rl.config expects a table of defaults, got number"],
         {"cf.lua": "local rl = require 'rl'\nrl.config(5)\n"}),
    Case("rl.run without dir", "config", ["rn.lua"], 2, ["rl.run needs a table with dir"],
         {"rn.lua": "local rl = require 'rl'\nrl.run { resume = true }\n"}),
    Case("rl.run misspelt option", "config", ["ro.lua"], 2, ["rl.run: unknown option 'resum'"],
         {"ro.lua": "local rl = require 'rl'\nrl.run { dir = 'run', resum = true }\n"}),
    Case("existing run without resume", "config", ["t.lua", "resume=false"], 2,
         ["run already holds a run", "resume=true"], {"t.lua": TRAIN}, run=copy_run()),
    Case("resume with another config", "config", ["t.lua", "model=builtin:small"], 2,
         ["run was run with another config", 'model: "builtin:tiny" -> "builtin:small"'],
         {"t.lua": TRAIN}, run=copy_run()),
    Case("run directory in use", "config", ["t.lua", "steps=2"], 2,
         ["run is in use by another rlhost process"], {"t.lua": TRAIN}, run=copy_run(),
         locked=True),

    # -- datasets --
    Case("missing dataset", "dataset", ["d.lua", "nowhere/train.jsonl"], 2,
         ["cannot open dataset nowhere/train.jsonl", "No such file"], {"d.lua": DATASET}),
    Case("dataset is a directory", "dataset", ["d.lua", "adir"], 2,
         ["cannot read dataset adir", "directory"], {"d.lua": DATASET, "adir/.keep": ""}),
    Case("malformed JSON line", "dataset", ["d.lua", "bad.jsonl"], 2,
         ["bad.jsonl:3: invalid JSON"],
         {"d.lua": DATASET, "bad.jsonl": '{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c", \n'}),
    Case("field of the wrong type", "dataset", ["d.lua", "types.jsonl"], 2,
         ["types.jsonl:2: field 'prompt' must be a string or a list of messages", "got number"],
         {"d.lua": DATASET, "types.jsonl": '{"prompt": "a"}\n{"prompt": 5}\n'}),
    Case("missing field", "dataset", ["d.lua", "miss.jsonl"], 2,
         ["miss.jsonl:2: missing field 'prompt'"],
         {"d.lua": DATASET, "miss.jsonl": '{"prompt": "a"}\n{"question": "b"}\n'}),
    Case("null field", "dataset", ["d.lua", "null.jsonl"], 2,
         ["null.jsonl:1: missing field 'prompt'"],
         {"d.lua": DATASET, "null.jsonl": '{"prompt": null}\n'}),
    Case("array instead of object", "dataset", ["d.lua", "arr.jsonl"], 2,
         ["arr.jsonl:2: expected a JSON object per row"],
         {"d.lua": DATASET, "arr.jsonl": '{"prompt": "a"}\n["b"]\n'}),
    Case("rows of two formats", "dataset", ["d.lua", "mixed.jsonl"], 2,
         ["mixed.jsonl:2: a 'messages' row, but mixed.jsonl:1 is a 'prompt-completion' row"],
         {"d.lua": DATASET, "mixed.jsonl": '{"prompt": "a", "completion": "b"}\n'
          '{"messages": [{"role": "user", "content": "a"}, '
          '{"role": "assistant", "content": "b"}]}\n'}),
    Case("message without content in a JSON array", "dataset", ["d.lua", "chat.json"], 2,
         ["chat.json:4: field 'completion': message 1 (assistant) needs a string 'content'"],
         {"d.lua": DATASET, "chat.json": '[\n{"prompt": [{"role": "user", "content": "a"}],\n'
          ' "completion": [{"role": "assistant", "content": "b"}]},\n'
          '{"prompt": [{"role": "user", "content": "c"}], "completion": [{"role": "assistant"}]}'
          '\n]\n'}),
    Case("empty dataset", "dataset", ["d.lua", "empty.jsonl"], 2,
         ["empty.jsonl: no rows"], {"d.lua": DATASET, "empty.jsonl": "\n\n"}),
    Case("invalid UTF-8 line", "dataset", ["d.lua", "utf.jsonl"], 2, ["utf.jsonl:2:"],
         {"d.lua": DATASET, "utf.jsonl": b'{"prompt": "a"}\n{"prompt": "\xff\xfe"}\n'}),

    # -- rubrics (rl.judge) --
    Case("missing rubric file", "rubric", ["j.lua"], 2,
         ["j.lua:3:", "cannot read the rubric file nowhere/rubric.txt"],
         {"j.lua": judge('rubric = "nowhere/rubric.txt"')}),
    Case("rubric without {completion}", "rubric", ["j.lua"], 2,
         ["j.lua:3:", "rubric.txt has no {completion} placeholder"],
         {"j.lua": judge('rubric = "rubric.txt"'),
          "rubric.txt": "Grade the answer to {prompt} from {lo} to {hi}.\n"}),
    Case("pairwise rubric without {a}", "rubric", ["j.lua"], 2,
         ["j.lua:3:", "pairwise rubric", "no {a} placeholder"],
         {"j.lua": judge('mode = "pairwise", '
                         'rubric = "Which is better for {prompt}: {completion}?"')}),
    Case("misspelt judge option", "rubric", ["j.lua"], 2,
         ["j.lua:3:", "unknown option 'rubrik'", "did you mean 'rubric'"],
         {"j.lua": judge('rubrik = "rubric.txt"')}),
    Case("judge scale upside down", "rubric", ["j.lua"], 2,
         ["j.lua:3:", "'scale' must be {lo, hi}, finite numbers with lo < hi"],
         {"j.lua": judge("scale = { 10, 1 }")}),

    # -- model directories --
    Case("missing model directory", "model", ["m.lua"], 2,
         ["m.lua:2:", "model directory 'nowhere/model' does not exist"],
         {"m.lua": model('path = "nowhere/model", threads = 1')}),
    Case("directory without config.json", "model", ["m.lua"], 2,
         ["m.lua:2:", "'hf' has no config.json"],
         {"m.lua": model('path = "hf", threads = 1'), "hf/README.md": "weights go here\n"}),
    Case("no safetensors weights", "model", ["m.lua"], 2,
         ["m.lua:2:", "'hf' has no *.safetensors weights"],
         {"m.lua": model('path = "hf", threads = 1'), "hf/config.json": HF_CONFIG,
          "hf/pytorch_model.bin": b"\x80\x02pickle"}),
    Case("corrupt safetensors", "model", ["m.lua"], 2,
         ["m.lua:2:", "'hf/model.safetensors' is not a valid safetensors file"],
         {"m.lua": model('path = "hf", threads = 1'), "hf/config.json": HF_CONFIG,
          "hf/model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": garbage"}),
    Case("corrupt safetensors, worker", "model", ["m.lua"], 2,
         ["m.lua:2:", "'hf/model.safetensors' is not a valid safetensors file"],
         {"m.lua": model('path = "hf", threads = 1, transport = "worker"'),
          "hf/config.json": HF_CONFIG, "hf/model.safetensors": b"short"}),
    Case("wrong dtype name", "model", ["m.lua"], 2,
         ["m.lua:2:", "'dtype' must be one of", "got 'fp32'"],
         {"m.lua": model('path = "builtin:tiny", dtype = "fp32"')}),
    Case("wrong device name", "model", ["m.lua"], 2,
         ["m.lua:2:", "'device' must be one of 'auto', 'cpu', 'cuda', got 'gpu'"],
         {"m.lua": model('path = "builtin:tiny", device = "gpu"')}),
    Case("wrong device name, worker", "model", ["m.lua"], 2,
         ["m.lua:2:", "got 'gpu'"],
         {"m.lua": model('path = "builtin:tiny", device = "gpu", transport = "worker"')}),
    Case("unknown builtin model", "model", ["m.lua"], 2,
         ["m.lua:2:", "unknown builtin model 'builtin:huge'", "builtin:tiny"],
         {"m.lua": model('path = "builtin:huge", threads = 1')}),
    Case("unknown transport", "model", ["m.lua"], 2,
         ["m.lua:2:", "'transport' must be 'embedded' or 'worker', got 'grpc'"],
         {"m.lua": model('path = "builtin:tiny", transport = "grpc"')}),
    Case("misspelt model option", "model", ["m.lua"], 2,
         ["m.lua:2:", "unknown option 'lrr'", "did you mean 'lr'"],
         {"m.lua": model('path = "builtin:tiny", lrr = 1e-4')}),

    # -- checkpoints --
    Case("init from another model", "checkpoint", ["t.lua", "dir=new", "init=other"], 2,
         ["is of another model", "d_model"], {"t.lua": TRAIN}, absent=["new"],
         prep=other_model_at("other")),
    Case("resume a checkpoint of another model", "checkpoint", ["t.lua"], 2,
         ["is of another model", "d_model"], {"t.lua": TRAIN},
         run=copy_run(lambda r: other_model(r / "ckpt-1"))),
    Case("truncated manifest", "checkpoint", ["t.lua", "steps=2"], 2,
         ["holds checkpoints but none is usable", "manifest.json is not a valid manifest"],
         {"t.lua": TRAIN}, run=copy_run(lambda r: truncate(r / "ckpt-1" / "manifest.json", 40))),
    Case("corrupt weights under a manifest", "checkpoint", ["t.lua", "steps=2"], 2,
         ["holds checkpoints but none is usable",
          "model/model.safetensors does not match its SHA-256"],
         {"t.lua": TRAIN},
         run=copy_run(lambda r: flip_byte(r / "ckpt-1" / "model" / "model.safetensors"))),
    Case("checkpoint of a newer format", "checkpoint", ["t.lua", "steps=2"], 2,
         ["holds checkpoints but none is usable", "checkpoint format 99"],
         {"t.lua": TRAIN}, run=copy_run(lambda r: set_manifest_format(r / "ckpt-1", 99))),
    Case("run directory of a newer format", "checkpoint", ["t.lua", "steps=2"], 2,
         ["written by a newer rlhost", "run format 99"], {"t.lua": TRAIN},
         run=copy_run(lambda r: (r / "run.json").write_text('{"format": 99, "rlhost": "9.0"}\n'))),
    Case("run.json garbled", "checkpoint", ["t.lua", "steps=2"], 2,
         ["run/run.json is not a valid run description"], {"t.lua": TRAIN},
         run=copy_run(lambda r: truncate(r / "run.json", 5))),
    Case("init from a missing directory", "checkpoint", ["t.lua", "dir=new", "init=nowhere"], 2,
         ["no checkpoint or run directory at nowhere"], {"t.lua": TRAIN}, absent=["new"]),
    Case("init from a checkpoint with a cut manifest", "checkpoint",
         ["t.lua", "dir=new", "init=run/ckpt-1"], 2,
         ["checkpoint run/ckpt-1 is not usable", "manifest.json is not a valid manifest"],
         {"t.lua": TRAIN}, absent=["new"],
         run=copy_run(lambda r: truncate(r / "ckpt-1" / "manifest.json", 40))),

    # -- endpoint settings --
    Case("URL with a wrong scheme", "endpoint", ["e.lua"], 2,
         ["e.lua:2:", "'url' must start with http:// or https://"],
         {"e.lua": endpoint('url = "ftp://127.0.0.1/v1"')}),
    Case("URL without a scheme", "endpoint", ["e.lua"], 2,
         ["e.lua:2:", "'url' must start with http:// or https://"],
         {"e.lua": endpoint('url = "localhost:8000/v1"')}),
    Case("unknown api name", "endpoint", ["e.lua"], 2,
         ["e.lua:2:", "'api' must be openai-chat, openai-completions or anthropic, not 'gemini'"],
         {"e.lua": endpoint('url = "@URL@", api = "gemini"')}),
    Case("api_key_env variable unset", "endpoint", ["e.lua"], 2,
         ["e.lua:2:", "the environment variable RL_NO_SUCH_KEY (api_key_env) is not set"],
         {"e.lua": endpoint('url = "@URL@", api_key_env = "RL_NO_SUCH_KEY"')}),
    Case("misspelt endpoint option", "endpoint", ["e.lua"], 2,
         ["e.lua:2:", "unknown option 'api_key_evn'", "did you mean 'api_key_env'"],
         {"e.lua": endpoint('url = "@URL@", api_key_evn = "RL_KEY"')}),
    Case("timeout that is not a number", "endpoint", ["e.lua"], 2,
         ["e.lua:2:", "'timeout' must be a number"],
         {"e.lua": endpoint('url = "@URL@", timeout = "30s"')}),
    Case("refused connection", "endpoint", ["e.lua"], 1,
         ["http error: POST http://127.0.0.1:@CLOSED@/v1/chat/completions: Couldn't connect",
          "e.lua:3"],
         {"e.lua": endpoint('url = "http://127.0.0.1:@CLOSED@/v1", max_retries = 1, '
                            'retry_base = 0.05')}),
    Case("refused connection, judge", "endpoint", ["e.lua"], 1,
         ["http error", "127.0.0.1:@CLOSED@", "e.lua:4"],
         {"e.lua": endpoint('url = "http://127.0.0.1:@CLOSED@/v1", max_retries = 0', "judge")}),
    Case("TLS with a self-signed certificate", "endpoint", ["e.lua"], 1,
         ["https://127.0.0.1:@TLSPORT@/v1/chat/completions", "certificate", "e.lua:3"],
         {"e.lua": endpoint('url = "@TLS@", max_retries = 0')}),
    Case("401 with a bad key", "endpoint", ["e.lua"], 1,
         ["HTTP 401", "Incorrect API key", "e.lua:3"],
         {"e.lua": endpoint('url = "@URL@", api_key_env = "RL_TEST_KEY", max_retries = 0')},
         env={"RL_TEST_KEY": BAD_KEY}, secret=BAD_KEY),
    Case("401 with no key", "endpoint", ["e.lua"], 1,
         ["HTTP 401", "no API key was sent", "api_key_env", "OPENAI_API_KEY", "e.lua:3"],
         {"e.lua": endpoint('url = "@URL@", max_retries = 0')}),
    # A judge in a fallback chain is not fatal (exit 0), but the notice says why.
    Case("401 for a judge with a fallback", "endpoint", ["f.lua"], 0,
         ["failed on 2 of 2 samples (http: ", "HTTP 401", "Incorrect API key",
          "falling back to the next scorer"],
         {"f.lua": """local rl = require "rl"
local ep = rl.endpoint { url = "@URL@", api_key_env = "RL_TEST_KEY", max_retries = 0 }
local chain = rl.fallback { rl.judge { endpoint = ep }, rl.reward.exact { expected = "t" } }
local r = rl.score(chain, { { prompt = "p", text = "t" }, { prompt = "q", text = "u" } })
assert(r[1] == 1 and r[2] == 0)
"""}, env={"RL_TEST_KEY": BAD_KEY}, secret=BAD_KEY),
]


# ---- fixtures -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[dict[str, str]]:
    """One key-checking teacher and one TLS teacher with a self-signed certificate
    for the whole module, and a loopback port nothing listens on."""
    d = tmp_path_factory.mktemp("servers")
    plain = Teacher(api_key=GOOD_KEY).start()
    tls = None
    tokens = {"@URL@": plain.url}
    if shutil.which("openssl"):
        cert, key = str(d / "cert.pem"), str(d / "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", key, "-out", cert], check=True, capture_output=True)
        tls = Teacher(certfile=cert, keyfile=key).start()
        tokens.update({"@TLS@": tls.url, "@TLSPORT@": str(tls.port)})
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    tokens["@CLOSED@"] = str(s.getsockname()[1])
    s.close()  # bound, never listening, now closed: connections are refused
    yield tokens
    plain.stop()
    if tls:
        tls.stop()


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A finished one-step run on builtin:tiny (run.json, config.json, metrics, ckpt-1)."""
    d = tmp_path_factory.mktemp("base")
    (d / "t.lua").write_text(TRAIN)
    p = subprocess.run([RLHOST, "t.lua"], cwd=d, capture_output=True, text=True, timeout=300,
                       env=clean_env())
    assert p.returncode == 0, p.stderr
    assert (d / "run" / "ckpt-1" / "manifest.json").exists()
    return d / "run"


def clean_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RL_", "OPENAI_", "ANTHROPIC_")) and k != "RLHOST_MEMORY_LIMIT"}
    env.update(extra or {})
    return env


def tree(path: Path) -> dict[str, str]:
    """Every entry under path with its bytes' hash (and mode): what 'as it was' means."""
    out = {}
    for base, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(base, name)
            rel = os.path.relpath(full, path)
            st = os.lstat(full)
            if os.path.isfile(full):
                with open(full, "rb") as f:
                    out[rel] = f"{st.st_mode:o} {hashlib.sha256(f.read()).hexdigest()}"
            else:
                out[rel] = f"{st.st_mode:o} dir"
    return out


# ---- the test -------------------------------------------------------------------------

def params() -> list:
    out = []
    for c in CASES:
        marks = [pytest.mark.xfail(reason=c.xfail, strict=True)] if c.xfail else []
        out.append(pytest.param(c, id=f"{c.area}: {c.id}", marks=marks))
    return out


def test_table_is_broad() -> None:
    areas: dict[str, int] = {}
    for c in CASES:
        areas[c.area] = areas.get(c.area, 0) + 1
    assert len(CASES) >= 40
    assert set(areas) == {"cli", "recipe", "config", "dataset", "rubric", "model",
                          "checkpoint", "endpoint"}, areas
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", params())
def test_bad_input(case: Case, tmp_path: Path, servers: dict[str, str], request) -> None:
    def sub(s: str) -> str:
        for k, v in servers.items():
            s = s.replace(k, v)
        return s

    if any("@TLS" in str(v) for v in [*case.files.values(), *case.want]) and "@TLS@" not in servers:
        pytest.skip("openssl is needed to make a self-signed certificate")
    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(sub(content))
    run_dir = None
    lock = None
    if case.prep:
        case.prep(tmp_path, request.getfixturevalue("base_run"))
    if case.run:
        run_dir = tmp_path / "run"
        shutil.copytree(request.getfixturevalue("base_run"), run_dir)
        case.run(run_dir)
        if case.locked:  # as a running rlhost holds it
            lock = open(run_dir / ".lock", "a")
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    before = tree(run_dir) if run_dir else None

    p = subprocess.run([RLHOST, *[sub(a) for a in case.args]], cwd=tmp_path, input=case.stdin,
                       env=clean_env(case.env), capture_output=True, text=True, timeout=120)
    if lock:
        lock.close()
    err = p.stderr
    # The documented status, never a signal (a crash, an abort, a core dump).
    assert p.returncode >= 0, f"killed by signal {-p.returncode}:\n{err}"
    assert p.returncode == case.status, (p.returncode, err)
    wants = [sub(w) for w in case.want]
    for w in wants:
        assert w in err, (w, err)
    assert err.count(wants[0]) == 1, f"the message is repeated:\n{err}"
    for bad in FORBIDDEN:
        assert bad not in err, (bad, err)
    assert not list(tmp_path.glob("core*")), "a core file was written"
    if case.status == 2:
        # A usage or configuration error is one message, no Lua traceback.
        assert "stack traceback" not in err, err
        lines = [ln for ln in err.splitlines()
                 if ln.strip() and "warning:" not in ln and "config changed where allowed" not in ln
                 and not ln.startswith(("  ", "Try 'rlhost --help'"))]
        assert len(lines) == 1, f"expected one message line:\n{err}"
    if case.secret:
        assert case.secret not in err and case.secret not in p.stdout
    if run_dir is not None:
        assert tree(run_dir) == before, "the run directory changed"
    for name in case.absent:
        assert not (tmp_path / name).exists(), f"{name} was created"


# ---- the shipped recipes' settings (issue 9, fault 5) ----------------------------------
#
# A bad step size, task, path or teacher setting used to be found only after the model
# loaded and the run directory was written; the corrected rerun was then refused as
# "another config". Each is now refused by the recipe's declarations in rl.config, before
# anything is written: exit 2, one line naming the setting and what it allows. The
# corrected command then runs in the same directory.

RECIPES = ROOT / "recipes"
# A one-step RLAIF run on builtin:tiny, small enough for a test.
RLAIF_QUICK = {"dir": "run", "steps": "1", "prompts": "2", "group": "2", "eval_every": "0",
               "threads": "1", "plot": "false"}
RUBRIC = ("Grade the answer to {prompt} (correct: {reference}) from {lo} to {hi}.\n"
          "[The Start of the Response]\n{completion}\n[The End of the Response]\n")


@dataclasses.dataclass
class Setting:
    id: str
    recipe: str
    bad: dict[str, str]            # settings replacing or added to the quick ones
    line: str                      # the whole message, after "rlhost: config error: "
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    fixed: Optional[dict[str, str]] = None   # the correction (rlaif: then rerun)
    fixed_env: dict[str, str] = dataclasses.field(default_factory=dict)


MUST_DIR = "setting 'dir' must be a directory or a path that can be created; "
SETTINGS: list[Setting] = [
    Setting("group=0", "rlaif", {"group": "0"}, "setting 'group' must be >= 1 (got 0)",
            fixed={"group": "2"}),
    Setting("prompts=0", "rlaif", {"prompts": "0"}, "setting 'prompts' must be >= 1 (got 0)",
            fixed={"prompts": "2"}),
    Setting("micro_batch=0", "rlaif", {"micro_batch": "0"},
            "setting 'micro_batch' must be >= 1 (got 0)", fixed={"micro_batch": "2"}),
    Setting("minibatches=0", "rlaif", {"minibatches": "0"},
            "setting 'minibatches' must be >= 1 (got 0)", fixed={"minibatches": "1"}),
    Setting("task=sorting", "rlaif", {"task": "sorting"},
            "setting 'task' must be one of 'sort' (tasks/<name>.lua on the recipe path) "
            "(got 'sorting')", fixed={"task": "sort"}),
    Setting("judge_cache in a missing directory", "rlaif", {"judge_cache": "nodir/judge.sqlite"},
            "setting 'judge_cache' must be a file path in an existing directory; "
            "'nodir' does not exist", fixed={"judge_cache": "judge.sqlite"}),
    Setting("dir is a regular file", "rlaif", {"dir": "afile"},
            MUST_DIR + "'afile' is a regular file", fixed={"dir": "run"}),
    Setting("dir is a dangling symlink", "rlaif", {"dir": "dangling"},
            MUST_DIR + "'dangling' is a dangling symlink (its target does not exist)",
            fixed={"dir": "run"}),
    Setting("RL_TEACHER_URL without RL_TEACHER_MODEL", "rlaif", {"rubric": "rubric.txt"},
            "setting 'teacher_model' (environment RL_TEACHER_MODEL) must be set when "
            "'teacher_url' (environment RL_TEACHER_URL) is set",
            env={"RL_TEACHER_URL": "@URL@", "RL_TEACHER_KEY_ENV": "RL_TEST_KEY",
                 "RL_TEST_KEY": GOOD_KEY},
            fixed={}, fixed_env={"RL_TEACHER_MODEL": "teach"}),
    Setting("loss misspelt", "rlaif", {"loss": "ppp"},
            "setting 'loss' must be one of 'pg', 'ppo' (got 'ppp') (did you mean 'ppo'?)"),
    Setting("RL_TEACHER_API unknown", "rlaif", {},
            "setting 'teacher_api' (environment RL_TEACHER_API) must be one of 'openai-chat', "
            "'openai-completions', 'anthropic' (got 'gemini')",
            env={"RL_TEACHER_API": "gemini"}),
    Setting("sft micro_batch=0", "sft", {"micro_batch": "0"},
            "setting 'micro_batch' must be >= 1 (got 0)"),
    Setting("sft schedule misspelt", "sft", {"schedule": "cosin"},
            "setting 'schedule' must be one of 'constant', 'linear', 'cosine' (got 'cosin') "
            "(did you mean 'cosine'?)"),
    Setting("sft dir is a regular file", "sft", {"dir": "afile"},
            MUST_DIR + "'afile' is a regular file"),
    Setting("eval n=0", "eval", {"n": "0"}, "setting 'n' must be >= 1 (got 0)"),
    Setting("eval unknown scorer", "eval", {"scorers": "native,bogus"},
            "setting 'scorers' must be a comma-separated list of 'native', 'exact', 'judge' "
            "(got 'bogus' in 'native,bogus')"),
    Setting("eval out is a regular file", "eval", {"out": "afile"},
            "setting 'out' must be a directory or a path that can be created; "
            "'afile' is a regular file"),
    Setting("eval checkpoint missing", "eval", {"checkpoint": "nowhere"},
            "setting 'checkpoint' must be an existing path; 'nowhere' does not exist"),
    Setting("demo group=0", "demo", {"group": "0"}, "setting 'group' must be >= 1 (got 0)"),
    Setting("demo dir is a dangling symlink", "demo", {"dir": "dangling"},
            MUST_DIR + "'dangling' is a dangling symlink (its target does not exist)"),
]


def recipe_args(s: Setting, settings: dict[str, str]) -> list[str]:
    base = dict(RLAIF_QUICK) if s.recipe == "rlaif" else {}
    base.update(settings)
    return [str(RECIPES / f"{s.recipe}.lua"), *[f"{k}={v}" for k, v in base.items()]]


@pytest.mark.parametrize("s", [pytest.param(s, id=f"{s.recipe}: {s.id}") for s in SETTINGS])
def test_recipe_setting_refused_before_anything_is_written(s: Setting, tmp_path: Path,
                                                           servers: dict[str, str]) -> None:
    (tmp_path / "afile").write_text("not a directory\n")
    os.symlink("nowhere", tmp_path / "dangling")
    (tmp_path / "rubric.txt").write_text(RUBRIC)
    env = {k: v.replace("@URL@", servers["@URL@"]) for k, v in s.env.items()}
    before = tree(tmp_path)
    p = subprocess.run([RLHOST, *recipe_args(s, s.bad)], cwd=tmp_path, env=clean_env(env),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr == f"rlhost: config error: {s.line}\n"
    assert p.stdout == ""
    assert tree(tmp_path) == before, "something was written"
    assert os.readlink(tmp_path / "dangling") == "nowhere"
    if s.fixed is None:
        return
    # The corrected command, in the same place: it runs (nothing of the refused run is
    # left to make it "another config").
    settings = {**s.bad, **s.fixed}
    p = subprocess.run([RLHOST, *recipe_args(s, settings)], cwd=tmp_path,
                       env=clean_env({**env, **s.fixed_env}), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    rows = [json.loads(line) for line in metrics.splitlines()]
    assert [r["step"] for r in rows] == [1]
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    for k, v in s.fixed.items():
        assert str(cfg[k]).lower() == v, (k, cfg[k])
    if s.fixed_env:  # the teacher graded the samples
        assert rows[0]["scored_by"].get("judge", 0) > 0, rows[0]
