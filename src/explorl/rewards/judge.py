"""An LLM judge that grades a response against rubric criteria, one 0/1 verdict per criterion.

The judge answers JSON ``{"verdicts": [1, 0, ...]}`` in criterion order. Two backends: an
OpenAI-compatible chat endpoint over HTTP (``HTTPJudge``) and a local Hugging Face causal LM
(``HFJudge``). When the judge gives no usable answer for an item (HTTP errors after retries,
timeouts, unparsable replies, the wrong number of verdicts), the ``on_failure`` policy decides:
``"mask"`` returns ``None`` so the caller masks that sample's reward as unknown, ``"unmet"``
counts every criterion of the item as not met.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlparse

from explorl.errors import UserError

FAILURE_POLICIES = ("mask", "unmet")

SYSTEM_PROMPT = (
    "You are a strict, impartial grader. You receive an instruction, a response to it, and a "
    "numbered list of criteria. Judge each criterion independently of the others: 1 if the "
    "response meets it, 0 if it does not. A weight says how much a criterion matters; it does "
    "not change how you judge it. Answer only with a JSON object of the form "
    '{"verdicts": [0 or 1, ...]} holding one verdict per criterion, in criterion order, '
    "with no other text."
)


@dataclass
class JudgeItem:
    instruction: str  # the prompt the policy answered (plain text)
    response: str  # the policy's answer
    criteria: list[tuple[str, float]]  # (description, weight)


class Judge(Protocol):
    def verdicts(self, items: list[JudgeItem]) -> list[list[bool] | None]:
        """Per item, one bool per criterion, or ``None`` where it failed under ``"mask"``."""
        ...


def judge_prompt(item: JudgeItem) -> list[dict]:
    """Chat messages (system, user) asking the judge for one 0/1 verdict per criterion."""
    criteria = "\n".join(
        f"{i}. (weight {weight:g}) {text}" for i, (text, weight) in enumerate(item.criteria, 1)
    )
    user = (
        f"## Instruction\n{item.instruction}\n\n"
        f"## Response\n{item.response}\n\n"
        f"## Criteria\n{criteria}\n\n"
        f'Answer with {{"verdicts": [...]}} holding exactly {len(item.criteria)} verdicts.'
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _verdict_list(value, n: int) -> list[bool] | None:
    if not isinstance(value, list) or len(value) != n:
        return None
    # bool is a subclass of int, so 0/1 and False/True both pass; 1.0, "1" and 2 do not
    if not all(isinstance(v, int) and v in (0, 1) for v in value):
        return None
    return [bool(v) for v in value]


def _strip_fence(text: str) -> str:
    text = text.strip()
    if text.startswith("```") and text.endswith("```") and len(text) >= 6:
        text = text[3:-3]
        first_line, _, rest = text.partition("\n")
        if first_line.strip().isalpha():  # a language tag such as ```json
            text = rest
    return text.strip()


def parse_verdicts(text: str, n: int) -> list[bool] | None:
    """The ``n`` verdicts in a judge's reply, or ``None`` when there is no usable answer.

    Accepts a JSON object with a ``"verdicts"`` list of 0/1 or booleans anywhere in the text
    (code fences and prose around it are ignored; with several, the last one wins, as a
    reasoning judge states its final answer last). A bare JSON list is accepted only when it
    is the whole reply, possibly inside a code fence, so that a stray ``[1]`` in prose is not
    read as a verdict. Exactly ``n`` entries are required.
    """
    if not isinstance(text, str):
        return None
    decoder = json.JSONDecoder()
    found = None
    pos = text.find("{")
    while pos != -1:
        try:
            value, end = decoder.raw_decode(text, pos)
        except ValueError:
            pos = text.find("{", pos + 1)
            continue
        if isinstance(value, dict) and "verdicts" in value:
            found = value["verdicts"]
        pos = text.find("{", end)  # skip nested objects: only top-level ones count
    if found is not None:
        return _verdict_list(found, n)
    try:
        value = json.loads(_strip_fence(text))
    except ValueError:
        return None
    return _verdict_list(value, n)


class _Stats:
    """Thread-safe counters behind ``judge.stats``."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts = {"requests": 0, "failures": 0, "unparsable": 0, "retries": 0}

    def add(self, key: str, amount: int = 1) -> None:
        with self._lock:
            self.counts[key] += amount


