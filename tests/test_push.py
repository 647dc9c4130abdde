"""Versioned pushes: every Hub call up to the network, with HfApi mocked; a real push only with HF_TOKEN."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import filelock
import pytest

from hfpref.cli.main import main
from hfpref.release import ReleaseError, read_manifest
from hfpref.release.folder import ReleaseLockedError
from hfpref.release.push import ReleaseExistsError, push_release
from tests.test_release import make_small_release


def _ref(name: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, ref=f"refs/x/{name}", target_commit="0" * 40)


def _api(tags=(), branches=("main",)) -> mock.MagicMock:
    api = mock.MagicMock(name="HfApi()")
    api.list_repo_refs.return_value = SimpleNamespace(
        tags=[_ref(t) for t in tags], branches=[_ref(b) for b in branches], converts=[]
    )
    uploaded = {}

    def upload_folder(**kwargs):
        # what would go over the wire: the card and manifest as they are at upload time
        folder = Path(kwargs["folder_path"])
        uploaded["card"] = (folder / "README.md").read_text(encoding="utf-8")
        uploaded["manifest"] = json.loads((folder / "hfpref_manifest.json").read_text(encoding="utf-8"))
        return SimpleNamespace(oid="c0ffee" * 6 + "abcd", commit_url="https://hub/commit/c0ffee")

    api.upload_folder.side_effect = upload_folder
    api.uploaded = uploaded
    return api


@pytest.fixture
def folder(tmp_path):
    return make_small_release(tmp_path)[1]


def test_push_new_version(folder):
    api = _api()
    info = push_release(folder, "me/tiny", "0.4.0", api=api)
    api.create_repo.assert_called_once_with("me/tiny", repo_type="dataset", private=False, exist_ok=True)
    api.list_repo_refs.assert_called_once_with("me/tiny", repo_type="dataset")
    api.create_branch.assert_called_once_with(
        "me/tiny", branch="release-v0.4.0", repo_type="dataset", exist_ok=True
    )
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "me/tiny" and kwargs["repo_type"] == "dataset"
    assert kwargs["folder_path"] == str(folder) and kwargs["revision"] == "release-v0.4.0"
    assert kwargs["delete_patterns"] == ["data/**"]
    api.delete_tag.assert_not_called()
    api.create_tag.assert_called_once_with(
        "me/tiny",
        tag="v0.4.0",
        revision="c0ffee" * 6 + "abcd",
        repo_type="dataset",
        tag_message="hfpref release v0.4.0",
    )
    # the version and repo were in the card and manifest before the upload
    assert api.uploaded["manifest"]["version"] == "0.4.0" and api.uploaded["manifest"]["repo_id"] == "me/tiny"
    assert (
        'load_dataset("me/tiny", name="max_margin", revision="v0.4.0", split="train")' in api.uploaded["card"]
    )
    assert info == {
        "repo_id": "me/tiny",
        "revision": "release-v0.4.0",
        "tag": "v0.4.0",
        "commit": "c0ffee" * 6 + "abcd",
        "url": "https://hub/commit/c0ffee",
    }
    # call order: repo, refs, branch, upload, tag
    names = [
        c[0]
        for c in api.mock_calls
        if c[0] in {"create_repo", "list_repo_refs", "create_branch", "upload_folder", "create_tag"}
    ]
    assert names == ["create_repo", "list_repo_refs", "create_branch", "upload_folder", "create_tag"]


def test_existing_tag_is_refused_before_anything_changes(folder):
    before = (folder / "hfpref_manifest.json").read_text()
    api = _api(tags=["v0.4.0"])
    with pytest.raises(ReleaseExistsError, match=r"already has the tag v0.4.0"):
        push_release(folder, "me/tiny", "0.4.0", api=api)
    api.upload_folder.assert_not_called()
    api.create_tag.assert_not_called()
    api.create_branch.assert_not_called()
    assert (folder / "hfpref_manifest.json").read_text() == before


def test_force_moves_the_tag(folder):
    api = _api(tags=["v0.4.0"], branches=["main", "release-v0.4.0"])
    push_release(folder, "me/tiny", "0.4.0", api=api, force=True)
    api.create_branch.assert_not_called()  # the branch exists already
    api.delete_tag.assert_called_once_with("me/tiny", tag="v0.4.0", repo_type="dataset")
    assert api.create_tag.call_args.kwargs["tag"] == "v0.4.0"


def test_explicit_revision_and_private(folder):
    api = _api()
    push_release(folder, "me/tiny", "1.0.0", api=api, revision="main", private=True)
    api.create_branch.assert_not_called()
    assert api.upload_folder.call_args.kwargs["revision"] == "main"
    assert api.create_repo.call_args.kwargs["private"] is True


def test_a_release_whose_files_differ_from_its_manifest_is_not_pushed(folder):
    data = folder / "data/max_margin/train-00000-of-00001.parquet"
    data.write_bytes(data.read_bytes() + b"\0")  # e.g. edited by hand after curate
    api = _api()
    with pytest.raises(ReleaseError, match="max_margin/train-00000-of-00001.parquet: its bytes differ"):
        push_release(folder, "me/tiny", "1.0.0", api=api)
    api.upload_folder.assert_not_called()
    assert read_manifest(folder)["version"] == "0.3.0", "nothing rewritten"


def test_a_folder_locked_by_a_curate_run_is_not_pushed(folder):
    held = filelock.FileLock(str(folder.parent / "release.lock"))  # held as another process would
    message = f"{folder} is being written by another hfpref run"
    with held, pytest.raises(ReleaseLockedError, match=message):
        push_release(folder, "me/tiny", "1.0.0", api=_api())


def test_not_a_release_folder(tmp_path):
    with pytest.raises(ReleaseError, match="hfpref_manifest.json is missing"):
        push_release(tmp_path, "me/tiny", "0.1.0", api=_api())


def test_cli_push(folder, monkeypatch, capsys):
    api = _api()
    monkeypatch.setattr("huggingface_hub.HfApi", lambda token=None: api)
    monkeypatch.setattr(
        "hfpref.pipeline.preflight.check_hub_reachable", lambda what: None
    )  # the mock is the Hub
    assert main(["push", str(folder), "me/tiny", "--version", "0.5.0"]) == 0
    out = capsys.readouterr().out
    assert "tag v0.5.0" in out and 'revision="v0.5.0"' in out
    api_existing = _api(tags=["v0.5.0"])
    monkeypatch.setattr("huggingface_hub.HfApi", lambda token=None: api_existing)
    assert main(["push", str(folder), "me/tiny", "--version", "0.5.0"]) == 2
    assert "already has the tag v0.5.0" in capsys.readouterr().err
    assert main(["push", str(folder), "tiny", "--version", "0.5.0"]) == 2


def test_cli_push_help_documents_options(capsys):
    with pytest.raises(SystemExit):
        main(["push", "--help"])
    text = capsys.readouterr().out
    for option in ("--version", "--revision", "--private", "--token", "--force", "FOLDER", "REPO_ID"):
        assert option in text


@pytest.mark.skipif(not os.environ.get("HF_TOKEN"), reason="a real push needs HF_TOKEN")
def test_real_push_round_trip(tmp_path):  # pragma: no cover - needs the network and a token
    import datasets
    from huggingface_hub import HfApi

    api = HfApi(token=os.environ["HF_TOKEN"])
    repo_id = (
        os.environ.get("HFPREF_TEST_REPO") or f"{api.whoami()['name']}/hfpref-test-{uuid.uuid4().hex[:8]}"
    )
    result, folder = make_small_release(tmp_path)
    try:
        info = push_release(folder, repo_id, "0.0.1", private=True, token=os.environ["HF_TOKEN"])
        loaded = datasets.load_dataset(
            repo_id, name="max_margin", revision=info["tag"], split="train", token=os.environ["HF_TOKEN"]
        )
        assert loaded.to_list() == result.pairs["max_margin"].to_list()
        with pytest.raises(ReleaseExistsError):
            push_release(folder, repo_id, "0.0.1", token=os.environ["HF_TOKEN"])
    finally:
        if not os.environ.get("HFPREF_TEST_REPO"):
            api.delete_repo(repo_id, repo_type="dataset", missing_ok=True)
