"""Embedded transport: the C host calls `call(request_json) -> reply_json` in-process."""

from __future__ import annotations

import json
import logging
import sys
import traceback

from .dispatch import dispatch, error_reply

if not logging.getLogger().handlers:
    # The host forwards stderr; keep engine logs there and terse.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="rlengine: %(levelname)s %(message)s")


def encode(reply: dict) -> str:
    """Reply JSON text on one line (json never emits raw newlines).

    NaN/Infinity are written as Python's json does; PROTOCOL.md lets the host accept
    them in replies. Text that cannot be UTF-8 (lone surrogates) falls back to \\u escapes.
    """
    text = json.dumps(reply, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(reply, ensure_ascii=True, separators=(",", ":"))
    return text


def call(request_json: str) -> str:
    """Answer one request given as JSON text; never raises."""
    try:
        try:
            req = json.loads(request_json)
        except (ValueError, TypeError) as exc:
            return encode(error_reply(None, "config", f"request is not valid JSON: {exc}"))
        return encode(dispatch(req))
    except BaseException as exc:  # the contract: the embedding host never sees an exception
        try:
            return encode(error_reply(None, "internal", f"{type(exc).__name__}: {exc}",
                                      traceback.format_exc()))
        except BaseException:
            return ('{"id":null,"ok":false,"error":{"kind":"internal",'
                    '"message":"unencodable reply","traceback":""}}')


def close_all() -> None:
    """Close every model; the host calls this before finalizing the interpreter."""
    from .dispatch import close_all as _close_all
    _close_all()
