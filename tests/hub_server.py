"""A loopback stand-in for the part of the Hugging Face Hub HTTP API that huggingface_hub uses to push and pull.

It serves the real client over real HTTP on 127.0.0.1, so tests exercise create_repo, upload_folder,
snapshot_download and diffusers' remote-code download without a network:

- ``POST /api/repos/create``, ``POST /api/validate-yaml``;
- ``POST /api/models/{repo}/preupload/{rev}``: every file "regular" (no LFS, no Xet);
- ``POST /api/models/{repo}/commit/{rev}``: NDJSON ``header``, ``file`` (base64), ``deletedFile``;
- ``GET /api/models/{repo}[/revision/{rev}]`` (id, sha, siblings) and ``GET .../tree/{rev}[/{path}]``;
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit`` and ``ETag``; 404s carry
  ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``).

Commits get git-style ids: blob ids are git's ``sha1("blob <size>\\0" + content)``, and a commit's id
hashes its tree, parent and message, so a commit id changes exactly when the content or history does.
``HubServer.fail_next_commits(n, mode)`` makes the next ``n`` commits fail with a 500 or a dropped
connection, for testing what a push does on a network error; ``HubServer.refuse_files(name, status)``
answers every download of a file of that name with that status (a 401, a 500).

Repo ids must have the form ``namespace/name``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

_API_ROUTE = re.compile(r"^/api/(models|spaces|datasets)/(.+)$")


def git_blob_id(content: bytes) -> str:
    """git's object id for a file's content."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _commit_id(files: dict[str, bytes], parent: str | None, message: str) -> str:
    tree = "".join(f"{path}\0{git_blob_id(data)}\n" for path, data in sorted(files.items()))
    tree_id = hashlib.sha1(tree.encode()).hexdigest()
    body = f"tree {tree_id}\nparent {parent or ''}\n\n{message}"
    return hashlib.sha1(b"commit %d\0" % len(body) + body.encode()).hexdigest()


def _storage_prefix(kind: str) -> str:
    """Models live under their repo id, spaces and datasets under "spaces/" and "datasets/" (as on the Hub)."""
    return "" if kind == "model" else f"{kind}s/"


@dataclass
class _Repo:
    private: bool
    head: str = ""
    kind: str = "model"
    sdk: str | None = None
    # commit id -> the full file tree at that commit
    snapshots: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def commit(self, files: dict[str, bytes], message: str) -> str:
        sha = _commit_id(files, self.head or None, message)
        self.snapshots[sha] = dict(files)
        self.head = sha
        return sha


@dataclass
class _Failure:
    remaining: int = 0
    mode: str = "500"


