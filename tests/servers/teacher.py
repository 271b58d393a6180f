#!/usr/bin/env python3
"""A teacher model for tests: a threaded stdlib HTTP server speaking the OpenAI Chat
Completions, OpenAI Completions and Anthropic Messages shapes.

Judge prompts (ones containing a "[The Start of ...]" block, as the default rubrics
write them) are answered by a deterministic rule of the test's choosing; other prompts
get an echo. Faults are injected by configuration, per request, with a seeded
generator:

  latency      seconds added to every request
  fault_rate   probability that a request is faulted
  faults       kinds to draw from: 429 (Retry-After in seconds), 429date (Retry-After
               as an HTTP-date), 500, 503, truncated (a body shorter than its
               Content-Length), ctype (200 with text/html), hang (no answer for
               hang_s seconds), reset (a partial status line then a TCP reset),
               unparsable (a judge answer without a score), max_tokens (an answer
               cut off at the token limit: OpenAI finish_reason "length", Anthropic
               stop_reason "max_tokens"; a judge answer then breaks off after naming
               scores in passing, other answers lose their second half; not in the
               default list)
  fail_first   the first N requests are faulted for sure, cycling through faults
  echo         (a fault kind) 400 whose body echoes the request headers, so a test
               can check that the client scrubs its key from error texts
  echo_escaped (a fault kind) 400 whose error message quotes the key it got with
               its first character \\u-escaped in the JSON body
  echo_ctype   (a fault kind) 200 with a Content-Type that is not JSON and carries
               the key it got (a header-ish echo that ends up in the error text)
  echo_key     answers (judge or echo) start by quoting the key they got as
               "Authorization: Bearer KEY", encoded so: "plain", "json_u" (every
               character \\u-escaped in the JSON body), "json_mixed" (every other
               character \\u-escaped), "split" (Anthropic: the key cut in two text
               blocks, which the client joins; others: as json_mixed), "pct"
               (percent-encoded in the text), "b64" (the text quotes
               "Authorization: Basic base64(user:KEY)"); None: no echo
  ignore_n     answer one choice whatever n asks for (llama.cpp, Ollama)
  api_key      when set, a request without this key (Authorization: Bearer or
               x-api-key) gets 401 with an OpenAI-style body that quotes the key it got
  logprob_mass (for requests asking for log-probs: chat logprobs=true with
               top_logprobs=k, completions logprobs=k) the probability the first
               token's distribution puts on verdict tokens, default 0.9: the judge's
               verdict V (its rule's score, or A/B) as " V" (0.6 of it) and "V" (0.2 of
               it), a neighbour verdict (0.2 of it), the rest on " The"; the top k
               of these come back, most likely first
  rule         judge rule: "len10" (score = 1 + len(completion) % 10), "digit" (the
               first digit in the completion; none: an unparsable answer),
               "const:N", "longer" (pairwise: the longer answer wins)

Use in-process:  srv = Teacher(rule="len10"); srv.start(); srv.url ...; srv.stop()
or as a program: teacher.py [--config JSON] [--port N] [--delay SECONDS]
(prints "PORT n" once listening; --delay waits that long before listening).
GET /v1/models lists one model, "teacher" (a readiness probe's target).
GET /_stats returns the counters; POST /_config merges new settings (and with
{"reset": true} zeroes the counters).
"""
from __future__ import annotations

import base64
import email.utils
import json
import math
import random
import re
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULTS = {
    "latency": 0.0,
    "fault_rate": 0.0,
    "faults": ["429", "429date", "500", "503", "truncated", "ctype", "hang", "reset", "unparsable"],
    "seed": 1,
    "retry_after": 1,
    "hang_s": 3.0,
    "ignore_n": False,
    "rule": "len10",
    "fail_first": 0,
    "api_key": None,
    "echo_key": None,
    "logprob_mass": 0.9,
}

# Faults that are answers (status 200, well-formed), not transport failures.
ANSWER_FAULTS = ("unparsable", "max_tokens")
CUT_JUDGE = ("The response addresses the prompt. On this scale a [[2]] would mean mostly "
             "wrong, while a [[9]] would mean")
CUT_PAIR = "Both have merit: [[A]] would mean the first is better, while [[B]] would mean"

RESP_RE = re.compile(r"\[The Start of the Response\]\n(.*?)\n\[The End of the Response\]", re.S)
PAIR_RE = re.compile(r"\[The Start of Assistant A's Answer\]\n(.*?)\n\[The End of Assistant A's Answer\]"
                     r".*?\[The Start of Assistant B's Answer\]\n(.*?)\n\[The End of Assistant B's Answer\]", re.S)


