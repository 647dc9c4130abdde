"""Human labels through a real Label Studio server (loopback only), and the vote arithmetic without one.

The server tests start ``label-studio`` (installed into ``.venv-labelstudio`` by
``scripts/setup_labelstudio.sh``, which ``scripts/setup.sh`` calls) once per session on 127.0.0.1, with a
temporary data dir and two users created by ``label-studio init --username --password --user-token``
(legacy API tokens enabled for the organization), and stop it at the end. Two simulated annotators
submit annotations through the server's REST API with their own tokens, choosing by the text they are
shown as A and B, the way a person would.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from hfpref.cli.main import build_parser, main
from hfpref.core.errors import UserError
from hfpref.human import labelstudio as LS
from hfpref.pipeline.recipe import Recipe
from hfpref.release import load_release, read_manifest

REPO = Path(__file__).resolve().parents[1]
PROJECT = "hfpref round trip"

# ---- the vote arithmetic, no server --------------------------------------------------------------------


def _vote(prefers: str, who: str = "user-1", pair: str = "p") -> LS.Vote:
    shown = {"response_1": "A", "response_2": "B"}.get(prefers, prefers)
    return LS.Vote(pair, who, shown, prefers, None, 1.0)


def test_pair_id_and_order_do_not_depend_on_the_machine_label():
    a = LS.PairTask.make("q", "yes", "no", seed=0, source={"row": 0, "indices": [0, 1]})
    b = LS.PairTask.make("q", "no", "yes", seed=0, source={"row": 0, "indices": [1, 0]})
    assert a == b  # same pair id, canonical order ("no" < "yes"), same indices, same order shown
    assert (a.response_1, a.response_2, a.source["indices"]) == ("no", "yes", [1, 0])
    data = a.data()
    assert data["a"] == (a.response_1 if a.first == 1 else a.response_2)
    assert {data["a"], data["b"]} == {"no", "yes"}
    # the order shown is a fair coin per pair: over 400 pairs both orders are common, and a new seed
    # changes some of them
    tasks = [LS.PairTask.make(f"q{k}", "x", "y", seed=0, source={}) for k in range(400)]
    firsts = [t.first for t in tasks]
    assert 150 < firsts.count(1) < 250  # binomial(400, 0.5): 5 sd either side
    reseeded = [LS.PairTask.make(f"q{k}", "x", "y", seed=1, source={}).first for k in range(400)]
    assert firsts != reseeded
    assert firsts == [LS.PairTask.make(f"q{k}", "y", "x", seed=0, source={}).first for k in range(400)]


def test_selected_pairs_of_an_iterate_round():
    import datasets

    candidates = datasets.Dataset.from_list(
        [
            {
                "prompt": "p0",
                "responses": ["r0", "r1", "r2"],
                "pair_indices": [[0, 1], [0, 2], [1, 2]],
                "selected_for_annotation": [True, False, True],
            },
            {  # a missing response (failed call) is never a candidate, even if marked
                "prompt": "p1",
                "responses": ["s0", None],
                "pair_indices": [[0, 1]],
                "selected_for_annotation": [True],
            },
        ]
    )
    tasks = LS.selected_pair_tasks(candidates, seed=0, source="round-1")
    assert [(t.prompt, t.response_1, t.response_2, t.source["indices"]) for t in tasks] == [
        ("p0", "r0", "r1", [0, 1]),
        ("p0", "r1", "r2", [1, 2]),
    ]


def test_reduce_votes_by_rule():
    r1, r2, tie, skip = "response_1", "response_2", "tie", "skip"
    cases = [  # votes -> (majority, unanimous)
        ([r1, r1, r2], (r1, "disagreement")),
        ([r1, r2], ("no_majority", "disagreement")),
        ([r1, skip], (r1, r1)),
        ([skip, skip], ("skipped", "skipped")),
        ([tie, tie, r1], (tie, "disagreement")),
        ([r2], (r2, r2)),
    ]
    for labels, expected in cases:
        votes = [_vote(v, f"user-{i}") for i, v in enumerate(labels)]
        assert (LS.reduce_votes(votes, "majority"), LS.reduce_votes(votes, "unanimous")) == expected, labels
    with pytest.raises(UserError, match="rule 'mean'"):
        LS.reduce_votes([], "mean")


def test_agreement_hand_computed():
    by_pair = {
        "p1": [_vote("response_1"), _vote("response_1"), _vote("response_2")],  # 3 annotator pairs, 1 agree
        "p2": [_vote("tie"), _vote("tie")],  # 1 of 1
        "p3": [_vote("response_1"), _vote("skip")],  # one non-skip vote: not compared
        "p4": [_vote("response_2")],
    }
    assert LS.agreement(by_pair) == {
        "pairs_with_several_votes": 2,
        "annotator_pairs": 4,
        "agreeing_annotator_pairs": 2,
        "rate": 0.5,
    }
    assert LS.agreement({"p": [_vote("response_1")]})["rate"] is None


def test_a_vote_maps_back_through_the_recorded_order():
    task = {
        "id": 7,
        "data": {"pair_id": "x", "shown_first": 2, "prompt": "q", "response_1": "u", "response_2": "v"},
    }

    def annotation(choice, cancelled=False):
        result = [{"from_name": "preference", "value": {"choices": [choice]}}] if choice else []
        return {"id": 1, "completed_by": 3, "result": result, "was_cancelled": cancelled, "lead_time": 2.5}

    # response_2 was shown as A, so "A" is a vote for response_2
    assert LS.parse_vote(task, annotation("A")).prefers == "response_2"
    assert LS.parse_vote(task, annotation("B")).prefers == "response_1"
    assert LS.parse_vote(task, annotation(None, cancelled=True)).prefers == "skip"
    assert LS.parse_vote(task, annotation("A")).annotator == "user-3"
    with pytest.raises(UserError, match="choice 'maybe'"):
        LS.parse_vote(task, annotation("maybe"))


def test_push_source_defaults_to_the_pairs_margin_selection_picked(tmp_path):
    from hfpref.release.writer import write_release

    # r̂ = β(log π − log π_ref) = [0, -0.1, -0.3] (β 0.1): margins (0,1) 0.1, (0,2) 0.3, (1,2) 0.2, so
    # smallest-margin selection with one pair per prompt picks (0, 1)
    row = {
        "prompt": "pick one",
        "responses": ["first", "second", "third"],
        "policy_logps": [-1.0, -2.0, -4.0],
        "ref_logps": [-1.0, -1.0, -1.0],
        "rewards": [1.0, 0.5, 0.0],
    }
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    recipe = Recipe.from_dict(
        {
            "input": {"path": str(path)},
            "steps": [
                {"step": "ImplicitMargins", "config": {"beta": 0.1}},
                {"step": "AnnotationSelector", "config": {"strategy": "smallest_margin", "count": 1}},
            ],
            "pairs": {"strategies": ["max_margin"]},
            "output": {"name": "margins", "version": "0.1.0"},
        }
    )
    folder = write_release(recipe.run(cache_dir=tmp_path / "cache", progress=False), tmp_path / "release")
    tasks = LS.pair_tasks_from_release(folder)
    assert [(t.response_1, t.response_2, t.source["indices"]) for t in tasks] == [("first", "second", [0, 1])]
    assert tasks[0].source["from"] == "release/candidates"
    # a pairs config on request: the max_margin pair (0, 2)
    (pair,) = LS.pair_tasks_from_release(folder, "max_margin")
    assert {pair.response_1, pair.response_2} == {"first", "third"}
    with pytest.raises(UserError, match="no config 'nope'"):
        LS.pair_tasks_from_release(folder, "nope")


def _fake_export(choice: str) -> list[dict]:
    task = LS.PairTask.make("q", "good", "bad", seed=0, source={"row": 0})
    result = [{"from_name": "preference", "value": {"choices": [choice]}}]
    return [
        {
            "id": 1,
            "data": task.data(),
            "annotations": [{"completed_by": 1, "result": result, "lead_time": 1.0}],
        }
    ]


def test_a_pulled_release_is_replaced_only_when_asked(tmp_path):
    a_wins = LS.collect_labels(_fake_export("A"), project="p")
    b_wins = LS.collect_labels(_fake_export("B"), project="p")
    assert a_wins.rows[0]["chosen"] == b_wins.rows[0]["rejected"]
    folder = LS.write_labels_release(a_wins, tmp_path / "out")
    with pytest.raises(UserError, match="already holds a release"):
        LS.write_labels_release(b_wins, folder)
    assert load_release(folder, "human")["chosen"] == [a_wins.rows[0]["chosen"]]
    LS.write_labels_release(b_wins, folder, overwrite=True)
    assert load_release(folder, "human")["chosen"] == [b_wins.rows[0]["chosen"]]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or old folder left behind
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not writing into it"):
        LS.write_labels_release(a_wins, tmp_path / "other", overwrite=True)


def test_missing_api_key_is_a_user_error(monkeypatch):
    monkeypatch.delenv(LS.API_KEY_ENV, raising=False)
    with pytest.raises(UserError, match=LS.API_KEY_ENV):
        LS.LabelStudioClient("http://127.0.0.1:9")


def test_push_takes_the_release_config_as_dataset_config_and_the_old_config_flag_with_a_warning(capsys):
    argv = ["annotate", "push", "release", "--project", "p"]
    assert build_parser().parse_args([*argv, "--dataset-config", "max_margin"]).dataset_config == "max_margin"
    assert capsys.readouterr().err == ""
    for old in (["--config", "max_margin"], ["--config=max_margin"]):
        assert build_parser().parse_args([*argv, *old]).dataset_config == "max_margin"
        warning = "hfpref annotate push: warning: --config is deprecated; give --dataset-config\n"
        assert capsys.readouterr().err == warning


# ---- a real server ------------------------------------------------------------------------------------


def _binary() -> Path | None:
    for candidate in (os.environ.get("HFPREF_LABEL_STUDIO"), REPO / ".venv-labelstudio/bin/label-studio"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    found = shutil.which("label-studio")
    return Path(found) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``label-studio start`` on 127.0.0.1 with its own data dir; ``stop`` and ``start`` keep the data."""

    def __init__(self, binary: Path, data_dir: Path, log: Path) -> None:
        self.binary, self.data_dir, self.log = binary, data_dir, log
        self.env = {
            **os.environ,
            "LATEST_VERSION_CHECK": "false",  # no call to pypi.org
            "COLLECT_ANALYTICS": "false",
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        }
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        self.tokens: dict[str, str] = {}
        self.user_ids: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _user_args(self, name: str) -> list[str]:
        token = self.tokens[name] = secrets.token_hex(20)
        return [
            "--username",
            f"{name}@example.org",
            "--password",
            secrets.token_hex(8),
            "--user-token",
            token,
        ]

    def add_user(self, name: str) -> None:
        """A user made by ``label-studio init`` (the first one's organization gets legacy tokens enabled)."""
        subprocess.run(
            [str(self.binary), "init", "--data-dir", str(self.data_dir), "-q", "--enable-legacy-api-token",
             *self._user_args(name)],
            env=self.env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300,
        )  # fmt: skip

    def start(self, timeout: float = 180.0, new_user: str | None = None) -> None:
        """Start the server; ``new_user`` is created by the same process (one Django start-up less)."""
        import requests

        extra = self._user_args(new_user) if new_user else []
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "start", "--data-dir", str(self.data_dir), "--port", str(self.port),
                 "--internal-host", "127.0.0.1", "--no-browser", *extra],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"label-studio exited with {self.process.returncode}; see {self.log}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"label-studio did not answer on {self.url} within {timeout:.0f} s; see {self.log}"
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # its own session: the server and nothing else
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    binary = _binary()
    if binary is None:
        pytest.skip(
            "the Label Studio server is not installed (no .venv-labelstudio/bin/label-studio, no "
            "label-studio on PATH): run `bash scripts/setup_labelstudio.sh`"
        )
    import requests

    root = tmp_path_factory.mktemp("label-studio")
    data_dir = root / "data"
    template = binary.parent.parent / "hfpref-template-data"
    if (template / "label_studio.sqlite3").is_file():  # migrated once by the setup script: saves ~1 min
        shutil.copytree(template, data_dir)
    server = Server(binary, data_dir, root / "server.log")
    server.add_user("bob")
    server.start(new_user="alice")
    for name, token in server.tokens.items():
        me = requests.get(
            f"{server.url}/api/current-user/whoami", headers={"Authorization": f"Token {token}"}
        )
        me.raise_for_status()
        server.user_ids[name] = f"user-{me.json()['id']}"
    yield server
    server.stop()


