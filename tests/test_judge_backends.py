"""Judge backends over real HTTP on loopback: `transformers serve` with the tiny model, and a stub server.

The served tiny model answers gibberish, so every reply is a counted parse failure with its raw text kept.
The stub (a ``http.server`` on 127.0.0.1) fails, delays or answers on request, to exercise the client's
retries, backoff and timeouts, the thread pool's concurrency and the on-disk cache.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import datasets
import pytest

from hfpref.steps.judges.backends import (
    JudgeConfig,
    JudgeRequestError,
    OpenAIBackend,
    ResponseCache,
    TransformersBackend,
    make_backend,
)
from hfpref.steps.judges.features import FeatureDifferenceJudge
from hfpref.steps.judges.parsing import parse_failure_summary
from hfpref.steps.judges.quality import QualityJudge
from tests.judge_server import CANNED, LoopbackServer, chat_completion, send

SERVER_START_TIMEOUT = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def served_model(tiny_models, tmp_path_factory):
    """``transformers serve`` on the tiny policy model, on a free loopback port, for the whole session."""
    model = str(tiny_models["policy"])
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1"}
    command = [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve", model]
    command += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"transformers serve not ready after {SERVER_START_TIMEOUT}s:\n{log_path.read_text()}"
                )
            time.sleep(0.2)
        yield {"base_url": f"http://127.0.0.1:{port}/v1", "model": model}
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _post_chat(base_url: str, payload: dict) -> str:
    """A chat completion through plain urllib: an independent peer of the openai client path."""
    request = urllib.request.Request(
        f"{base_url}/chat/completions",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())["choices"][0]["message"]["content"]


PAIRS = [
    {
        "prompt": "Write a short poem about the sea.",
        "chosen": "The sea is wide and blue.",
        "rejected": "Sea.",
    },
    {"prompt": "List the planets.", "chosen": "Mercury, Venus, Earth, Mars.", "rejected": "Pluto."},
    {"prompt": "Explain why the sky is blue.", "chosen": "Light scatters.", "rejected": "Because."},
]


def test_served_model_replies_are_kept_and_counted_as_parse_failures(served_model, tmp_path):
    judge = {**served_model, "max_new_tokens": 12, "concurrency": 4, "cache_dir": str(tmp_path / "cache")}
    step = QualityJudge(judge=judge)
    judged = step.apply(datasets.Dataset.from_list(PAIRS), batch_size=2)
    assert judged["quality_parse_failures"] == [2, 2, 2]
    assert judged["quality_request_failures"] == [0, 0, 0]
    assert judged["sample_delta"] == [None, None, None]
    summary = parse_failure_summary(judged, "quality")
    assert (
        summary["requests"] == 6 and summary["parse_failures"] == 6 and summary["parse_failure_rate"] == 1.0
    )
    # the raw column holds exactly what the server says to the same request sent by hand
    raw = judged["quality_judge_raw"][1][0]
    prompt = step.judge_prompt(PAIRS[1]["prompt"], PAIRS[1]["chosen"])
    payload = {
        "model": served_model["model"],
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 12,
        "temperature": 0.0,
    }
    assert raw == _post_chat(served_model["base_url"], payload)

    # every reply is in the cache, keyed without the endpoint: a dead endpoint answers the rerun
    assert len(ResponseCache(tmp_path / "cache")) == 6
    dead = {**judge, "base_url": f"http://127.0.0.1:{_free_port()}/v1", "max_retries": 0, "timeout": 2.0}
    again = QualityJudge(judge=dead)(
        {key: [row[key] for row in PAIRS] for key in ("prompt", "chosen", "rejected")}
    )
    assert again["quality_judge_raw"] == judged["quality_judge_raw"]


def test_local_transformers_backend_agrees_with_the_served_model(served_model, tmp_path):
    conversations = [[{"role": "user", "content": f"Rate response {i}: the sea is wide."}] for i in range(3)]
    config = {"model": served_model["model"], "max_new_tokens": 10, "cache_dir": None}
    served = OpenAIBackend(JudgeConfig(**config, base_url=served_model["base_url"])).complete(conversations)
    local = TransformersBackend(JudgeConfig(**config, backend="transformers", batch_size=2)).complete(
        conversations
    )
    assert [c.text for c in local] == [c.text for c in served]
    assert all(c.error is None and c.text is not None for c in served)


def test_feature_judge_on_the_served_model(served_model, tmp_path):
    judge = {**served_model, "max_new_tokens": 12, "cache_dir": str(tmp_path / "cache")}
    out = FeatureDifferenceJudge(judge=judge)(
        {key: [PAIRS[0][key]] for key in ("prompt", "chosen", "rejected")}
    )
    assert out["feature_parse_failures"] == [2]
    assert out["f_rel"] == [None] and out["f_delta"] == [0]
    assert all(isinstance(text, str) for text in out["feature_judge_raw"][0])


def test_pairwise_judge_on_the_served_model(served_model, tmp_path):
    """Both orders of every selected pair go to the real server; its gibberish is counted, never guessed."""
    from hfpref.steps.judges.pairwise import PairwiseJudge

    judge = {**served_model, "max_new_tokens": 8, "concurrency": 2, "cache_dir": str(tmp_path / "cache")}
    judge["on_request_error"] = "missing"
    rows = {
        "prompt": [PAIRS[0]["prompt"], PAIRS[1]["prompt"]],
        "responses": [[PAIRS[0]["chosen"], PAIRS[0]["rejected"], "Waves."], [PAIRS[1]["chosen"], "Pluto."]],
        "pair_indices": [[[0, 1], [0, 2], [1, 2]], [[0, 1]]],
        "selected_for_annotation": [[True, False, True], [True]],
    }
    step = PairwiseJudge(judge=judge)
    out = step(rows)
    assert out["pairwise_request_failures"] == [0, 0]
    assert out["pairwise_parse_failures"] == [4, 2]  # a tiny random model never answers {"winner": ...}
    assert out["pairwise_verdicts"] == [["parse_failure", None, "parse_failure"], ["parse_failure"]]
    assert out["pairwise_preferences"] == [[None, None, None], [None]]
    assert len(ResponseCache(tmp_path / "cache")) == 6  # 3 selected pairs x 2 orders, all received
    # the second order's reply is what the server says to the swapped prompt, sent by hand
    ab, ba = out["pairwise_judge_raw"][0][2]
    for reply, (x, y) in ((ab, ("Sea.", "Waves.")), (ba, ("Waves.", "Sea."))):
        payload = {
            "model": served_model["model"],
            "messages": [{"role": "user", "content": step.judge_prompt(PAIRS[0]["prompt"], x, y)}],
            "max_tokens": 8,
            "temperature": 0.0,
        }
        assert reply == _post_chat(served_model["base_url"], payload)


# ---- a stub OpenAI-compatible server -------------------------------------------------------------------


class StubServer(LoopbackServer):
    """Answers chat completions on 127.0.0.1: the first ``fail_first`` with ``status``, each after ``delay`` s."""

    def __init__(
        self, *, fail_first: int = 0, status: int = 503, retry_after_ms: int | None = 10, delay: float = 0.0
    ):
        super().__init__()
        self.fail_first, self.status, self.retry_after_ms, self.delay = (
            fail_first,
            status,
            retry_after_ms,
            delay,
        )
        self.arrivals: list[float] = []
        self.in_flight = self.peak = 0

    def answer(self, handler, body) -> None:
        with self.lock:
            self.arrivals.append(time.monotonic())
            number = len(self.arrivals)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            time.sleep(self.delay)
            if number <= self.fail_first:
                payload = {"error": {"message": "stub failure", "type": "server_error"}}
                retry = {} if self.retry_after_ms is None else {"retry-after-ms": str(self.retry_after_ms)}
                send(handler, self.status, json.dumps(payload).encode(), retry)
            else:
                content = CANNED if "<response>" in body["messages"][-1]["content"] else "ok"
                send(handler, 200, json.dumps(chat_completion(body["model"], content)).encode())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) before the answer
        finally:
            with self.lock:
                self.in_flight -= 1


def _backend(stub: StubServer, tmp_path, **overrides) -> OpenAIBackend:
    values = {
        "model": "stub-judge",
        "base_url": stub.base_url,
        "cache_dir": str(tmp_path / "cache"),
        **overrides,
    }
    return make_backend(JudgeConfig(**values))


def _conversations(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"question {i}"}] for i in range(n)]


def test_retries_until_the_server_answers(tmp_path):
    with StubServer(fail_first=2) as stub:
        [completion] = _backend(stub, tmp_path, max_retries=2).complete(_conversations(1))
        assert completion.text == "ok" and completion.error is None
        assert len(stub.arrivals) == 3
    with StubServer(fail_first=2) as stub:
        [completion] = _backend(stub, tmp_path / "other", max_retries=1).complete(_conversations(1))
        assert completion.text is None and "503" in completion.error
        assert len(stub.arrivals) == 2


def test_backoff_grows_exponentially_without_retry_after(tmp_path):
    with StubServer(fail_first=2, retry_after_ms=None) as stub:
        [completion] = _backend(stub, tmp_path, max_retries=2).complete(_conversations(1))
    assert completion.text == "ok"
    first_wait, second_wait = (b - a for a, b in zip(stub.arrivals, stub.arrivals[1:], strict=False))
    # the client waits base * 2^k less up to 25% jitter: about [0.375, 0.5] s, then [0.75, 1.0] s
    assert 0.3 < first_wait < second_wait
    assert second_wait > 0.7


def test_timeouts_are_retried_then_reported(tmp_path):
    with StubServer(delay=1.0) as stub:
        [completion] = _backend(stub, tmp_path, max_retries=1, timeout=0.2).complete(_conversations(1))
        assert completion.text is None and "Timeout" in completion.error
        assert len(stub.arrivals) == 2


@pytest.mark.parametrize("concurrency", [1, 4])
def test_requests_run_concurrently(tmp_path, concurrency):
    with StubServer(delay=0.15) as stub:
        completions = _backend(stub, tmp_path, concurrency=concurrency).complete(_conversations(8))
    assert [c.text for c in completions] == ["ok"] * 8
    assert stub.peak == concurrency


def test_cache_answers_repeats_and_is_endpoint_independent(tmp_path):
    with StubServer() as stub:
        backend = _backend(stub, tmp_path)
        backend.complete(_conversations(3) + _conversations(3))  # duplicates are sent once
        assert len(stub.arrivals) == 3
        assert backend.stats == {"asked": 6, "cache_hits": 0, "sent": 3, "failed": 0}
    with StubServer() as other:
        backend = _backend(other, tmp_path)
        completions = backend.complete(_conversations(4))
        assert len(other.arrivals) == 1  # only question 3 is new
        assert [c.cached for c in completions] == [True, True, True, False]
        # a different sampling parameter is a different request
        _backend(other, tmp_path, max_new_tokens=7).complete(_conversations(1))
        assert len(other.arrivals) == 2


def test_failing_endpoint_stops_the_step_or_counts(tmp_path):
    batch = {
        "prompt": ["q"] * 5,
        "chosen": [f"a{i}" for i in range(5)],
        "rejected": [f"b{i}" for i in range(5)],
    }
    with StubServer(fail_first=1000, status=400) as stub:  # 400 is not retried
        judge = {"model": "stub-judge", "base_url": stub.base_url, "cache_dir": None, "concurrency": 1}
        with pytest.raises(JudgeRequestError, match=r"batch row 0 failed .*400"):
            QualityJudge(judge=judge)(batch)
        assert len(stub.arrivals) < 10  # queued requests were dropped after the first failure
        sent = len(stub.arrivals)
        out = QualityJudge(judge={**judge, "on_request_error": "missing"})(batch)
        assert out["quality_request_failures"] == [2] * 5
        assert out["quality_parse_failures"] == [0] * 5
        assert len(stub.arrivals) == sent + 10


def test_quality_step_through_the_stub_parses_real_http_replies(tmp_path):
    batch = {"prompt": ["q", "r"], "chosen": ["a", "b"], "rejected": ["c", "d"]}
    with StubServer(fail_first=1) as stub:
        judge = {"model": "stub-judge", "base_url": stub.base_url, "cache_dir": None, "concurrency": 2}
        out = QualityJudge(judge=judge)(batch)
    assert out["quality_chosen"][0] == {
        "correctness": 7.0, "logical_soundness": 6.0, "clarity": 8.0, "completeness": 7.0, "overall": 7.0
    }  # fmt: skip
    assert out["sample_delta"] == [0.0, 0.0]
    assert out["quality_parse_failures"] == [0, 0]
    assert len(stub.arrivals) == 5  # one failure retried