def _check_policy(on_failure: str) -> None:
    if on_failure not in FAILURE_POLICIES:
        raise UserError(f"judge.on_failure: {on_failure!r} is not one of "
                        f"{', '.join(FAILURE_POLICIES)}")


def _outcome(parsed: list[bool] | None, n: int, on_failure: str) -> list[bool] | None:
    if parsed is not None or on_failure == "mask":
        return parsed
    return [False] * n


class _CountingJudge:
    """What both judges share: the failure policy, their counters and the latest error."""

    def __init__(self, on_failure: str):
        _check_policy(on_failure)
        self.on_failure = on_failure
        self._stats = _Stats()
        self.last_error = ""

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._stats.counts)


class HTTPJudge(_CountingJudge):
    """A judge behind an OpenAI-compatible ``{base_url}/chat/completions`` endpoint.

    The API key is read from the environment variable ``api_key_env`` (default
    ``OPENAI_API_KEY``) once, here; it never appears in errors, ``repr`` or ``stats``. Each
    request waits at most ``timeout`` seconds (default 30) per socket operation and is retried
    up to ``retries`` times (default 2) after a connection error, timeout, 429 or 5xx, waiting
    ``backoff * 2**attempt`` seconds (default 0.5) between tries; other 4xx are final. Items are
    graded by ``max_concurrency`` threads (default 4) at ``temperature`` (default 0.0).
    ``on_failure`` is ``"mask"`` (default) or ``"unmet"``.

    ``stats`` counts ``requests`` (HTTP attempts), ``retries``, ``failures`` (items without a
    usable answer) and ``unparsable`` (items whose reply held no valid verdicts); ``last_error``
    is a one-line description of the latest failure.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 30.0, retries: int = 2, max_concurrency: int = 4,
                 temperature: float = 0.0, on_failure: str = "mask", backoff: float = 0.5):
        url = urlparse(base_url or "")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise UserError(f"judge.url: {base_url!r} is not an http:// or https:// URL")
        super().__init__(on_failure)
        if timeout <= 0 or retries < 0 or max_concurrency < 1 or backoff < 0:
            raise UserError("judge: timeout must be > 0, retries >= 0, max_concurrency >= 1 "
                            "and backoff >= 0")
        key = os.environ.get(api_key_env, "").strip()
        if not key:
            raise UserError(f"judge.api_key_env: environment variable {api_key_env} is not set")
        self._key = key
        self.endpoint = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.retries = retries
        self.max_concurrency = max_concurrency
        self.temperature = temperature
        self.backoff = backoff

    def __repr__(self) -> str:
        return (f"HTTPJudge(endpoint={self.endpoint!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r}, on_failure={self.on_failure!r})")

    def verdicts(self, items: list[JudgeItem]) -> list[list[bool] | None]:
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items))) as pool:
            return list(pool.map(self._grade, items))

    def _grade(self, item: JudgeItem) -> list[bool] | None:
        n = len(item.criteria)
        if n == 0:
            return []
        reply = self._complete(judge_prompt(item))
        parsed = None if reply is None else parse_verdicts(reply, n)
        if parsed is None:
            self._stats.add("failures")
            if reply is not None:
                self._stats.add("unparsable")
                self.last_error = f"unparsable reply ({len(reply)} chars) for {n} criteria"
        return _outcome(parsed, n, self.on_failure)

    def _complete(self, messages: list[dict]) -> str | None:
        """The reply's text, or ``None`` after a final HTTP failure (``""`` if the body is
        not a chat completion, so it counts as unparsable)."""
        body = json.dumps({"model": self.model, "messages": messages,
                           "temperature": self.temperature}).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self._key}"}
        for attempt in range(self.retries + 1):
            if attempt:
                self._stats.add("retries")
                time.sleep(self.backoff * 2 ** (attempt - 1))
            self._stats.add("requests")
            request = urllib.request.Request(self.endpoint, body, headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as e:
                e.close()
                self.last_error = f"HTTP {e.code} from {self.endpoint}"
                if e.code == 429 or e.code >= 500:
                    continue
                return None
            except (OSError, http.client.HTTPException) as e:
                # URLError, timeouts and dropped connections are all OSError; the message
                # names only the error type, never the request (which holds the key)
                self.last_error = f"{type(e).__name__} from {self.endpoint}"
                continue
            try:
                content = json.loads(raw)["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                return ""
            return content if isinstance(content, str) else ""
        return None


class HFJudge(_CountingJudge):
    """A judge run locally with an already-loaded Hugging Face causal LM and its tokenizer.

    Renders ``judge_prompt`` with the tokenizer's chat template when it has one (else a plain
    ``role: content`` text), decodes greedily for at most ``max_new_tokens`` (default 64) in
    batches of ``batch_size`` (default 8), and parses like ``HTTPJudge``. ``on_failure`` is
    ``"mask"`` (default) or ``"unmet"``; a generation error fails the whole batch.
    """

    def __init__(self, model, tokenizer, max_new_tokens: int = 64, on_failure: str = "mask",
                 batch_size: int = 8):
        super().__init__(on_failure)
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
            raise UserError("judge: the judge tokenizer has neither a pad nor an EOS token")
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = max(1, batch_size)

    def __repr__(self) -> str:
        name = getattr(getattr(self.model, "config", None), "_name_or_path", "") or "model"
        return f"HFJudge(model={name!r}, on_failure={self.on_failure!r})"

    def render(self, messages: list[dict]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
        turns = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n\n".join(turns + ["assistant:"])

    def verdicts(self, items: list[JudgeItem]) -> list[list[bool] | None]:
        results: list[list[bool] | None] = [[] for _ in items]
        todo = [i for i, item in enumerate(items) if item.criteria]
        for s in range(0, len(todo), self.batch_size):
            batch = todo[s:s + self.batch_size]
            replies = self._generate([self.render(judge_prompt(items[i])) for i in batch])
            for i, reply in zip(batch, replies):
                n = len(items[i].criteria)
                parsed = None if reply is None else parse_verdicts(reply, n)
                if parsed is None:
                    self._stats.add("failures")
                    self._stats.add("unparsable", int(reply is not None))
                results[i] = _outcome(parsed, n, self.on_failure)
        return results

    def _generate(self, texts: list[str]) -> list[str | None]:
        # imported here so that the HTTP judge does not load torch and transformers
        import torch
        from transformers import GenerationConfig

        from explorl.rollout.engine import left_pad

        self._stats.add("requests", len(texts))
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        prompt_ids, prompt_mask = left_pad(ids, pad)
        device = getattr(self.model, "device", "cpu")
        config = GenerationConfig(do_sample=False, max_new_tokens=self.max_new_tokens,
                                  eos_token_id=tok.eos_token_id, pad_token_id=pad)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                out = self.model.generate(input_ids=prompt_ids.to(device),
                                          attention_mask=prompt_mask.to(device),
                                          generation_config=config)
        except Exception as e:  # noqa: BLE001 - a judge failure is scored by the policy
            self.last_error = f"generation failed: {type(e).__name__}: {e}"
            return [None] * len(texts)
        finally:
            self.model.train(was_training)
        rows = out[:, prompt_ids.shape[1]:].tolist()
        return [tok.decode(row, skip_special_tokens=True) for row in rows]


def build_judge(cfg, rows: list[dict]):
    """The judge a :class:`explorl.config.JudgeConfig` describes, when ``rows`` have a criterion
    checked by ``judge``; else ``None``."""
    if not any(c.judged for r in rows for c in r.get("rubric") or []):
        return None
    if cfg.local_model:
        from explorl.models.policy import load_model, load_tokenizer

        return HFJudge(load_model(cfg.local_model).eval(), load_tokenizer(cfg.local_model),
                       on_failure=cfg.on_failure)
    if not cfg.url or not cfg.model:
        raise UserError("judge.url: the rubric has criteria checked by 'judge'; set judge.url "
                        "and judge.model (or judge.local_model)")
    return HTTPJudge(cfg.url, cfg.model, cfg.api_key_env, cfg.timeout, cfg.retries,
                     cfg.concurrency, on_failure=cfg.on_failure)