def judge_answer(rule: str, prompt: str, unparsable: bool) -> str | None:
    """The judge's text for a judge prompt, or None if the prompt is not one."""
    m = PAIR_RE.search(prompt)
    if m:
        if unparsable:
            return "Both answers have merit; I cannot decide."
        a, b = m.group(1), m.group(2)
        v = "A" if len(a) > len(b) else "B" if len(b) > len(a) else "C"
        return f"Comparing the two answers on length.\n\nVerdict: [[{v}]]"
    m = RESP_RE.search(prompt)
    if not m:
        return None
    completion = m.group(1)
    if unparsable:
        return "The response is interesting. I would rate it highly, all things considered."
    if rule == "len10":
        score = 1 + len(completion) % 10
    elif rule == "digit":
        d = re.search(r"\d", completion)
        if not d:
            return "No rating is possible here."
        score = int(d.group(0))
    elif rule.startswith("const:"):
        score = rule.split(":", 1)[1]
    else:
        score = 5
    return f"The response addresses the prompt; reasoning about quality.\n\nRating: [[{score}]]"


def verdict_dist(answer: str | None, mass: float) -> list[tuple[str, float]]:
    """The first token's distribution for a judge answer (see logprob_mass), most
    likely first; [] when the answer holds no verdict."""
    m = re.search(r"\[\[(\w+)\]\]", answer or "")
    if not m:
        return []
    v = m.group(1)
    other = {"A": "B", "B": "A"}.get(v) or (str(int(v) + 1) if v.isdigit() and int(v) < 9
                                            else str(int(v) - 1) if v.isdigit() else "A")
    dist = [(" " + v, 0.6 * mass), (v, 0.2 * mass), (" " + other, 0.2 * mass), (" The", 1 - mass)]
    return sorted(dist, key=lambda t: -t[1])


def logprobs_field(dist: list[tuple[str, float]], k: int, chat: bool) -> dict:
    """A choice's "logprobs" object with the top k of dist, in OpenAI's shapes."""
    top = [(t, math.log(p)) for t, p in dist[:k] if p > 0]
    if chat:
        entry = lambda t, l: {"token": t, "logprob": l, "bytes": list(t.encode())}  # noqa: E731
        return {"content": [{**entry(*top[0]), "top_logprobs": [entry(t, l) for t, l in top]}]}
    return {"tokens": [top[0][0]], "token_logprobs": [top[0][1]],
            "top_logprobs": [{t: l for t, l in top}], "text_offset": [0]}