@pytest.fixture
def server(label_studio, monkeypatch):
    if not label_studio.running():
        label_studio.start()
    monkeypatch.setenv(LS.API_KEY_ENV, label_studio.tokens["alice"])
    monkeypatch.delenv(LS.URL_ENV, raising=False)
    return label_studio


# ten prompts, each with a better ("good ...") and a worse response; rewards say which, so the release's
# max_margin pairs carry the machine label the simulated annotators agree with (or not, on purpose)
def _candidates(n: int = 10) -> list[dict]:
    rows = []
    for k in range(n):
        good, bad = f"good answer {k}: clear and correct", f"bad answer {k}"
        flip = k % 3 == 0  # the better response is not always first in the candidates
        rows.append(
            {
                "prompt": f"question {k}?",
                "responses": [bad, good] if flip else [good, bad],
                "generators": ["g1", "g2"],
                "rewards": [0.0, 1.0] if flip else [1.0, 0.0],
            }
        )
    return rows


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ls-release")
    path = tmp / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _candidates()), encoding="utf-8")
    recipe = Recipe.from_dict(
        {
            "input": {"path": str(path)},
            "steps": [{"step": "PairMetrics", "config": {"tokenizer": None}}],
            "pairs": {"strategies": ["max_margin"]},
            "output": {"name": "tiny", "version": "0.1.0", "license": "cc-by-4.0"},
        }
    )
    from hfpref.release.writer import write_release

    return write_release(recipe.run(cache_dir=tmp / "cache", progress=False), tmp / "release")


