"""Judge failures are never cached as results (issue 13, item 8).

A loopback server (stdlib ``http.server`` on 127.0.0.1, port 0) answers each prompt in one way: a good
reply, HTTP 500, HTTP 429 with Retry-After, a reply slower than the client's timeout, a 200 with an invalid
JSON body, a 200 with ``content: null``, or a 200 with an HTML page. With ``on_request_error: missing`` the
first run counts and warns about every failure; after the server is switched to good answers, a rerun over
the same (disk-backed) dataset sends exactly the requests that failed, and a third run sends none.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections import Counter

import datasets
import pytest

from hfpref.core.step import Step
from hfpref.pipeline.engines.local import map_step
from hfpref.steps.judges.backends import (
    Completion,
    JudgeConfig,
    JudgeFailureWarning,
    OpenAIBackend,
    ResponseCache,
    completion_of,
)
from hfpref.steps.judges.quality import QualityJudge
from tests.judge_server import CANNED, LoopbackServer, chat_completion, send

MODES = ["good", "500", "429", "timeout", "garbage", "null", "html"]
TIMEOUT = 1.0  # the client's, per attempt (long enough that a loaded machine still sends the request); the server's slow answers take longer
PROMPT_RE = re.compile(r"PROMPT-(\d+)")


class FlakyServer(LoopbackServer):
    """Answers chat completions by the mode of the prompt number in the message; ``healthy`` overrides."""

    def __init__(self, modes: list[str]) -> None:
        super().__init__()
        self.modes, self.healthy = modes, False
        self.seen: list[str] = []  # the user message of every request received

    def answer(self, handler, body) -> None:
        content = body["messages"][-1]["content"]
        with self.lock:
            self.seen.append(content)
        mode = "good" if self.healthy else self.modes[int(PROMPT_RE.search(content).group(1))]
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client timed out
            self._answer(handler, mode, body["model"])

    @staticmethod
    def _answer(handler, mode: str, model: str) -> None:
        if mode == "timeout":
            time.sleep(TIMEOUT * 4)
            mode = "good"
        if mode in ("500", "429"):
            send(handler, int(mode), b'{"error": {"message": "stub failure"}}', {"Retry-After": "0"})
        elif mode == "garbage":
            send(handler, 200, b'{"choices": [{"message": ')
        elif mode == "html":
            send(handler, 200, b"<html><body>502 Bad Gateway</body></html>", {}, "text/html")
        else:
            completion = chat_completion(model, CANNED if mode == "good" else None)
            send(handler, 200, json.dumps(completion).encode())

    def take(self, expect: int = 0, settle: float = 0.3) -> list[str]:
        """The requests received since the last call. A client that timed out may have closed its connection
        before this server's handler read the request (a loaded machine), so first wait for ``expect``
        requests (up to 15 s), then until no handler is running and nothing new arrived for ``settle`` s."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with self.lock:
                count, busy = len(self.seen), self.pending
            if count >= expect and busy == 0:
                time.sleep(settle)
                with self.lock:
                    if len(self.seen) == count and self.pending == 0:
                        break
            else:
                time.sleep(0.05)
        with self.lock:
            seen, self.seen = self.seen, []
        return seen


def _disk_dataset(tmp_path, n: int) -> datasets.Dataset:
    """A dataset backed by an Arrow file, so ``Dataset.map`` caches its outputs next to it."""
    rows = [{"prompt": f"PROMPT-{i}", "chosen": f"good answer {i}", "rejected": f"bad {i}"} for i in range(n)]
    folder = tmp_path / "pairs"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    return datasets.load_from_disk(str(folder))


def _judge(server: FlakyServer, tmp_path) -> dict:
    return {
        "model": "stub-judge",
        "base_url": server.base_url,
        "cache_dir": str(tmp_path / "replies"),
        "max_retries": 0,  # one request per failure, so the server's counts are exact
        "timeout": TIMEOUT,
        "concurrency": 4,
        "on_request_error": "missing",
    }


def _failed_requests(step: QualityJudge, n: int) -> Counter:
    """The judge messages of the rows whose mode fails (both responses of each), as the server sees them."""
    wanted = Counter()
    for i in range(n):
        if MODES[i] != "good":
            for response in (f"good answer {i}", f"bad {i}"):
                wanted[step.judge_prompt(f"PROMPT-{i}", response)] += 1
    return wanted


