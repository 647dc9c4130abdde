"""People as the iterate loop's annotator: Label Studio (``annotation: {kind: label-studio}``).

No Label Studio server is installed on the test machine (``tests/test_labelstudio.py`` skips its server
tests there), so the loop talks to an in-memory stand-in for the server's REST API: only
``LabelStudioClient._call`` (the HTTP transport) is replaced; pushing, the idempotent import, exporting,
vote mapping through the order shown and the rule are the real code.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hfpref.cli.main import main
from hfpref.human import labelstudio as LS
from hfpref.pipeline import iterate as IT
from hfpref.pipeline.iterate import IterateError, IterateRecipe
from hfpref.release import load_release
from tests.test_iterate import _raw

KEY = "test-key-0123456789"


class FakeServer:
    """The four REST routes ``LabelStudioClient`` calls, over projects held in memory."""

    def __init__(self) -> None:
        self.projects: dict[int, dict[str, Any]] = {}
        self.tasks: dict[int, list[dict[str, Any]]] = {}
        self.imported = 0  # tasks imported over all pushes
        self.keys: list[str] = []

    def call(self, client: LS.LabelStudioClient, method: str, path: str, **kwargs: Any) -> Any:
        self.keys.append(client._key)
        if (method, path) == ("GET", "/api/projects"):
            return {"results": copy.deepcopy(list(self.projects.values())), "next": None}
        if (method, path) == ("POST", "/api/projects"):
            project_id = len(self.projects) + 1
            body = kwargs["json"]
            self.projects[project_id] = {
                "id": project_id,
                "title": body["title"],
                "label_config": body["label_config"],
            }
            self.tasks[project_id] = []
            return copy.deepcopy(self.projects[project_id])
        found = re.fullmatch(r"/api/projects/(\d+)/(export|import)", path)
        assert found, (method, path)
        project_id = int(found.group(1))
        if found.group(2) == "export":
            return copy.deepcopy(self.tasks[project_id])
        for item in kwargs["json"]:
            task_id = 1 + sum(len(t) for t in self.tasks.values())
            # the server stores what it is sent as JSON: tuples become lists, as over HTTP
            self.tasks[project_id].append(
                {"id": task_id, "data": json.loads(json.dumps(item["data"])), "annotations": []}
            )
        self.imported += len(kwargs["json"])
        return {"task_count": len(kwargs["json"])}

    def add_annotation(self, task_id: int, choice: str, user: int) -> None:
        """``user`` clicks ``choice`` (A, B, tie or skip) on task ``task_id``."""
        (task,) = [t for tasks in self.tasks.values() for t in tasks if t["id"] == task_id]
        result = [{"from_name": "preference", "to_name": "prompt", "value": {"choices": [choice]}}]
        task["annotations"].append({"id": task_id, "completed_by": user, "result": result, "lead_time": 2.0})


@pytest.fixture
def fake_server(monkeypatch) -> FakeServer:
    server = FakeServer()

    def _call(self, method, path, *, auth=True, **kwargs):
        return server.call(self, method, path, **kwargs)

    monkeypatch.setattr(LS.LabelStudioClient, "_call", _call)
    monkeypatch.setenv(LS.API_KEY_ENV, KEY)
    return server


def _human_raw(tmp_path: Path, models: dict, **annotation) -> dict:
    raw = _raw(tmp_path, models, rounds=1)
    raw["budget"] = {"fraction": 1.0, "schedule": "constant"}  # every eligible pair goes to people
    raw["annotation"] = {
        "kind": "label-studio",
        "project": "loop labels",
        "url": "http://ls.test:8080",
        **annotation,
    }
    return raw


@pytest.mark.parametrize(
    ("annotation", "match"),
    [
        ({"api_key": "secret"}, r"annotation.api_key: .*export LABEL_STUDIO_API_KEY"),
        ({"rule": "mean"}, r"annotation.rule must be one of \['majority', 'unanimous'\]"),
        ({"min_annotations": 0}, r"annotation.min_annotations must be an int >= 1"),
        (
            {"annotator": "RewardAnnotator"},
            r"annotation \(kind label-studio\): unknown field\(s\) \['annotator'\]",
        ),
        ({"kind": "crowd"}, r"annotation.kind must be one of \['model', 'label-studio'\]"),
        ({"url": "localhost:8080"}, r"annotation.url must be an http\(s\) URL"),
    ],
)
def test_label_studio_annotation_fields_are_checked(tiny_models, tmp_path, annotation, match):
    with pytest.raises(IterateError, match=match):
        IterateRecipe.from_dict(_human_raw(tmp_path, tiny_models, **annotation))


def test_model_annotation_refuses_an_api_key_too(tiny_models, tmp_path):
    raw = _raw(tmp_path, tiny_models)
    raw["annotation"]["api_key"] = "secret"
    with pytest.raises(IterateError, match="annotation.api_key"):
        IterateRecipe.from_dict(raw)


def check_a_round_waits_for_labels_and_trains_on_them(
    tiny_models, tmp_path, capsys, *, url: str, project: str, tasks_of, annotate, annotator: str
) -> Path:
    """The loop against a Label Studio at ``url`` (a stand-in or a real server): round 1 stops while its pairs
    are pending, ``annotate(task_id, choice)`` labels them as a person would, and the rerun trains.

    ``tasks_of(title)``: the project's tasks (``id``, ``data``); ``annotator``: the id the votes carry.
    Returns the loop's output folder.
    """
    raw = _human_raw(tmp_path, tiny_models, project=project, url=url)
    recipe_path = tmp_path / "loop.yaml"
    recipe_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    folder = Path(raw["output"]["folder"])
    title = f"{project} round 1"

    # first run: the selected pairs are pushed, none is annotated, the loop stops (exit 2, one line)
    assert main(["iterate", str(recipe_path), "--quiet"]) == 2
    # the error is the last line of stderr (progress bars of model loading come before it)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("hfpref iterate: error: round 1:")
    tasks = tasks_of(title)
    pushed = len(tasks)
    assert pushed > 0
    assert f"{pushed} of {pushed} pairs are still pending" in err and repr(title) in err and "rerun" in err
    state = json.loads((folder / IT.STATE_FILE).read_text())
    assert state["rounds"]["1"]["status"] == "awaiting_labels"
    assert (state["rounds"]["1"]["pending"], state["rounds"]["1"]["project"]) == (pushed, title)
    assert not (folder / "round-1" / "release").exists() and not (folder / "round-1" / "policy").exists()

    # a person labels every pair: the longer response, a tie when both are as long; the first is a tie on purpose
    def choose(data: dict) -> str:
        if data["pair_id"] == tasks[0]["data"]["pair_id"] or len(data["a"]) == len(data["b"]):
            return "tie"
        return "A" if len(data["a"]) > len(data["b"]) else "B"

    for task in tasks:
        annotate(task["id"], choose(task["data"]))
    ties = sum(choose(t["data"]) == "tie" for t in tasks)

    # the rerun pushes nothing new, pulls the labels, writes the release and trains
    assert main(["iterate", str(recipe_path), "--quiet"]) == 0
    assert len(tasks_of(title)) == pushed
    state = json.loads((folder / IT.STATE_FILE).read_text())
    assert state["rounds"]["1"]["status"] == "finished"
    assert state["rounds"]["1"]["pairs"] == pushed - ties
    release = folder / "round-1" / "release"
    pairs = load_release(release, "smallest_margin_corpus")
    assert len(pairs) == pushed - ties
    candidates = load_release(release, "candidates")
    for row in pairs:
        # TRL's conversational format, as the model annotator writes it (the tiny policy has a chat template)
        assert isinstance(row["prompt"], list) and row["chosen"][0]["role"] == "assistant"
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert len(chosen) > len(rejected)
        assert (
            row["label_source"] == f"human:{annotator}" and row["pair_strategy"] == "smallest_margin_corpus"
        )
        # the indices point back into the candidates' responses, and the implicit margin is theirs
        source = candidates[row["source_row"]]
        assert source["responses"][row["chosen_index"]] == chosen
        assert source["responses"][row["rejected_index"]] == rejected
        assert row["implicit_margin"] == pytest.approx(
            source["implicit_rewards"][row["chosen_index"]]
            - source["implicit_rewards"][row["rejected_index"]]
        )
    record = json.loads((release / "hfpref_manifest.json").read_text())["iteration"]
    annotation = record["annotation"]
    assert annotation["annotator"] == "label-studio" and annotation["project"] == title
    assert (annotation["pairs_pushed"], annotation["pairs_kept"]) == (pushed, pushed - ties)
    assert annotation["dropped"] == {"human_tie": ties}
    assert annotation["pairs_pushed"] == record["selection"]["selected"]
    assert f"Annotation by people in Label Studio project `{title}`" in (release / "README.md").read_text()
    # the checkpoint was trained on those pairs (its model card names the release and the row count)
    model_card = (folder / "round-1" / "policy" / "README.md").read_text()
    data = yaml.safe_load(model_card.split("---")[1])["hfpref"]["training_data"]
    assert data["rows"] == pushed - ties
    assert (folder / "round-1" / "policy" / "model.safetensors").exists()
    return folder


def test_a_round_stops_while_labels_are_pending_and_a_rerun_trains_on_them(
    tiny_models, tmp_path, fake_server, capsys
):
    def tasks_of(title: str) -> list[dict]:
        (project_id,) = [i for i, p in fake_server.projects.items() if p["title"] == title]
        return copy.deepcopy(fake_server.tasks[project_id])

    def annotate(task_id: int, choice: str) -> None:
        fake_server.add_annotation(task_id, choice, user=7)

    folder = check_a_round_waits_for_labels_and_trains_on_them(
        tiny_models, tmp_path, capsys, url="http://ls.test:8080", project="loop labels",
        tasks_of=tasks_of, annotate=annotate, annotator="user-7",
    )  # fmt: skip
    assert fake_server.imported == len(tasks_of("loop labels round 1"))  # imported once, on the first run
    assert set(fake_server.keys) == {KEY}  # the key came from LABEL_STUDIO_API_KEY
    written = "".join(p.read_text(errors="ignore") for p in folder.rglob("*") if p.suffix in (".json", ".md"))
    assert KEY not in written