def _annotate(
    server: Server, who: str, task_id: int, choice=None, comment=None, cancelled=False, lead_time=1.0
):
    import requests

    result = []
    if choice:
        result.append(
            {
                "from_name": "preference",
                "to_name": "prompt",
                "type": "choices",
                "value": {"choices": [choice]},
            }
        )
    if comment:
        result.append(
            {"from_name": "comment", "to_name": "prompt", "type": "textarea", "value": {"text": [comment]}}
        )
    answer = requests.post(
        f"{server.url}/api/tasks/{task_id}/annotations",
        headers={"Authorization": f"Token {server.tokens[who]}"},
        json={"result": result, "was_cancelled": cancelled, "lead_time": lead_time},
        timeout=30,
    )
    assert answer.status_code == 201, answer.text


def _click(data: dict, want_good: bool) -> str:
    """What a person clicks, from the two texts shown: A or B."""
    a_good = data["a"].startswith("good")
    assert data["b"].startswith("good") != a_good
    return "A" if a_good == want_good else "B"


def _tasks_by_project(server: Server, project: str) -> list[dict]:
    client = LS.LabelStudioClient(server.url)
    return client.export(client.find_project(project)["id"])


def _tasks_by_question(server: Server, project: str) -> dict[int, dict]:
    return {int(t["data"]["prompt"].split()[1].rstrip("?")): t for t in _tasks_by_project(server, project)}


