"""The LLM judge: prompt, reply parsing, and both backends against a real local HTTP server and
a tiny random model."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from explorl.errors import UserError
from explorl.rewards.judge import HFJudge, HTTPJudge, JudgeItem, judge_prompt, parse_verdicts

KEY = "sk-test-secret-0123456789"


def word_rule(request: dict) -> list[int]:
    """Grade like a judge would: criterion ``Mentions <word>`` is met when the response has it."""
    user = request["messages"][-1]["content"]
    response = user.split("## Response\n", 1)[1].split("\n\n## Criteria", 1)[0]
    words = re.findall(r"^\d+\. \(weight [^)]*\) Mentions (\w+)", user, flags=re.M)
    return [int(w in response) for w in words]


def chat_reply(content: str) -> tuple[int, str]:
    return 200, json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})


def correct(request: dict, count: int) -> tuple[int, str]:
    return chat_reply(json.dumps({"verdicts": word_rule(request)}))


class JudgeServer:
    """A programmable OpenAI-style server: ``behaviour(request, count) -> (status, body)``,
    with ``delay`` seconds before answering; records requests and the peak number in flight."""

    def __init__(self):
        self.behaviour = correct
        self.delay = 0.0
        self.requests: list[dict] = []
        self.auth: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.handle_error = lambda request, address: None  # clients that gave up
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,),
                                       daemon=True)  # short poll: quick shutdown

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.auth.append(self.headers.get("Authorization", ""))
                    count = len(server.requests)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if server.delay:
                        server.stop.wait(server.delay)
                    status, text = (404, "no such path") if self.path != "/v1/chat/completions" \
                        else server.behaviour(body, count)
                    data = text.encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """urllib honours *_proxy variables; the local server must be reached directly."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture
