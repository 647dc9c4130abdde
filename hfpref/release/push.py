"""Pushing a release folder to a Hub dataset repository: one branch per version, a tag ``v{version}``.

A released version is never overwritten: the tag is checked before anything changes (``--force`` moves
it). The folder is locked like a curate run while its manifest and card get the version and repo id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hfpref.release.card import write_manifest_and_card
from hfpref.release.folder import (
    MANIFEST_FILE,
    ReleaseError,
    read_manifest,
    real_folder,
    recover,
    release_lock,
)
from hfpref.release.load import verify_release
from hfpref.release.manifest import recipe_yaml
from hfpref.release.version import check_version


class ReleaseExistsError(ReleaseError):
    """The Hub repository already has this version's tag; versions are never silently overwritten."""


def release_branch(version: str) -> str:
    """The branch a version is committed to when no revision is given (a tag of the same name would clash)."""
    return f"release-v{version}"


def set_release_version(folder: str | Path, version: str, repo_id: str | None = None) -> dict[str, Any]:
    """Write ``version`` (and ``repo_id``) into the manifest and re-render the card; return the manifest."""
    manifest = read_manifest(folder)
    manifest["version"] = check_version(version)
    manifest["recipe"].setdefault("output", {})["version"] = version
    manifest["recipe_yaml"] = recipe_yaml(manifest["recipe"])
    if repo_id is not None:
        manifest["repo_id"] = repo_id
    write_manifest_and_card(folder, manifest)
    return manifest


def push_release(
    folder: str | Path,
    repo_id: str,
    version: str,
    *,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    force: bool = False,
    api: Any = None,
) -> dict[str, Any]:
    """Upload a release folder (card included) to a Hub dataset repo and tag the commit ``v{version}``.

    The commit goes to ``revision`` (a branch; default ``release-v{version}``, created from main when
    missing). Refuses, before changing anything, when the tag already exists, unless ``force`` (then the
    tag is moved to the new commit). The version and repo id are written into the manifest and card first.
    Returns {repo_id, revision, tag, commit, url}.
    """
    folder = Path(folder)
    # locked like a curate run: the manifest and card are rewritten, and the folder must not be swapped
    # under the upload
    with release_lock(folder):
        recover(real_folder(folder))
        _check_pushable(folder)
        check_version(version)
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
        return _upload(folder, repo_id, version, revision=revision, private=private, force=force, api=api)


def _check_pushable(folder: Path) -> None:
    """A release folder whose files match its manifest's hashes (releases of older hfpref versions have
    no hashes to check)."""
    manifest = read_manifest(folder)  # fail early on a folder that is not a release
    if manifest.get("files") is None:
        return
    problems = verify_release(folder)
    if problems:
        raise ReleaseError(
            f"{folder} does not match its {MANIFEST_FILE}, not pushing it: {'; '.join(problems)}. "
            "Write the release again with hfpref curate"
        )


def _upload(
    folder: Path, repo_id: str, version: str, *, revision: str | None, private: bool, force: bool, api: Any
) -> dict[str, Any]:
    """The Hub calls of a push (under the folder's lock): repo, tag check, branch, upload, tag."""
    tag = f"v{version}"
    branch = revision or release_branch(version)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    refs = api.list_repo_refs(repo_id, repo_type="dataset")
    tag_exists = any(ref.name == tag for ref in refs.tags)
    if tag_exists and not force:
        raise ReleaseExistsError(
            f"{repo_id} already has the tag {tag}; a released version is never overwritten. "
            "Use a new --version, or --force to move the tag to this upload."
        )
    set_release_version(folder, version, repo_id)
    if branch != "main" and not any(ref.name == branch for ref in refs.branches):
        api.create_branch(repo_id, branch=branch, repo_type="dataset", exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="dataset",
        revision=branch,
        commit_message=f"hfpref release {tag}",
        # data files of configs this version no longer has must not linger on the branch
        delete_patterns=["data/**"],
        ignore_patterns=[".cache/**", "**/.cache/**", "*.lock"],
    )
    if tag_exists:
        api.delete_tag(repo_id, tag=tag, repo_type="dataset")
    api.create_tag(
        repo_id, tag=tag, revision=commit.oid, repo_type="dataset", tag_message=f"hfpref release {tag}"
    )
    return {
        "repo_id": repo_id,
        "revision": branch,
        "tag": tag,
        "commit": commit.oid,
        "url": commit.commit_url,
    }