def test_failures_are_counted_warned_and_only_they_are_resent(tmp_path):
    n = len(MODES)
    with FlakyServer(MODES) as server:
        judge = _judge(server, tmp_path)
        step = QualityJudge(judge=judge)
        data = _disk_dataset(tmp_path, n)
        with pytest.warns(JudgeFailureWarning, match=r"12 judge request\(s\) failed") as caught:
            first = step.apply(data, batch_size=4)
        assert len(server.take(2 * n)) == 2 * n  # every request once (no retries)
        failures = dict(zip(MODES, first["quality_request_failures"], strict=True))
        assert failures == {"good": 0, **{mode: 2 for mode in MODES[1:]}}
        assert first["quality_judge_raw"][0] == [CANNED, CANNED]
        assert all(raw == [None, None] for raw in first["quality_judge_raw"][1:])
        message = str(caught[0].message)
        assert "first error: row " in message and "PROMPT-" not in message.split("first error:")[0]
        # only the two good replies are in the reply cache
        assert len(ResponseCache(tmp_path / "replies")) == 2
        # the output is not what a later run would look up: nothing downstream can be cached on it
        assert first._fingerprint != Step.output_fingerprint(step, data._fingerprint)

        # the endpoint recovers; a rerun (a fresh step, as in a new process) asks exactly the failed ones
        server.healthy = True
        again = QualityJudge(judge=judge).apply(
            datasets.load_from_disk(str(tmp_path / "pairs")), batch_size=4
        )
        assert Counter(server.take(12)) == _failed_requests(step, n)
        assert again["quality_request_failures"] == [0] * n
        assert again["quality_chosen"][1]["overall"] == 7.0
        assert again._fingerprint == Step.output_fingerprint(step, data._fingerprint)
        # and a third run is a cache hit: nothing is sent
        third = QualityJudge(judge=judge).apply(
            datasets.load_from_disk(str(tmp_path / "pairs")), batch_size=4
        )
        assert server.take() == []
        assert third["quality_judge_raw"] == again["quality_judge_raw"]


def test_sharded_engine_run_resends_only_the_failed_requests(tmp_path):
    # the recipe engine maps in resumable shards (each its own cache file) and joins them
    n = len(MODES)
    with FlakyServer(MODES) as server:
        judge = _judge(server, tmp_path)
        data = _disk_dataset(tmp_path, n)
        step = QualityJudge(judge=judge)
        with pytest.warns(JudgeFailureWarning):
            first = map_step(step, data, batch_size=2, shard_rows=2)
        assert len(server.take(2 * n)) == 2 * n
        assert sum(first["quality_request_failures"]) == 12
        assert first._fingerprint != Step.output_fingerprint(step, data._fingerprint)
        server.healthy = True
        again = map_step(
            QualityJudge(judge=judge),
            datasets.load_from_disk(str(tmp_path / "pairs")),
            batch_size=2,
            shard_rows=2,
        )
        assert Counter(server.take(12)) == _failed_requests(step, n)
        assert sum(again["quality_request_failures"]) == 0
        assert again._fingerprint == Step.output_fingerprint(step, data._fingerprint)


def test_worker_processes_rerun_resends_only_the_failed_requests(tmp_path):
    # two worker processes map the shards; on the rerun the engine sees their cache files and replays
    # them in this process, where the judge step finds the recorded failures and asks again instead
    n = len(MODES)
    with FlakyServer(MODES) as server:
        judge = _judge(server, tmp_path)
        data = _disk_dataset(tmp_path, n)
        with pytest.warns(JudgeFailureWarning) as caught:  # one warning per shard with failures
            first = map_step(QualityJudge(judge=judge), data, batch_size=2, num_proc=2, shard_rows=2)
        counts = [int(re.search(r"(\d+) judge request", str(w.message)).group(1)) for w in caught]
        assert sum(counts) == 12
        assert len(server.take(2 * n)) == 2 * n and sum(first["quality_request_failures"]) == 12
        server.healthy = True
        again = map_step(QualityJudge(judge=judge), data, batch_size=2, num_proc=2, shard_rows=2)
        assert Counter(server.take(12)) == _failed_requests(QualityJudge(judge=judge), n)
        assert sum(again["quality_request_failures"]) == 0


def test_without_a_reply_cache_the_rerun_is_still_not_a_datasets_cache_hit(tmp_path):
    with FlakyServer(["good", "500"]) as server:
        judge = {**_judge(server, tmp_path), "cache_dir": None}
        data = _disk_dataset(tmp_path, 2)
        with pytest.warns(JudgeFailureWarning, match=r"2 judge request\(s\)"):
            QualityJudge(judge=judge).apply(data)
        server.take()
        server.healthy = True
        again = QualityJudge(judge=judge).apply(datasets.load_from_disk(str(tmp_path / "pairs")))
        assert again["quality_request_failures"] == [0, 0]
        assert len(server.take(4)) == 4  # no reply cache: the whole step is asked again, never reused


@pytest.mark.parametrize(
    ("response", "error"),
    [
        ("<html>502</html>", "not a chat completion"),
        (type("R", (), {"choices": None})(), "no choices"),
    ],
)
def test_completion_of_rejects_what_is_not_a_reply(response, error):
    completion = completion_of(response)
    assert completion.text is None and error in completion.error


def test_null_content_is_a_failure_not_an_empty_reply(tmp_path):
    with FlakyServer(["null"]) as server:
        backend = OpenAIBackend(JudgeConfig(**{**_judge(server, tmp_path), "on_request_error": "raise"}))
        [completion] = backend.complete([[{"role": "user", "content": "PROMPT-0"}]])
    assert completion == Completion(None, error=completion.error) and "content null" in completion.error
    assert backend.stats["failed"] == 1 and len(ResponseCache(tmp_path / "replies")) == 0
