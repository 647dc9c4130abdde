"""The Label Studio REST client: the few calls hfpref needs (projects, import, export), and the key.

Why plain HTTP with ``requests``: ``label-studio-sdk`` 2.x (and the server) pin numpy < 2.3 and other
packages below what hfpref uses, and the five REST calls needed here are small.

The API key comes from ``LABEL_STUDIO_API_KEY`` only (never a recipe, card or manifest). Both Label
Studio token kinds work: a legacy token (sent as ``Token <key>``) and a personal access token (a JWT
refresh token, exchanged at ``/api/token/refresh`` for a short-lived access token).
"""

from __future__ import annotations

import os
from typing import Any

from hfpref.core.errors import UserError

API_KEY_ENV = "LABEL_STUDIO_API_KEY"
URL_ENV = "LABEL_STUDIO_URL"
DEFAULT_URL = "http://localhost:8080"

# the labelling interface; $a / $b are the two responses in the order shown
LABEL_CONFIG = """<View>
  <Header value="Which response is better?"/>
  <Text name="prompt" value="$prompt_text"/>
  <View style="display: flex; gap: 1em;">
    <View style="flex: 50%;">
      <Header value="A"/>
      <Text name="response_a" value="$a"/>
    </View>
    <View style="flex: 50%;">
      <Header value="B"/>
      <Text name="response_b" value="$b"/>
    </View>
  </View>
  <Choices name="preference" toName="prompt" choice="single" required="true" showInLine="true">
    <Choice value="A"/>
    <Choice value="B"/>
    <Choice value="tie"/>
    <Choice value="skip"/>
  </Choices>
  <TextArea name="comment" toName="prompt" placeholder="optional comment (why tie / skip)" maxSubmissions="1"/>
</View>"""


class LabelStudioError(UserError):
    """Label Studio cannot be reached, refuses the key, or holds something hfpref did not expect."""


def api_key_from_env() -> str:
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise LabelStudioError(
            f"{API_KEY_ENV} is not set: copy your access token from Label Studio (Account & Settings) and "
            f"`export {API_KEY_ENV}=...` (the key is read from the environment only, never from a recipe)"
        )
    return key


class LabelStudioClient:
    """The few REST calls hfpref needs (projects, import, export, users), with errors a user can act on."""

    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 60.0) -> None:
        import requests

        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        self._key = api_key if api_key is not None else api_key_from_env()
        self.timeout = timeout
        self.session = requests.Session()
        self._auth: str | None = None

    def _authorization(self) -> str:
        if self._auth is None:
            if self._key.count(".") == 2:  # a personal access token (JWT refresh token)
                access = self._call("POST", "/api/token/refresh/", json={"refresh": self._key}, auth=False)
                self._auth = f"Bearer {access['access']}"
            else:
                self._auth = f"Token {self._key}"
        return self._auth

    def _call(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> Any:
        import requests

        headers = {"Authorization": self._authorization()} if auth else {}
        where = f"{method} {self.url}{path}"
        try:
            response = self.session.request(
                method, self.url + path, headers=headers, timeout=self.timeout, **kwargs
            )
        except requests.ConnectionError as err:
            raise LabelStudioError(
                f"cannot reach Label Studio at {self.url} ({type(err).__name__}): is the server running? "
                f"start it with `label-studio start --port PORT` or pass the right --url / {URL_ENV}"
            ) from None
        except requests.Timeout:
            raise LabelStudioError(
                f"Label Studio at {self.url} did not answer {where} within {self.timeout:.0f} s; retry later"
            ) from None
        if response.status_code in (401, 403):
            raise LabelStudioError(
                f"Label Studio at {self.url} refused the key in {API_KEY_ENV} ({response.status_code} on "
                f"{where}); copy a current access token from Account & Settings (a legacy token needs "
                "legacy tokens enabled for the organization)"
            )
        if response.status_code >= 400:
            raise LabelStudioError(
                f"Label Studio answered {response.status_code} to {where}: {response.text[:300]!r}"
            )
        try:
            return response.json()
        except ValueError:
            raise LabelStudioError(
                f"{where} did not return JSON (is {self.url} a Label Studio server?)"
            ) from None

    def projects(self) -> list[dict[str, Any]]:
        found, page = [], 1
        while True:
            answer = self._call("GET", "/api/projects", params={"page": page, "page_size": 100})
            results = answer.get("results", []) if isinstance(answer, dict) else answer
            found += results
            if not isinstance(answer, dict) or not answer.get("next") or not results:
                return found
            page += 1

    def find_project(self, title: str) -> dict[str, Any] | None:
        matches = [p for p in self.projects() if p.get("title") == title]
        if len(matches) > 1:
            ids = [p["id"] for p in matches]
            raise LabelStudioError(
                f"{len(matches)} Label Studio projects are titled {title!r} (ids {ids}); rename all but one"
            )
        return matches[0] if matches else None

    def create_project(self, title: str, *, annotators_per_pair: int = 1) -> dict[str, Any]:
        return self._call(
            "POST",
            "/api/projects",
            json={
                "title": title,
                "description": "Pairwise preferences pushed by hfpref: pick the better response (A or B), "
                "tie, or skip; a comment says why.",
                "label_config": LABEL_CONFIG,
                "maximum_annotations": annotators_per_pair,
                "show_skip_button": True,
            },
        )

    def export(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project with its annotations (finished or not)."""
        return self._call(
            "GET",
            f"/api/projects/{project_id}/export",
            params={"exportType": "JSON", "download_all_tasks": "true"},
        )

    def import_tasks(self, project_id: int, data: list[dict[str, Any]]) -> dict[str, Any]:
        return self._call("POST", f"/api/projects/{project_id}/import", json=[{"data": d} for d in data])


def project_url(client: LabelStudioClient, project_id: int) -> str:
    return f"{client.url}/projects/{project_id}/data"


def require_project(client: LabelStudioClient, title: str) -> dict[str, Any]:
    project = client.find_project(title)
    if project is None:
        raise LabelStudioError(
            f"Label Studio at {client.url} has no project titled {title!r}; push pairs to it first "
            "(`hfpref annotate push SOURCE --project ...`) or check --project"
        )
    return project