def _push(server: Server, release: Path, project: str, capsys) -> str:
    assert main(["annotate", "push", str(release), "--url", server.url, "--project", project,
                 "--dataset-config", "max_margin", "--annotators-per-pair", "2"]) == 0  # fmt: skip
    return capsys.readouterr().out


def test_round_trip_two_annotators(server, release, tmp_path, capsys):
    machine = load_release(release, "max_margin")
    assert len(machine) == 10
    out = _push(server, release, PROJECT, capsys)
    assert "created project" in out and "10 new pairs pushed, 0 already there" in out
    out = _push(server, release, PROJECT, capsys)  # a second push is a no-op
    assert "reused project" in out and "0 new pairs pushed, 10 already there" in out
    tasks = _tasks_by_question(server, PROJECT)
    assert sorted(tasks) == list(range(10))

    clicks = []
    for k, task in tasks.items():
        data, tid = task["data"], task["id"]
        if k <= 5:  # alice picks the better response; bob agrees on 0-3 and disagrees on 4, 5
            clicks.append(_click(data, True))
            _annotate(server, "alice", tid, clicks[-1], lead_time=2.0)
            _annotate(server, "bob", tid, _click(data, k <= 3), lead_time=4.0)
        elif k == 6:  # both call it a tie
            _annotate(server, "alice", tid, "tie", comment="equally good")
            _annotate(server, "bob", tid, "tie")
        elif k == 7:  # alice skips with a reason, bob never sees it
            _annotate(server, "alice", tid, "skip", comment="cannot judge")
        elif k == 8:  # alice presses Label Studio's skip button; bob picks the better one
            _annotate(server, "alice", tid, cancelled=True)
            _annotate(server, "bob", tid, _click(data, True), lead_time=3.0)
        # k == 9: nobody annotates it
    assert {"A", "B"} <= set(clicks)  # both positions were clicked, so the order really is undone

    out_dir = tmp_path / "human"
    assert (
        main(["annotate", "pull", "--url", server.url, "--project", PROJECT, "--output", str(out_dir)]) == 0
    )
    assert "5 labelled pairs of 10 pushed (1 pending" in capsys.readouterr().out

    # every pushed pair comes back exactly once
    pairs = load_release(out_dir, "pairs")
    assert sorted(pairs["pair_id"]) == sorted(t["data"]["pair_id"] for t in tasks.values())
    assert len(set(pairs["pair_id"])) == 10
    outcome = {int(r["prompt"].split()[1].rstrip("?")): r["outcome"] for r in pairs}
    assert (outcome[6], outcome[7], outcome[9]) == ("tie", "skipped", "pending")
    assert outcome[4] == outcome[5] == "no_majority"
    assert outcome[8] in ("response_1", "response_2")

    # order bias undone: chosen is the better response whichever side it was shown on
    human = load_release(out_dir, "human")
    by_k = {int(r["prompt"].split()[1].rstrip("?")): r for r in human}
    assert sorted(by_k) == [0, 1, 2, 3, 8]
    alice, bob = server.user_ids["alice"], server.user_ids["bob"]
    for k, row in by_k.items():
        assert row["chosen"] == f"good answer {k}: clear and correct" and row["rejected"] == f"bad answer {k}"
        shown_a = tasks[k]["data"]["a"]
        assert row["chosen_shown_first"] == (shown_a == row["chosen"])
        if k <= 3:
            assert row["label_source"] == "human:" + ",".join(sorted([alice, bob]))
            assert row["time_spent_s"] == pytest.approx(3.0)  # mean of 2.0 and 4.0
            assert (row["votes_chosen"], row["votes_rejected"]) == (2, 0)
        else:
            assert row["label_source"] == f"human:{bob}" and row["votes_skip"] == 1
    # the machine's label agrees with the people's here (rewards favour the better response)
    machine_by_prompt = {r["prompt"]: (r["chosen"], r["rejected"]) for r in machine}
    assert all(machine_by_prompt[r["prompt"]] == (r["chosen"], r["rejected"]) for r in human)

    manifest = read_manifest(out_dir)
    counts = manifest["counts"]
    assert (counts["pairs"], counts["labelled"], counts["pending"]) == (10, 5, 1)
    assert (counts["annotations"], counts["annotators"]) == (17, 2)  # alice 9, bob 8
    assert counts["tie_votes"] == 2 and counts["tie_reasons"] == {"equally good": 1, "no reason given": 1}
    assert counts["skip_votes"] == 2 and counts["skip_reasons"] == {"cannot judge": 1, "skip button": 1}
    assert counts["outcomes"]["no_majority"] == 2 and counts["outcomes"]["tie"] == 1
    # agreement over pairs 0-6: agree on 0-3 and the tie (6), disagree on 4 and 5
    assert manifest["agreement"] == {
        "pairs_with_several_votes": 7,
        "annotator_pairs": 7,
        "agreeing_annotator_pairs": 5,
        "rate": pytest.approx(5 / 7),
    }
    assert (
        len(manifest["pending_pair_ids"]) == 1
        and manifest["pending_pair_ids"][0] == tasks[9]["data"]["pair_id"]
    )
    assert len(load_release(out_dir, "annotations")) == 17

    card = (out_dir / "README.md").read_text(encoding="utf-8")
    assert "Labelled by people" in card and "71.4% of annotator pairs" in card
    assert "| pushed for annotation | 10 |" in card and "| labelled (rows in `human`) | 5 |" in card
    # neither the key nor anyone's e-mail address is written anywhere
    written = "".join(p.read_text(errors="ignore") for p in out_dir.rglob("*") if p.is_file())
    assert server.tokens["alice"] not in written and "example.org" not in written

    # the unanimous rule and two annotations per pair, on the same labels
    strict = LS.pull_labels(LS.LabelStudioClient(server.url), PROJECT, rule="unanimous", min_annotations=2)
    assert strict.counts["outcomes"]["disagreement"] == 2
    assert {tasks[k]["data"]["pair_id"] for k in (7, 9)} == set(strict.pending)


