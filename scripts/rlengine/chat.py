"""Chat templates: prompts and samples as token ids, the way an instruct model was tuned.

Torch-free. A prompt is a string or a list of messages (`{"role":, "content":}`). With
the chat template on, a prompt is rendered with the tokenizer's template and
`add_generation_prompt=True` (a string prompt is one user message; `system` adds a
system message unless the list starts with one), so its ids are exactly
`tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)`.
A completion is the assistant turn's tokens up to and including the template's
end-of-turn token. With the template off, a message list is its contents joined by
newlines and is tokenized like a string.

A tokenizer used here has `encode_prompt(text)`, `encode_text(text)`, `eos_id`, and,
when it has a chat template, `template = True`, `eot_id` and
`render(messages, generation, tokenize)` (see backend_torch.HFTokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

Message = dict[str, Any]

# An assistant content no template alters; what a template writes after it ends a turn.
PROBE = "rlhost-probe-7f3a"


def _ids(out: Any) -> list[int]:
    """apply_chat_template's ids (a list, or a BatchEncoding with return_dict)."""
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return [int(t) for t in out]


def find_end_of_turn(tok: Any) -> int | None:
    """The token id a HF tokenizer's chat template writes after an assistant message.

    Read by rendering a conversation with a known assistant content and taking the
    first special or added token that follows it (`<|im_end|>` for ChatML,
    `<|eot_id|>` for Llama 3, `</s>` for Mistral). None when the template writes none
    there or cannot render a user/assistant exchange (the caller then uses EOS).
    """
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": PROBE}]
    try:
        text = tok.apply_chat_template(conv, tokenize=False)
    except Exception:  # a template may refuse the probe; EOS is the fallback
        return None
    k = text.rfind(PROBE) if isinstance(text, str) else -1
    if k < 0:
        return None
    after = tok(text[k + len(PROBE):], add_special_tokens=False)["input_ids"]
    special = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}))
    return next((int(t) for t in after if t in special), None)


def plain_text(value: str | list[Message]) -> str:
    """The template-off text of a prompt or completion: a message list's contents
    joined by newlines (one message: its content)."""
    if isinstance(value, str):
        return value
    return "\n".join(m["content"] for m in value)


def with_system(messages: list[Message], system: str | None) -> list[Message]:
    """`messages` with a system message first when `system` is set and none is there."""
    if system is None or (messages and messages[0].get("role") == "system"):
        return list(messages)
    return [{"role": "system", "content": system}] + list(messages)


@dataclass
class Prompt:
    text: str                        # what the model sees, rendered
    ids: list[int]
    messages: list[Message] | None   # the messages rendered (None: a string, template off)


@dataclass
class Sequence:
    prompt: list[int]
    completion: list[int]
    train: list[bool] | None = None  # per completion token; None = every one

    def targets(self) -> int:
        """How many completion tokens are trained on (have log-probs)."""
        return len(self.completion) if self.train is None else sum(self.train)