def cut_off(answer: str, prompt: str) -> str:
    """What a reply stopped at the token limit shows: a judge's reasoning broken off
    after it named scores in passing; any other answer, its first half."""
    if PAIR_RE.search(prompt):
        return CUT_PAIR
    if RESP_RE.search(prompt):
        return CUT_JUDGE
    return answer[:len(answer) // 2]


def received_key(headers) -> str:
    return headers.get("x-api-key") or (headers.get("Authorization") or "").removeprefix("Bearer ")


def json_escaped(key: str, every: int) -> str:
    """key as JSON string content with every `every`-th character \\u-escaped."""
    return "".join(f"\\u{ord(c):04x}" if i % every == 0 else c for i, c in enumerate(key))


def key_echo(mode: str | None, key: str) -> tuple[str, list[str]]:
    """The text an echoing answer starts with, and (for "split") the cut pieces, for
    a key echoed in `mode` (see the module doc)."""
    if not mode or not key:
        return "", []
    if mode == "pct":
        return "You sent Authorization: Bearer " + "".join(f"%{ord(c):02X}" for c in key) + ". ", []
    if mode == "b64":
        return "You sent Authorization: Basic " + base64.b64encode(f"user:{key}".encode()).decode() + ". ", []
    text = f"You sent Authorization: Bearer {key}. "
    if mode == "split":
        h = len("You sent Authorization: Bearer ") + len(key) // 2
        return text, [text[:h], text[h:]]
    return text, []


def encode_body(body: dict, mode: str | None, key: str) -> bytes:
    """JSON for body, the echoed key written with the escapes `mode` asks for."""
    data = json.dumps(body)
    if key and mode == "json_u":
        data = data.replace(key, json_escaped(key, 1))
    elif key and mode in ("json_mixed", "split"):
        data = data.replace(key, json_escaped(key, 2))
    return data.encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the body waits for
    # the client's delayed ACK (40 ms) and the server, not the client, sets the pace.
    disable_nagle_algorithm = True
    server: "Server"

    def log_message(self, fmt, *args):  # quiet
        pass

    def setup(self):
        super().setup()
        self.server.count("connections")

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass

    def _send(self, status: int, body: bytes, ctype="application/json", headers=None, length=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/_stats":
            self._send(200, json.dumps(self.server.snapshot()).encode())
        elif self.path.rstrip("/").endswith("/models"):  # OpenAI's model list
            body = {"object": "list", "data": [{"id": "teacher", "object": "model"}]}
            self._send(200, json.dumps(body).encode())
        else:
            self._send(404, b'{"error":"not found"}')

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if self.path == "/_config":
            self.server.configure(json.loads(raw or b"{}"))
            self._send(200, b"{}")
            return
        path = self.path.rstrip("/")
        if not (path.endswith("/chat/completions") or path.endswith("/completions")
                or path.endswith("/messages")):
            self._send(404, b'{"error":"not found"}')
            return
        cfg, fault = self.server.admit(self.headers)
        if cfg["api_key"]:
            got = self.headers.get("x-api-key") or \
                (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            if got != cfg["api_key"]:
                self.server.count("unauthorized")
                body = {"error": {"message": f"Incorrect API key provided: {got}.",
                                  "type": "invalid_request_error", "code": "invalid_api_key"}}
                self._send(401, json.dumps(body).encode())
                return
        if cfg["latency"]:
            time.sleep(cfg["latency"])
        try:
            req = json.loads(raw)
        except ValueError:
            self._send(400, b'{"error":{"message":"bad json"}}')
            return
        self.server.count("body_n", req.get("n", 1))
        if fault and fault not in ANSWER_FAULTS:
            self.server.count("fault_" + fault)
            return self._fault(fault, cfg)
        self.server.count("ok_http")
        if fault == "max_tokens":
            self.server.count("fault_max_tokens")
        self._answer(path, req, cfg, fault == "unparsable", fault == "max_tokens")

    def _fault(self, fault: str, cfg):
        if fault == "429":
            self._send(429, b'{"error":{"message":"rate limited"}}',
                       headers={"Retry-After": str(cfg["retry_after"])})
        elif fault == "429date":
            when = email.utils.formatdate(time.time() + cfg["retry_after"], usegmt=True)
            self._send(429, b'{"error":{"message":"rate limited"}}', headers={"Retry-After": when})
        elif fault in ("500", "503"):
            self._send(int(fault), b'{"error":{"message":"server error"}}')
        elif fault == "truncated":
            body = b'{"choices":[{"message":{"content":"cut'
            self._send(200, body, length=len(body) + 200)
            self.close_connection = True
            self._reset()
        elif fault == "echo":
            body = json.dumps({"error": {"message": "bad request", "headers": dict(self.headers)}})
            self._send(400, body.encode())
        elif fault == "echo_escaped":
            # Short, and only the first character escaped, so that the whole key fits in
            # the excerpt of the body that error texts quote.
            key = received_key(self.headers)
            data = json.dumps({"error": {"message": f"Bad key {key}"}})
            self._send(400, data.replace(key, json_escaped(key, max(len(key), 1))).encode())
        elif fault == "echo_ctype":
            self._send(200, b"<html>proxy login</html>",
                       ctype=f"text/html; token={received_key(self.headers)}")
        elif fault == "ctype":
            self._send(200, b"<html><body>Bad gateway</body></html>", ctype="text/html")
        elif fault == "hang":
            time.sleep(cfg["hang_s"])
            self.close_connection = True
            self._reset()
        elif fault == "reset":
            # Part of a status line first: a reset before any byte would let curl
            # silently re-send on a reused connection, hiding the fault from the count.
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-")
            self.wfile.flush()
            self.close_connection = True
            self._reset()

    def _reset(self):
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def _answer(self, path: str, req: dict, cfg: dict, unparsable: bool, cut: bool = False):
        key = received_key(self.headers) if cfg["echo_key"] else ""
        echo, pieces = key_echo(cfg["echo_key"], key)
        if path.endswith("/messages"):
            text = " ".join(m["content"] if isinstance(m["content"], str) else
                            " ".join(b.get("text", "") for b in m["content"])
                            for m in req.get("messages", []))
            ans = judge_answer(cfg["rule"], text, unparsable)
            if ans is None:
                ans = "echo: " + text[-200:]
            if cut:
                ans = cut_off(ans, text)
            blocks = [{"type": "text", "text": p} for p in pieces[:-1]] + \
                [{"type": "text", "text": (pieces[-1] if pieces else echo) + ans}]
            body = {"id": "msg_test", "type": "message", "role": "assistant", "model": req.get("model"),
                    "content": blocks, "stop_reason": "max_tokens" if cut else "end_turn",
                    "usage": {"input_tokens": len(text) // 4 + 1, "output_tokens": len(ans) // 4 + 1}}
            self._send(200, encode_body(body, cfg["echo_key"], key))
            return
        chat = path.endswith("/chat/completions")
        if chat:
            text = "\n".join(m.get("content", "") for m in req.get("messages", [])
                             if isinstance(m.get("content"), str))
        else:
            text = req.get("prompt", "")
        n = 1 if cfg["ignore_n"] else int(req.get("n", 1) or 1)
        ans = judge_answer(cfg["rule"], text, unparsable)
        top_k = (req.get("top_logprobs") if chat and req.get("logprobs") else
                 req.get("logprobs") if not chat else None)
        dist = verdict_dist(ans, cfg["logprob_mass"]) if top_k else []
        if dist:
            self.server.count("logprobs_requests")
            ans = dist[0][0]  # the judge wrote its most likely first token (max_tokens=1)
        choices = []
        finish = "length" if cut else "stop"
        for i in range(n):
            t = echo + (ans if ans is not None else f"echo {i}: {text[-200:]}")
            if cut:
                t = cut_off(t, text)
            if chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": t},
                                "finish_reason": finish})
            else:
                choices.append({"index": i, "text": t, "finish_reason": finish})
            if dist:
                choices[-1]["logprobs"] = logprobs_field(dist, int(top_k), chat)
        body = {"id": "cmpl-test", "object": "chat.completion" if chat else "text_completion",
                "model": req.get("model"), "choices": choices,
                "usage": {"prompt_tokens": len(text) // 4 + 1,
                          "completion_tokens": sum(len(c.get("text") or c["message"]["content"]) // 4 + 1
                                                   for c in choices)}}
        self._send(200, encode_body(body, cfg["echo_key"], key))


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, addr, cfg):
        self.cfg = dict(DEFAULTS)
        self.cfg.update(cfg)
        self.lock = threading.Lock()
        self.stats: dict = {}
        self.k = 0
        super().__init__(addr, Handler)

    def configure(self, cfg: dict):
        with self.lock:
            if cfg.pop("reset", False):
                self.stats = {}
                self.k = 0
            self.cfg.update(cfg)

    def count(self, key, by=1):
        with self.lock:
            self.stats[key] = self.stats.get(key, 0) + by

    def admit(self, headers):
        """Count the request; decide its fault from the seeded sequence."""
        with self.lock:
            self.k += 1
            self.stats["requests"] = self.stats.get("requests", 0) + 1
            if headers.get("Authorization"):
                self.stats["auth_bearer"] = self.stats.get("auth_bearer", 0) + 1
            if headers.get("x-api-key"):
                self.stats["auth_x_api_key"] = self.stats.get("auth_x_api_key", 0) + 1
            cfg = dict(self.cfg)
            rng = random.Random(cfg["seed"] * 1000003 + self.k)
            fault = None
            if self.k <= cfg["fail_first"]:
                fault = cfg["faults"][(self.k - 1) % len(cfg["faults"])]
            elif cfg["fault_rate"] and rng.random() < cfg["fault_rate"]:
                fault = rng.choice(cfg["faults"])
            return cfg, fault

    def snapshot(self):
        with self.lock:
            return dict(self.stats)


class Teacher:
    """In-process handle: start() on a free loopback port, stop() afterwards."""

    def __init__(self, certfile: str | None = None, keyfile: str | None = None, **cfg):
        self.server = Server(("127.0.0.1", 0), cfg)
        self.port = self.server.server_address[1]
        scheme = "http"
        if certfile:  # TLS, to check that clients verify the peer
            import ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certfile, keyfile)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def stats(self):
        return self.server.snapshot()

    def configure(self, **cfg):
        self.server.configure(cfg)

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()


def main(argv):
    cfg = {}
    if "--config" in argv:
        cfg = json.loads(argv[argv.index("--config") + 1])
    if "--delay" in argv:  # a server that takes a while to load its model
        time.sleep(float(argv[argv.index("--delay") + 1]))
    port = int(argv[argv.index("--port") + 1]) if "--port" in argv else 0
    srv = Server(("127.0.0.1", port), cfg)
    print(f"PORT {srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