def test_an_iterate_round_stops_while_pending_and_resumes_from_the_labels(server):
    import datasets

    # two prompts, three responses each; the round selected two pairs of the first, one of the second
    candidates = datasets.Dataset.from_list(
        [
            {
                "prompt": "loop q0?",
                "responses": ["bad 0a", "good 0", "bad 0b"],
                "pair_indices": [[0, 1], [0, 2], [1, 2]],
                "selected_for_annotation": [True, False, True],
            },
            {
                "prompt": "loop q1?",
                "responses": ["good 1", "bad 1"],
                "pair_indices": [[0, 1]],
                "selected_for_annotation": [True],
            },
        ]
    )
    kwargs = {"project": "hfpref iterate round 1", "url": server.url, "seed": 3}
    first = LS.label_round(candidates, **kwargs)
    assert (first.push.pushed, first.pending) == (3, 3)
    assert "3 of 3 pairs are still pending" in first.pending_message(1)
    for task in _tasks_by_project(server, kwargs["project"]):
        _annotate(server, "alice", task["id"], _click(task["data"], True))
    again = LS.label_round(candidates, **kwargs)
    assert (again.push.pushed, again.push.already_there, again.pending) == (0, 3, 0)
    rows = LS.labels_dataset(again.pull).to_list()
    got = sorted((r["prompt"], r["chosen_index"], r["rejected_index"], r["chosen"]) for r in rows)
    assert got == [("loop q0?", 1, 0, "good 0"), ("loop q0?", 1, 2, "good 0"), ("loop q1?", 0, 1, "good 1")]