class Chat:
    """A model's chat settings (load options `chat`, `system`) and what they make of
    prompts and samples. `tok` is the model's tokenizer (see the module docstring)."""

    def __init__(self, tok: Any, chat: bool | None, system: str | None) -> None:
        self.tok = tok
        self.has_template = bool(getattr(tok, "template", False))
        self.on, self.system = self._resolve("load", chat, system, True, None)

    def _resolve(self, op: str, chat: bool | None, system: str | None, default_on: bool,
                 default_system: str | None) -> tuple[bool, str | None]:
        if chat and not self.has_template:
            raise ConfigError(f"{op}: 'chat' is true but this model's tokenizer has no chat "
                              f"template")
        on = (self.has_template and default_on) if chat is None else chat
        if system is not None and not on:
            why = "this model's tokenizer has no chat template" if not self.has_template \
                else "'chat' is false"
            raise ConfigError(f"{op}: 'system' needs the chat template, and {why}")
        if not on:
            return False, None
        return True, system if system is not None else default_system

    def settings(self, op: str, o: dict) -> tuple[bool, str | None]:
        """(template on?, system message) for a request: its own `chat`/`system` over
        the load options. A call's chat=false drops the load's system message."""
        return self._resolve(op, o.get("chat"), o.get("system"), self.on, self.system)

    def _render(self, messages: list[Message], generation: bool, where: str,
                tokenize: bool = True) -> Any:
        try:
            return self.tok.render(messages, generation, tokenize)
        except ConfigError:
            raise
        except Exception as exc:  # jinja2 errors: a template that refuses these roles
            raise ConfigError(f"{where}: the chat template cannot render it: {exc}") from None

    def prompt(self, p: str | list[Message], on: bool, system: str | None, op: str,
               name: str) -> Prompt:
        """A generation prompt (request field `name`): rendered text, ids and the
        messages rendered."""
        where = f"{op}: '{name}'"
        if not on:
            text = plain_text(p)
            return Prompt(text, self.tok.encode_prompt(text), None if isinstance(p, str) else p)
        msgs = with_system([{"role": "user", "content": p}] if isinstance(p, str) else p, system)
        text = self._render(msgs, True, where, tokenize=False)
        return Prompt(text, _ids(self._render(msgs, True, where)), msgs)

    def sequence(self, s: dict, on: bool, system: str | None, op: str,
                 name: str) -> Sequence:
        """The tokens of a text sample (request field `name`): {"prompt", "text"} (each
        a string or messages; "finish": "length" for a cut text) or {"messages"} (a
        conversation trained on its assistant turns)."""
        cut = s.get("finish") == "length"
        where = f"{op}: '{name}'"
        if "messages" in s:
            msgs = s["messages"]
            where = f"{op}: '{name}.messages'"
            if on:
                return self._conversation(with_system(msgs, system), 0, where, cut)
            last = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
            if last != [len(msgs) - 1] or len(msgs) < 2:
                raise ConfigError(f"{where}: without a chat template a conversation must be "
                                  f"prompt messages then one assistant message")
            prompt, text = msgs[:-1], msgs[-1:]
        else:
            prompt, text = s["prompt"], s["text"]
            if on:
                pm = with_system([{"role": "user", "content": prompt}]
                                 if isinstance(prompt, str) else prompt, system)
                cm = [{"role": "assistant", "content": text}] if isinstance(text, str) else text
                return self._conversation(pm + cm, len(pm), where, cut)
        c = self.tok.encode_text(plain_text(text))
        # Text from elsewhere ended naturally unless it says it was cut.
        if not cut and self.tok.eos_id is not None:
            c = c + [self.tok.eos_id]
        return Sequence(self.tok.encode_prompt(plain_text(prompt)), c)

    def _conversation(self, msgs: list[Message], start: int, where: str,
                      cut: bool) -> Sequence:
        """Render msgs once; train on the assistant messages from index `start` on,
        each from after its generation prompt through its end-of-turn token."""
        full = _ids(self._render(msgs, False, where))
        eot = self.tok.eot_id
        spans = []
        turns = [j for j in range(start, len(msgs)) if msgs[j]["role"] == "assistant"]
        if not turns:
            raise ConfigError(f"{where}: no assistant message to train on")
        for j in turns:
            before = _ids(self._render(msgs[:j], True, where)) if j else []
            upto = full if j == len(msgs) - 1 else _ids(self._render(msgs[:j + 1], False, where))
            if full[:len(before)] != before or full[:len(upto)] != upto or \
                    len(upto) <= len(before):
                return self._unaligned(msgs, turns, where, cut)
            a, b = len(before), len(upto)
            span = full[a:b]
            if eot is not None and eot in span:
                b = a + len(span) - span[::-1].index(eot)
            spans.append((a, b))
        if cut:  # a text cut at max_tokens has no end-of-turn
            a, b = spans[-1]
            if eot is not None and b > a and full[b - 1] == eot:
                spans[-1] = (a, b - 1)
        a0, bn = spans[0][0], spans[-1][1]
        if len(spans) == 1:
            return Sequence(full[:a0], full[a0:bn])
        train = [False] * (bn - a0)
        for a, b in spans:
            train[a - a0:b - a0] = [True] * (b - a)
        return Sequence(full[:a0], full[a0:bn], train)

    def _unaligned(self, msgs: list[Message], turns: list[int], where: str,
                   cut: bool) -> Sequence:
        """A template whose earlier turns render differently once a later one follows
        (e.g. one that adds reasoning tags to the last assistant turn only): a single
        final assistant message is then its content's tokens and the end-of-turn after
        the generation prompt, as the model generates it."""
        j = len(msgs) - 1
        if turns != [j] or not isinstance(msgs[j].get("content"), str):
            raise ConfigError(f"{where}: the chat template does not render this conversation "
                              f"turn by turn (an earlier turn changes when a later one "
                              f"follows); give one prompt and one assistant completion")
        c = self.tok.encode_text(msgs[j]["content"])
        end = self.tok.eot_id if self.tok.eot_id is not None else self.tok.eos_id
        if not cut and end is not None:
            c = c + [end]
        return Sequence(_ids(self._render(msgs[:j], True, where)), c)