def server():
    s = JudgeServer()
    s.thread.start()
    yield s
    s.stop.set()
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def make_judge(server, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", KEY)

    def make(**kwargs):
        options = dict(model="judge-model", api_key_env="JUDGE_TEST_KEY", timeout=2.0,
                       retries=2, backoff=0.01)
        options.update(kwargs)
        return HTTPJudge(server.url, **options)

    return make


def item(response: str, words=("alpha", "beta", "gamma")) -> JudgeItem:
    return JudgeItem("Write about Greek letters.", response,
                     [(f"Mentions {w}", float(i + 1)) for i, w in enumerate(words)])


# ---------------------------------------------------------------- prompt and parsing


def test_prompt_numbers_criteria_with_weights():
    messages = judge_prompt(JudgeItem("Say hi.", "hello there",
                                      [("Is polite", 1.0), ("Mentions the dosage", 2.0),
                                       ("Avoids jargon", 0.5)]))
    assert [m["role"] for m in messages] == ["system", "user"]
    system, user = messages[0]["content"], messages[1]["content"]
    assert '{"verdicts"' in system and "1" in system and "0" in system
    assert "Say hi." in user and "hello there" in user
    assert "1. (weight 1) Is polite" in user
    assert "2. (weight 2) Mentions the dosage" in user
    assert "3. (weight 0.5) Avoids jargon" in user
    assert "exactly 3 verdicts" in user


@pytest.mark.parametrize("text, n, expected", [
    ('{"verdicts": [1, 0, 1]}', 3, [True, False, True]),
    ('{"verdicts": [true, false]}', 2, [True, False]),
    ('  {"verdicts":[0]}\n', 1, [False]),
    ('```json\n{"verdicts": [1, 1]}\n```', 2, [True, True]),
    ('```\n{"verdicts": [0, 1]}\n```', 2, [False, True]),
    ('Sure! Here is my grading:\n{"verdicts": [1, 0]}\nHope this helps.', 2, [True, False]),
    ('{"reasoning": "first is met", "verdicts": [1, 0]}', 2, [True, False]),
    ('draft {"verdicts": [0, 0]} final {"verdicts": [1, 1]}', 2, [True, True]),
    ('{"note": "a {brace} inside"} then {"verdicts": [1]}', 1, [True]),
    ("[1, 0, 1]", 3, [True, False, True]),
    ("```json\n[0, 1]\n```", 2, [False, True]),
    ("[true]", 1, [True]),
    ('{"verdicts": []}', 0, []),
])
def test_parse_accepts(text, n, expected):
    assert parse_verdicts(text, n) == expected


@pytest.mark.parametrize("text, n", [
    ("", 1),
    ("   ", 1),
    ("yes", 1),
    ("1 0 1", 3),
    ("1", 1),
    ("the verdicts are [1, 0]", 2),  # a bare list only counts as the whole reply
    ("Criterion [1] is met.", 1),
    ('{"verdicts": [1, 0]}', 3),  # too few
    ('{"verdicts": [1, 0, 1, 1]}', 3),  # too many
    ("[1, 0]", 3),
    ('{"verdicts": [1, 2]}', 2),
    ('{"verdicts": [1, -1]}', 2),
    ('{"verdicts": [1.0, 0.0]}', 2),
    ('{"verdicts": ["1", "0"]}', 2),
    ('{"verdicts": [1, null]}', 2),
    ('{"verdicts": [[1], [0]]}', 2),
    ('{"verdicts": "1,0"}', 2),
    ('{"verdicts": 1}', 1),
    ('{"verdicts": null}', 1),
    ('{"verdict": [1]}', 1),
    ('{"result": {"verdicts": [1]}}', 1),
    ('{"verdicts": [1, 0', 2),  # truncated
    ("{'verdicts': [1, 0]}", 2),  # not JSON
    ('{"verdicts": [1, 0]} then {"verdicts": [1]}', 2),  # the last answer is the wrong size
    ("{{{{", 1),
    ("}{", 1),
    ("```json\n```", 1),
    ("null", 1),
    ('"[1]"', 1),
])
def test_parse_rejects(text, n):
    assert parse_verdicts(text, n) is None


def test_parse_rejects_non_text():
    assert parse_verdicts(None, 1) is None  # type: ignore[arg-type]


# ---------------------------------------------------------------- HTTP judge


def test_http_grades_items_in_order(server, make_judge):
    judge = make_judge()
    items = [item("alpha and gamma"), item("nothing here"), item("beta", words=("beta",))]
    assert judge.verdicts(items) == [[True, False, True], [False, False, False], [True]]
    assert server.auth == [f"Bearer {KEY}"] * 3
    # items are graded concurrently: the server sees them in any order
    first = next(r for r in server.requests if "alpha and gamma" in r["messages"][-1]["content"])
    assert first["model"] == "judge-model" and first["temperature"] == 0.0
    user = first["messages"][-1]["content"]
    assert "(weight 1) Mentions alpha" in user and "(weight 3) Mentions gamma" in user
    assert judge.stats == {"requests": 3, "failures": 0, "unparsable": 0, "retries": 0}
    assert judge.verdicts([]) == []


def test_http_item_without_criteria_sends_nothing(server, make_judge):
    assert make_judge().verdicts([JudgeItem("x", "y", [])]) == [[]]
    assert server.requests == []


def test_http_fenced_reply(server, make_judge):
    server.behaviour = lambda req, count: chat_reply(
        "```json\n" + json.dumps({"verdicts": word_rule(req)}) + "\n```")
    assert make_judge().verdicts([item("beta")]) == [[False, True, False]]


def test_http_retries_after_500(server, make_judge):
    server.behaviour = lambda req, count: (500, "oops") if count == 1 else correct(req, count)
    judge = make_judge()
    assert judge.verdicts([item("alpha")]) == [[True, False, False]]
    assert judge.stats == {"requests": 2, "failures": 0, "unparsable": 0, "retries": 1}


def test_http_retries_after_429(server, make_judge):
    server.behaviour = lambda req, count: (429, "slow down") if count < 3 else correct(req, count)
    judge = make_judge()
    assert judge.verdicts([item("gamma")]) == [[False, False, True]]
    assert judge.stats["retries"] == 2


@pytest.mark.parametrize("policy, expected", [("mask", None), ("unmet", [False] * 3)])
def test_http_always_500(server, make_judge, policy, expected):
    server.behaviour = lambda req, count: (500, "down")
    judge = make_judge(retries=2, on_failure=policy)
    assert judge.verdicts([item("alpha beta gamma")]) == [expected]
    assert judge.stats == {"requests": 3, "failures": 1, "unparsable": 0, "retries": 2}
    assert "500" in judge.last_error


@pytest.mark.parametrize("policy, expected", [("mask", None), ("unmet", [False] * 3)])
def test_http_timeout_is_retried_then_fails(server, make_judge, policy, expected):
    server.delay = 1.0
    judge = make_judge(timeout=0.3, retries=1, on_failure=policy)
    start = time.monotonic()
    assert judge.verdicts([item("alpha")]) == [expected]
    assert time.monotonic() - start < 1.5
    assert judge.stats == {"requests": 2, "failures": 1, "unparsable": 0, "retries": 1}
    assert len(server.requests) == 2


def test_http_401_is_not_retried(server, make_judge):
    server.behaviour = lambda req, count: (401, json.dumps({"error": "bad key " + KEY}))
    judge = make_judge(retries=3)
    assert judge.verdicts([item("alpha")]) == [None]
    assert judge.stats == {"requests": 1, "failures": 1, "unparsable": 0, "retries": 0}
    assert "401" in judge.last_error and KEY not in judge.last_error


@pytest.mark.parametrize("reply", [
    chat_reply("I think the response is fine."),
    chat_reply(json.dumps({"verdicts": [1, 0]})),  # two verdicts for three criteria
    (200, "not json at all"),
    (200, json.dumps({"choices": []})),
    (200, json.dumps({"choices": [{"message": {"content": None}}]})),
])
@pytest.mark.parametrize("policy, expected", [("mask", None), ("unmet", [False] * 3)])
def test_http_unusable_reply(server, make_judge, reply, policy, expected):
    server.behaviour = lambda req, count: reply
    judge = make_judge(on_failure=policy)
    assert judge.verdicts([item("alpha beta")]) == [expected]
    assert judge.stats == {"requests": 1, "failures": 1, "unparsable": 1, "retries": 0}


def test_http_connection_refused(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    monkeypatch.setenv("JUDGE_TEST_KEY", KEY)
    judge = HTTPJudge(f"http://127.0.0.1:{port}", "m", api_key_env="JUDGE_TEST_KEY",
                      retries=1, backoff=0.01, on_failure="unmet")
    assert judge.verdicts([item("alpha")]) == [[False, False, False]]
    assert judge.stats == {"requests": 2, "failures": 1, "unparsable": 0, "retries": 1}
    assert KEY not in judge.last_error


def test_http_concurrency_limit(server, make_judge):
    server.delay = 0.15
    judge = make_judge(max_concurrency=2)
    items = [item("alpha"), item("beta"), item("gamma"), item(""), item("alpha beta"),
             item("gamma alpha")]
    results = judge.verdicts(items)
    assert results[0] == [True, False, False] and results[5] == [True, False, True]
    assert server.max_in_flight == 2
    assert judge.stats["requests"] == 6


def test_http_key_stays_secret(server, make_judge):
    judge = make_judge()
    assert KEY not in repr(judge) and KEY not in str(judge) and "JUDGE_TEST_KEY" in repr(judge)
    assert KEY not in json.dumps(judge.stats)
    for bad in (dict(on_failure="ignore"), dict(max_concurrency=0), dict(timeout=0)):
        with pytest.raises(UserError) as error:
            make_judge(**bad)
        assert KEY not in str(error.value)


@pytest.mark.parametrize("value", [None, "", "   "])
def test_http_missing_key(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    else:
        monkeypatch.setenv("JUDGE_TEST_KEY", value)
    with pytest.raises(UserError) as error:
        HTTPJudge("https://api.example.com/v1", "m", api_key_env="JUDGE_TEST_KEY")
    message = str(error.value)
    assert message == "judge.api_key_env: environment variable JUDGE_TEST_KEY is not set"
    assert "\n" not in message


@pytest.mark.parametrize("url", ["", "localhost:8000/v1", "ftp://host/v1", "http://",
                                 "api.openai.com/v1", "file:///etc/passwd"])
def test_http_bad_url(monkeypatch, url):
    monkeypatch.setenv("JUDGE_TEST_KEY", KEY)
    with pytest.raises(UserError, match="^judge\\.url: ") as error:
        HTTPJudge(url, "m", api_key_env="JUDGE_TEST_KEY")
    assert KEY not in str(error.value)


def test_http_endpoint_from_base_url(monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", KEY)
    judge = HTTPJudge("https://api.example.com/v1/", "m", api_key_env="JUDGE_TEST_KEY")
    assert judge.endpoint == "https://api.example.com/v1/chat/completions"


# ---------------------------------------------------------------- local HF judge


@pytest.fixture(scope="module")
def tiny():
    from transformers import Qwen2ForCausalLM

    from explorl.models.tiny import char_tokenizer, tiny_config

    tokenizer = char_tokenizer()
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(tiny_config(len(tokenizer), hidden=32, layers=1))
    return model, tokenizer


def scripted_generate(tokenizer, reply: str, seen: list[str]):
    """A stand-in for ``model.generate`` that answers ``reply`` to every prompt."""
    answer = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    def generate(input_ids, attention_mask, **kwargs):
        seen.extend(tokenizer.decode(row[mask.bool()]) for row, mask in
                    zip(input_ids, attention_mask))
        tail = torch.tensor([answer] * input_ids.shape[0], dtype=input_ids.dtype)
        return torch.cat([input_ids, tail], dim=1)

    return generate


@pytest.mark.parametrize("policy, expected", [("mask", None), ("unmet", [False, False])])
def test_hf_random_model_gets_failure_policy(tiny, policy, expected):
    model, tokenizer = tiny
    judge = HFJudge(model, tokenizer, max_new_tokens=8, on_failure=policy)
    items = [item("alpha", words=("alpha", "beta")), item("beta", words=("alpha", "beta"))]
    assert judge.verdicts(items) == [expected, expected]
    assert judge.stats["failures"] == 2 and judge.stats["unparsable"] == 2


def test_hf_parses_a_valid_reply(tiny, monkeypatch):
    model, tokenizer = tiny
    seen: list[str] = []
    monkeypatch.setattr(model, "generate",
                        scripted_generate(tokenizer, '{"verdicts": [1, 0]}', seen))
    judge = HFJudge(model, tokenizer, batch_size=2)
    items = [item("alpha", words=("alpha", "beta")), item("x", words=("a", "b")),
             item("y", words=("c", "d")), JudgeItem("i", "r", [])]
    assert judge.verdicts(items) == [[True, False]] * 3 + [[]]
    assert len(seen) == 3  # two batches; the item without criteria is not generated for
    assert "2. (weight 2) Mentions beta" in seen[0] and seen[0].endswith("assistant:")
    assert judge.stats["failures"] == 0


def test_hf_uses_chat_template(tiny, monkeypatch):
    model, _ = tiny
    tokenizer = char_tokenizer_with_template()
    seen: list[str] = []
    monkeypatch.setattr(model, "generate", scripted_generate(tokenizer, "[1]", seen))
    judge = HFJudge(model, tokenizer)
    assert judge.verdicts([item("alpha", words=("alpha",))]) == [[True]]
    assert seen[0].startswith("<system>") and seen[0].endswith("<assistant>")


def char_tokenizer_with_template():
    from explorl.models.tiny import char_tokenizer

    tokenizer = char_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n"
                               "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    return tokenizer


def test_hf_generation_error_gets_failure_policy(tiny, monkeypatch):
    model, tokenizer = tiny

    def broken(**kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model, "generate", broken)
    model.train()
    judge = HFJudge(model, tokenizer, on_failure="unmet")
    assert judge.verdicts([item("alpha", words=("alpha",))]) == [[False]]
    assert judge.stats["failures"] == 1 and judge.stats["unparsable"] == 0
    assert "out of memory" in judge.last_error
    assert model.training  # the mode it had before judging


def test_bad_policy_is_a_user_error(tiny):
    model, tokenizer = tiny
    with pytest.raises(UserError, match="judge.on_failure"):
        HFJudge(model, tokenizer, on_failure="skip")


def test_training_with_a_judge_never_writes_the_key(server, tmp_path, monkeypatch):
    """A run whose rubric is graded by the judge over HTTP: the judge is asked, rewards come back,
    and the key appears in no file the run wrote (config, metrics, checkpoints, summary)."""
    from explorl import TrainConfig, Trainer
    from explorl.config import JudgeConfig

    monkeypatch.setenv("JUDGE_TEST_KEY", KEY)
    rubric = [{"description": "Mentions 1", "check": "judge", "weight": 2},
              {"description": "short", "check": "max_chars", "args": {"n": 8}}]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "rubric": rubric}) + "\n"
                            for i in range(8)))
    out = tmp_path / "run"
    judge = JudgeConfig(url=server.url, model="judge-model", api_key_env="JUDGE_TEST_KEY")
    cfg = TrainConfig(output_dir=str(out), dataset=str(data), max_steps=2, prompts_per_step=2,
                      num_generations=4, judge=judge, save_every=1, progress=False,
                      log_completions_every=1)
    Trainer(cfg).train()
    assert len(server.requests) == 16 and set(server.auth) == {f"Bearer {KEY}"}
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["rewards/failed"] == 0 and r["reward/mean"] is not None for r in rows)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) > 10
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path