def test_restart_loses_nothing_and_a_stopped_server_is_a_clear_error(server, release, tmp_path, capsys):
    project = "hfpref restart check"
    _push(server, release, project, capsys)
    for task in _tasks_by_question(server, project).values():
        _annotate(server, "bob", task["id"], _click(task["data"], True))
    before = LS.pull_labels(LS.LabelStudioClient(server.url), project)
    assert before.counts["labelled"] == 10

    server.stop()
    with pytest.raises(UserError) as err:
        LS.pull_labels(LS.LabelStudioClient(server.url), project)
    message = str(err.value)
    assert "\n" not in message and f"cannot reach Label Studio at {server.url}" in message
    # the command fails the same way and writes nothing, not even a temporary folder
    out_dir = tmp_path / "pulled"
    argv = ["annotate", "pull", "--url", server.url, "--project", project, "--output", str(out_dir)]
    try:  # hfpref.cli.main prints a UserError as one line and returns 2 (or lets it through, before that landed)
        rc = main(argv)
        message = capsys.readouterr().err
    except UserError as raised:
        rc, message = 2, str(raised)
    assert rc == 2 and "cannot reach Label Studio" in message
    assert list(tmp_path.iterdir()) == []

    server.start()
    after = LS.pull_labels(LS.LabelStudioClient(server.url), project)
    assert after.rows == before.rows and after.counts == before.counts


def test_a_personal_access_token_works_too(server, monkeypatch):
    import requests

    # Label Studio's default token kind: a JWT refresh token the client exchanges for an access token
    made = requests.post(
        f"{server.url}/api/token/", headers={"Authorization": f"Token {server.tokens['bob']}"}, timeout=30
    )
    made.raise_for_status()
    monkeypatch.setenv(LS.API_KEY_ENV, made.json()["token"])
    client = LS.LabelStudioClient(server.url)
    assert isinstance(client.projects(), list)  # a refused key would raise LabelStudioError
    assert client._authorization().startswith("Bearer ")


def test_a_wrong_key_is_refused_in_one_line(server, monkeypatch):
    monkeypatch.setenv(LS.API_KEY_ENV, "not-a-valid-token")
    with pytest.raises(UserError, match=f"refused the key in {LS.API_KEY_ENV}") as err:
        LS.LabelStudioClient(server.url).projects()
    assert "\n" not in str(err.value)


def test_the_iterate_loop_waits_for_people_and_trains_on_their_labels(server, tiny_models, tmp_path, capsys):
    """``annotation: {kind: label-studio}`` end to end on the real server: round 1 stops while its pairs are
    pending, alice annotates them through the API, and the rerun trains on her labels."""
    from tests.test_iterate_human import check_a_round_waits_for_labels_and_trains_on_them

    def annotate(task_id: int, choice: str) -> None:
        _annotate(server, "alice", task_id, choice)

    check_a_round_waits_for_labels_and_trains_on_them(
        tiny_models, tmp_path, capsys, url=server.url, project="hfpref iterate loop",
        tasks_of=lambda title: _tasks_by_project(server, title), annotate=annotate,
        annotator=server.user_ids["alice"],
    )  # fmt: skip
