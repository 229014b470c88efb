"""A Hugging Face Hub stand-in for tests: the HTTP endpoints huggingface_hub 1.x/2.x calls to create a model repo,
commit files to it and download them, served from memory on 127.0.0.1 (port 0) by a stdlib ``http.server``.

Endpoints (model repos, branch ``main`` and commit ids as revisions):

* ``POST /api/repos/create``, ``GET /api/whoami-v2``, ``POST /api/validate-yaml`` (checks the card's YAML parses);
* ``POST /api/models/{id}/preupload/{rev}``: every file is ``"regular"`` (inline in the commit: no LFS, no Xet);
* ``POST /api/models/{id}/commit/{rev}``: the NDJSON commit (``header``, ``file`` base64, ``deletedFile``,
  ``deletedFolder``); ``lfsFile`` is refused, since preupload never asks for LFS;
* ``GET /api/models/{id}[/revision/{rev}]``, ``GET /api/models/{id}/tree/{rev}[/{path}]``,
  ``POST /api/models/{id}/paths-info/{rev}``, ``GET /api/models/{id}/refs``;
* ``HEAD``/``GET /{id}/resolve/{rev}/{path}`` with the headers ``hf_hub_download`` reads (``ETag`` = git blob
  sha1, ``X-Repo-Commit``, ``Content-Length``); errors carry ``X-Error-Code`` (``RepoNotFound``,
  ``RevisionNotFound``, ``EntryNotFound``) as the Hub's do.

Writes need ``Authorization: Bearer <token>`` when the server has a token (reads are public). Every request is
recorded in ``server.requests`` as ``(method, path)``. huggingface_hub reads its endpoint at import:
:func:`use_endpoint` points an already-imported huggingface_hub / transformers at the server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

DEFAULT_USER = "tester"


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    message: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    commits: list[Commit] = field(default_factory=list)

    def at(self, revision: str) -> Commit | None:
        if revision == "main":
            return self.commits[-1]
        return next((c for c in self.commits if c.oid == revision), None)


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, token: str | None = None, user: str = DEFAULT_USER):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.token, self.user = token, user
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        # The socket already listens (bound in __init__): requests made before serve_forever runs just queue.
        self.thread = threading.Thread(target=self.serve_forever, name="hub-server", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self.thread is not None:
            self.thread.join()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self.lock:
            return dict(self.repos[repo_id].at(revision).files)

    def tamper(self, repo_id: str, path: str, data: bytes) -> None:
        """Change a file of the latest commit in place, as an attacker on the server would (no new commit)."""
        with self.lock:
            self.repos[repo_id].commits[-1].files[path] = data

    def history(self, repo_id: str) -> list[str]:
        with self.lock:
            return [c.message for c in self.repos[repo_id].commits]


class _Handler(BaseHTTPRequestHandler):
    server: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    # -- plumbing
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head_only: bool = False):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _dispatch(self, method: str):
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.server.requests.append((method, url.path))
        body = self._body() if method in ("POST", "PUT") else b""
        try:
            route = self._route(method, parts)
            with self.server.lock:
                route(parts, query, body, method)
        except HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._send(err.status, json.dumps({"error": err.message}).encode(),
                       {"Content-Type": "application/json", **headers}, head_only=method == "HEAD")

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def _route(self, method, parts):
        if parts[:1] == ["api"]:
            if parts[1:3] == ["repos", "create"] and method == "POST":
                return self.create_repo
            if parts[1:2] == ["whoami-v2"]:
                return self.whoami
            if parts[1:2] == ["validate-yaml"] and method == "POST":
                return self.validate_yaml
            if parts[1:2] == ["models"] and len(parts) >= 4:
                action = parts[4] if len(parts) > 4 else None
                routes = {
                    (None, "GET"): self.model_info, ("revision", "GET"): self.model_info,
                    ("preupload", "POST"): self.preupload, ("commit", "POST"): self.commit,
                    ("tree", "GET"): self.tree, ("paths-info", "POST"): self.paths_info, ("refs", "GET"): self.refs,
                }
                if (action, method) in routes:
                    return routes[(action, method)]
        elif len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self.resolve
        raise HubError(404, None, f"no such endpoint: {method} /{'/'.join(parts)}")

    def _authorize(self):
        token = self.server.token
        if token is not None and self.headers.get("Authorization") != f"Bearer {token}":
            raise HubError(401, None, "Invalid credentials in Authorization header")

    def _repo(self, repo_id: str) -> Repo:
        repo = self.server.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "RepoNotFound", f"Repository Not Found for url: {repo_id}")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.at(revision)
        if commit is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    # -- endpoints
    def whoami(self, parts, query, body, method):
        self._authorize()
        self._json(200, {"type": "user", "name": self.server.user, "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"role": "write"}}})

    def create_repo(self, parts, query, body, method):
        self._authorize()
        payload = json.loads(body)
        if payload.get("type", "model") not in (None, "model"):
            raise HubError(400, None, "this test server holds model repos only")
        repo_id = f"{payload.get('organization') or self.server.user}/{payload['name']}"
        url = f"{self.server.endpoint}/{repo_id}"
        if repo_id in self.server.repos:
            return self._json(409, {"error": "You already created this model repo", "url": url})
        initial = Commit(hashlib.sha1(f"init {repo_id} {time.time_ns()}".encode()).hexdigest(), "initial commit", {})
        self.server.repos[repo_id] = Repo(repo_id, payload.get("visibility") == "private", [initial])
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, parts, query, body, method):
        content = json.loads(body)["content"]
        errors = []
        if content.startswith("---"):
            try:
                meta = yaml.safe_load(content.split("---", 2)[1])
                if meta is not None and not isinstance(meta, dict):
                    errors.append({"message": "metadata must be a YAML mapping"})
            except yaml.YAMLError as err:
                errors.append({"message": f"invalid YAML: {err}"})
        self._json(400 if errors else 200, {"errors": errors, "warnings": []})

    def model_info(self, parts, query, body, method):
        repo = self._repo(f"{parts[2]}/{parts[3]}")
        commit = self._commit(repo, parts[5] if len(parts) > 5 else "main")
        card = {}
        readme = commit.files.get("README.md", b"").decode()
        if readme.startswith("---"):
            card = yaml.safe_load(readme.split("---", 2)[1]) or {}
        self._json(200, {
            "_id": repo.repo_id, "id": repo.repo_id, "modelId": repo.repo_id, "sha": commit.oid,
            "private": repo.private, "author": repo.repo_id.split("/")[0], "tags": card.get("tags", []),
            "pipeline_tag": card.get("pipeline_tag"), "cardData": card,
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        })

    def refs(self, parts, query, body, method):
        repo = self._repo(f"{parts[2]}/{parts[3]}")
        main = repo.at("main")
        self._json(200, {"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": main.oid}],
                         "tags": [], "converts": []})

    def preupload(self, parts, query, body, method):
        self._authorize()
        repo = self._repo(f"{parts[2]}/{parts[3]}")
        commit = self._commit(repo, parts[5])
        files = []
        for f in json.loads(body)["files"]:
            entry = {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
            if f["path"] in commit.files:
                entry["oid"] = git_sha1(commit.files[f["path"]])
            files.append(entry)
        self._json(200, {"files": files, "commitOid": commit.oid})

    def commit(self, parts, query, body, method):
        self._authorize()
        repo_id = f"{parts[2]}/{parts[3]}"
        repo = self._repo(repo_id)
        if parts[5] != "main":
            raise HubError(400, None, "this test server commits to main only")
        files = dict(repo.at("main").files)
        message = ""
        for line in body.splitlines():
            if not line.strip():
                continue
            op = json.loads(line)
            key, value = op["key"], op["value"]
            if key == "header":
                message = value.get("summary", "")
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, None, f"unsupported encoding {value.get('encoding')}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {value['path']}")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: c for p, c in files.items() if not p.startswith(prefix)}
            else:
                raise HubError(400, None, f"unsupported commit operation {key!r} (preupload asks for regular files)")
        digest = hashlib.sha1(repo.commits[-1].oid.encode() + message.encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + git_sha1(files[path]).encode())
        oid = digest.hexdigest()
        repo.commits.append(Commit(oid, message, files))
        self._json(200, {"success": True, "commitOid": oid, "commitUrl": f"{self.server.endpoint}/{repo_id}/commit/{oid}"})

    def _entries(self, files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict]:
        prefix = prefix.strip("/")
        base = prefix + "/" if prefix else ""
        out, dirs = [], set()
        for path in sorted(files):
            if not path.startswith(base):
                continue
            rest = path[len(base):].split("/")
            for depth in range(1, len(rest)):
                if recursive or depth == 1:
                    dirs.add(base + "/".join(rest[:depth]))
            if recursive or len(rest) == 1:
                out.append({"type": "file", "oid": git_sha1(files[path]), "size": len(files[path]), "path": path})
        out += [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                for d in sorted(dirs)]
        return out

    def tree(self, parts, query, body, method):
        repo = self._repo(f"{parts[2]}/{parts[3]}")
        commit = self._commit(repo, parts[5])
        prefix = "/".join(parts[6:])
        recursive = query.get("recursive", "false").lower() in ("1", "true")
        if prefix and prefix not in commit.files and not any(p.startswith(prefix + "/") for p in commit.files):
            raise HubError(404, "EntryNotFound", f"{prefix} does not exist on main")
        self._json(200, self._entries(commit.files, prefix, recursive))

    def paths_info(self, parts, query, body, method):
        repo = self._repo(f"{parts[2]}/{parts[3]}")
        commit = self._commit(repo, parts[5])
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(body).get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        entries = {e["path"]: e for e in self._entries(commit.files, "", True)}
        self._json(200, [entries[p] for p in paths if p in entries])

    def resolve(self, parts, query, body, method):
        repo = self._repo(f"{parts[0]}/{parts[1]}")
        commit = self._commit(repo, parts[3])
        path = "/".join(parts[4:])
        if path not in commit.files:
            raise HubError(404, "EntryNotFound", f"Entry not found: {path}")
        data = commit.files[path]
        headers = {"ETag": f'"{git_sha1(data)}"', "X-Repo-Commit": commit.oid,
                   "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        self._send(200, data, headers, head_only=method == "HEAD")


@contextmanager
def use_endpoint(endpoint: str):
    """Point the imported huggingface_hub (and transformers' shared ``HfApi``) at ``endpoint``, online, for the
    duration of the block. huggingface_hub copies ``HF_ENDPOINT`` into ``constants.ENDPOINT``, the resolve-URL
    template and its module-level ``HfApi`` once, at import; those are what is patched (and restored)."""
    import huggingface_hub.constants as constants
    import huggingface_hub.hf_api as hf_api
    import transformers.utils.hub as transformers_hub

    saved = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_OFFLINE,
             hf_api.api.endpoint, transformers_hub._hf_api)
    constants.ENDPOINT = endpoint
    constants.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    constants.HF_HUB_OFFLINE = False
    hf_api.api.endpoint = endpoint
    transformers_hub._hf_api = None  # rebuilt on first use, with the endpoint above
    try:
        yield
    finally:
        (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_OFFLINE,
         hf_api.api.endpoint, transformers_hub._hf_api) = saved