class HubServer:
    """The server; start with ``start()``, stop with ``stop()``. ``url`` is the endpoint to use."""

    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.commit_failure = _Failure()
        # file name -> the status every request for it gets (refuse_files)
        self.refused_files: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []
        # Environment for a subprocess that should talk to this server (the pytest fixture fills it in).
        self.env: dict[str, str] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def fail_next_commits(self, count: int, mode: str = "500") -> None:
        """Make the next ``count`` commit requests fail: ``"500"`` (server error) or ``"drop"``."""
        if mode not in ("500", "drop"):
            raise ValueError(f"mode must be '500' or 'drop', got {mode!r}")
        self.commit_failure = _Failure(count, mode)

    def refuse_files(self, name: str, status: int) -> None:
        """Answer every request for a file called ``name`` (its ``resolve`` URL, HEAD or GET) with
        ``status``: 401 as the Hub refuses a token, 500 as it fails."""
        self.refused_files[name] = status

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files of ``repo_id`` at ``revision``, for assertions."""
        repo = self.repos[repo_id]
        return dict(repo.snapshots[repo.head if revision == "main" else revision])


def _make_handler(server: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_HubHandler):
        hub = server

    return Handler


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    # -- plumbing ---------------------------------------------------------------------------------

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(self, status: int, code: str | None, message: str) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers)

    def _repo(self, repo_id: str) -> _Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
        return repo

    def _snapshot(self, repo: _Repo, revision: str) -> tuple[str, dict[str, bytes]] | None:
        sha = repo.head if revision == "main" else revision
        if sha not in repo.snapshots:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return sha, repo.snapshots[sha]

    def _route(self) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        self.hub.requests.append((self.command, path))
        query = parse_qs(parts.query)
        with self.hub._lock:
            if self.command == "POST" and path == "/api/repos/create":
                return self._create_repo()
            if self.command == "POST" and path == "/api/validate-yaml":
                self._body()
                return self._json(200, {"errors": [], "warnings": []})
            api = _API_ROUTE.match(path)
            if api:
                return self._api(api.group(2), query, _storage_prefix(api.group(1)[:-1]))
            segments = path.strip("/").split("/")
            if len(segments) >= 5 and segments[2] == "resolve" and self.command in ("GET", "HEAD"):
                refused = self.hub.refused_files.get(segments[-1])
                if refused is not None:
                    return self._error(refused, None, f"refused by the test: {segments[-1]}")
                repo_id = "/".join(segments[:2])
                return self._resolve(repo_id, segments[3], "/".join(segments[4:]))
            self._error(404, None, f"no route for {self.command} {path}")

    do_GET = do_HEAD = do_POST = _route

    # -- endpoints --------------------------------------------------------------------------------

    def _create_repo(self) -> None:
        payload = json.loads(self._body() or b"{}")
        repo_id = f"{payload.get('organization')}/{payload['name']}"
        kind = payload.get("type") or "model"
        url = f"{self.hub.url}/{_storage_prefix(kind)}{repo_id}"
        if _storage_prefix(kind) + repo_id in self.hub.repos:
            return self._json(409, {"error": "You already created this model repo", "url": url})
        repo = _Repo(private=payload.get("visibility") == "private" or bool(payload.get("private")))
        repo.commit(
            {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
            "initial commit",
        )
        repo.kind, repo.sdk = kind, payload.get("sdk")
        self.hub.repos[_storage_prefix(kind) + repo_id] = repo
        self._json(200, {"url": url, "name": repo_id})

    def _api(self, rest: str, query: dict[str, list[str]], prefix: str = "") -> None:
        segments = rest.split("/")
        repo_id, action, tail = "/".join(segments[:2]), segments[2:3], segments[3:]
        repo = self._repo(prefix + repo_id)
        if repo is None:
            self._body()
            return None
        if self.command == "GET" and action in ([], ["revision"]):
            return self._info(repo_id, repo, tail[0] if tail else "main")
        if self.command == "GET" and action == ["tree"]:
            return self._tree(repo, tail[0], "/".join(tail[1:]), query)
        if self.command == "POST" and action == ["preupload"]:
            payload = json.loads(self._body())
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                for f in payload["files"]
            ]
            return self._json(200, {"files": files, "commitOid": repo.head})
        if self.command == "POST" and action == ["commit"]:
            return self._commit(repo_id, repo, self._body())
        self._error(404, None, f"no route for {self.command} {rest}")

    def _info(self, repo_id: str, repo: _Repo, revision: str) -> None:
        found = self._snapshot(repo, revision)
        if found is None:
            return
        sha, files = found
        self._json(
            200,
            {
                "id": repo_id,
                "modelId": repo_id,
                "sha": sha,
                "private": repo.private,
                "tags": [],
                "siblings": [{"rfilename": path} for path in sorted(files)],
            },
        )

    def _tree(self, repo: _Repo, revision: str, prefix: str, query: dict[str, list[str]]) -> None:
        found = self._snapshot(repo, revision)
        if found is None:
            return
        _, files = found
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        base = f"{prefix}/" if prefix else ""
        entries, folders = [], set()
        for path in sorted(files):
            if not path.startswith(base):
                continue
            relative = path[len(base) :]
            if "/" in relative and not recursive:
                folders.add(base + relative.split("/")[0])
                continue
            for depth in range(1, relative.count("/") + 1):
                folders.add(base + "/".join(relative.split("/")[:depth]))
            data = files[path]
            entries.append(
                {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": path}
            )
        entries += [
            {"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
            for f in sorted(folders)
        ]
        self._json(200, entries)

    def _commit(self, repo_id: str, repo: _Repo, body: bytes) -> None:
        failure = self.hub.commit_failure
        if failure.remaining > 0:
            failure.remaining -= 1
            if failure.mode == "drop":
                self.close_connection = True
                self.connection.close()
                return
            return self._error(
                500, None, "Internal Error - We're working hard to fix this as soon as possible!"
            )
        files = dict(repo.snapshots[repo.head])
        message = ""
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value.get("summary", "")
            elif key == "file":
                if value.get("encoding") != "base64":
                    return self._error(
                        400, None, f"unsupported file encoding {value.get('encoding')!r}"
                    )
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(prefix)}
            else:
                return self._error(
                    400, None, f"unsupported commit operation {key!r} (LFS is not served)"
                )
        sha = repo.commit(files, message)
        self._json(
            200,
            {
                "commitUrl": f"{self.hub.url}/{repo_id}/commit/{sha}",
                "commitOid": sha,
                "pullRequestUrl": None,
            },
        )

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        found = self._snapshot(repo, revision)
        if found is None:
            return
        sha, files = found
        if path not in files:
            return self._error(404, "EntryNotFound", f"Entry not found: {path}")
        data = files[path]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{git_blob_id(data)}"'}
        self._send(200, data, headers, content_type="application/octet-stream")