def test_self_distillation_takes_its_lists_from_the_judge(server, tmp_path, monkeypatch):
    """HeRL's teacher prompts are built from the judge's verdicts: a failed sample's hindsight
    names the criterion the judge said it missed, and the run trains on it."""
    from explorl import TrainConfig, Trainer
    from explorl.batch import TrainBatch
    from explorl.config import HeRLConfig, JudgeConfig
    from explorl.exploration.distill import distillation_targets

    monkeypatch.setenv("JUDGE_TEST_KEY", KEY)
    rubric = [{"description": "Mentions 1", "check": "judge"},
              {"description": "short", "check": "max_chars", "args": {"n": 8}}]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "rubric": rubric}) + "\n"
                            for i in range(8)))
    judge = JudgeConfig(url=server.url, model="judge-model", api_key_env="JUDGE_TEST_KEY")
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), dataset=str(data), method="herl",
                      reward_funcs=["rubric"], rubric_reward="strict", max_steps=2,
                      prompts_per_step=2, num_generations=4, judge=judge, progress=False,
                      plots=False, herl=HeRLConfig(distill_coef=1.0))
    trainer = Trainer(cfg)
    batch = trainer._collect(1, [0, 1], [4, 4], 1.0)
    prompts = []
    trainer.hindsight.prompt = lambda row, draft, verdicts: prompts.append(
        (draft, verdicts)) or trainer.codec.encode(row["prompt"])
    taught, metrics = distillation_targets(trainer.hindsight, batch, TrainBatch.of(batch),
                                           trainer.guide_logprobs)
    assert metrics["herl/distilled"] == len(prompts) > 0
    judged = [g.verdicts for g in batch.rewards.grades]
    assert all(v in judged and not all(v) for _, v in prompts)  # the judge's own verdicts
    summary = Trainer(cfg).train()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 2 and all(r["herl/distilled"] > 0 for r in rows)
