"""A small Hugging Face Hub on 127.0.0.1 for tests: the HTTP API that `huggingface_hub` (2.x) and `hf` use.

It speaks the parts of the Hub API that publishing and fetching a model touch, with the Hub's own status codes
and error headers so that the real client raises its real exceptions:

* ``POST /api/repos/create``, ``POST /api/{type}s/{repo}/branch/{branch}``, ``POST /api/validate-yaml``,
  ``GET /api/whoami-v2``
* ``POST /api/{type}s/{repo}/preupload/{rev}``, the git-LFS batch API ``POST /{repo}.git/info/lfs/objects/batch``
  with basic ``PUT`` transfers, and the NDJSON ``POST /api/{type}s/{repo}/commit/{rev}`` (one atomic commit)
* ``GET /api/{type}s/{repo}[/revision/{rev}]`` (repo info), ``GET /api/{type}s/{repo}/tree/{rev}``
* ``GET``/``HEAD /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag`` (git blob id, or the sha256 of
  LFS files with ``X-Linked-Etag`` / ``X-Linked-Size``), ``Content-Length`` and byte ranges
* Bearer-token auth: 401 ``Invalid credentials in Authorization header`` for an unknown token, 401 for writes
  without one, 403 for writes with a read token, 401/404 + ``X-Error-Code: RepoNotFound`` for missing or private
  repos, ``RevisionNotFound`` and ``EntryNotFound`` as the Hub sends them.

Xet storage is not served: clients must run with ``HF_HUB_DISABLE_XET=1`` (LFS uploads and plain downloads).
``faults`` lets a test break one upload or truncate one download to check what a failure leaves behind.
"""
import base64
import hashlib
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

__all__ = ['HubServer', 'Fault', 'client_env', 'point_client_at']

LFS_SUFFIXES = ('.safetensors', '.onnx', '.bin', '.pt', '.pth', '.tar', '.ckpt', '.h5', '.msgpack', '.npz', '.zip')
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = ''.join(f'*{s} filter=lfs diff=lfs merge=lfs -text\n' for s in LFS_SUFFIXES).encode()


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f'version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n'.encode()


@dataclass
class Blob:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def oid(self) -> str:
        """The git object id: of the content, or of the LFS pointer for LFS files (as git stores them)."""
        return git_blob_id(lfs_pointer(self.sha256, len(self.data)) if self.lfs else self.data)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    branches: Dict[str, str] = field(default_factory=dict)
    commits: Dict[str, Dict[str, Blob]] = field(default_factory=dict)  # commit sha -> tree (path -> blob)


@dataclass
class Fault:
    """Make the next ``times`` matching requests fail: kind 'lfs_put' or 'commit' (answer ``status``), or
    'truncate' (a GET of ``path`` ends half way)."""
    kind: str
    path: Optional[str] = None
    status: int = 403
    message: str = 'Request has expired'
    times: int = 1


class HubError(Exception):
    def __init__(self, status: int, message: str, code: Optional[str] = None, headers: Optional[dict] = None,
                 body: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = body or {}


class HubState:
    """Repos, LFS objects and tokens; every change happens under one lock so a commit is all or nothing."""

    def __init__(self, tokens: Dict[str, Tuple[str, bool]]):
        self.tokens = tokens  # token -> (user, can_write)
        self.repos: Dict[str, Repo] = {}
        self.lfs: Dict[str, bytes] = {}
        self.faults: List[Fault] = []
        self.requests: List[Tuple[str, str]] = []
        self.lock = threading.RLock()
        self._counter = itertools.count()

    def new_commit(self, repo: Repo, branch: str, tree: Dict[str, Blob], message: str) -> str:
        parent = repo.branches.get(branch, '')
        digest = hashlib.sha1(f'{repo.repo_id}\n{parent}\n{message}\n{next(self._counter)}'.encode())
        for path in sorted(tree):
            digest.update(f'{path}:{tree[path].oid}\n'.encode())
        sha = digest.hexdigest()
        repo.commits[sha] = dict(tree)
        repo.branches[branch] = sha
        return sha

    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        with self.lock:
            repo = Repo(repo_id, private=private)
            self.repos[repo_id] = repo
            self.new_commit(repo, 'main', {'.gitattributes': Blob(GITATTRIBUTES, lfs=False)}, 'initial commit')
            return repo

    def commit_files(self, repo_id: str, files: Dict[str, bytes], private: bool = False, branch: str = 'main') -> str:
        """Test helper: commit ``files`` directly (creating the repo if needed), e.g. to publish a broken repo."""
        with self.lock:
            repo = self.repos.get(repo_id) or self.create_repo(repo_id, private=private)
            tree = dict(repo.commits[repo.branches[branch]])
            for path, data in files.items():
                tree[path] = Blob(data, lfs=is_lfs_path(path, len(data)))
                if tree[path].lfs:
                    self.lfs[tree[path].sha256] = data
            return self.new_commit(repo, branch, tree, 'test commit')

    def take_fault(self, kind: str, path: Optional[str] = None) -> Optional[Fault]:
        with self.lock:
            for fault in self.faults:
                if fault.kind == kind and fault.path in (None, path) and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None


def is_lfs_path(path: str, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server: 'HubServer'

    def log_message(self, format, *args):  # noqa: A002  (keep test output clean)
        pass

    # --- plumbing ---------------------------------------------------------------------------------------------
    @property
    def state(self) -> HubState:
        return self.server.state

    def _body(self) -> bytes:
        if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b';')[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b'\r\n', b'\n', b''):
                        pass
                    return b''.join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get('Content-Length') or 0)
        return self.rfile.read(length) if length else b''

    def _send(self, status: int, body: bytes = b'', headers: Optional[dict] = None, head: bool = False,
              length: Optional[int] = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header('Content-Length', str(len(body) if length is None else length))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: Optional[dict] = None, head: bool = False) -> None:
        self._send(status, json.dumps(obj).encode(), {'Content-Type': 'application/json', **(headers or {})}, head)

    def _user(self) -> Optional[Tuple[str, bool]]:
        auth = self.headers.get('Authorization')
        if not auth:
            return None
        token = auth[len('Bearer '):] if auth.startswith('Bearer ') else auth
        if token not in self.state.tokens:
            raise HubError(401, 'Invalid credentials in Authorization header')
        return self.state.tokens[token]

    def _writer(self, namespace: str) -> str:
        user = self._user()
        if user is None:
            raise HubError(401, 'Invalid username or password.')
        name, can_write = user
        if not can_write:
            raise HubError(403, f'You don\'t have the rights to write to the namespace "{namespace}": '
                                f'your token is read-only')
        return name

    def _repo(self, repo_id: str, write: bool = False) -> Repo:
        user = self._writer(repo_id.split('/')[0]) if write else self._user()
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and user is None):
            status = 401 if user is None else 404
            raise HubError(status, 'Repository not found', code='RepoNotFound')
        return repo

    def _commit(self, repo: Repo, revision: str) -> str:
        revision = unquote(revision)
        if revision in repo.branches:
            return repo.branches[revision]
        if revision in repo.commits:
            return revision
        raise HubError(404, f'Invalid rev id: {revision}', code='RevisionNotFound')

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        segments = url.path.split('/')[1:]  # still quoted: a revision may contain an encoded '/'
        query = parse_qs(url.query)
        with self.state.lock:
            self.state.requests.append((method, url.path))
        try:
            handler, args = self._route(method, [unquote(s) for s in segments], segments)
            if handler is None:
                raise HubError(404, f'Not found: {method} {url.path}')
            handler(*args, query=query, head=(method == 'HEAD'))
        except HubError as e:
            headers = {'X-Error-Message': e.message, **e.headers}
            if e.code:
                headers['X-Error-Code'] = e.code
            self._json(e.status, {'error': e.message, **e.body}, headers, head=(method == 'HEAD'))

    def _route(self, method: str, seg: List[str], raw: List[str]):
        if method == 'POST' and seg[:3] == ['api', 'repos', 'create']:
            return self.create_repo, ()
        if method == 'POST' and seg[:2] == ['api', 'validate-yaml']:
            return self.validate_yaml, ()
        if method == 'GET' and seg[:2] == ['api', 'whoami-v2']:
            return self.whoami, ()
        if seg[:1] == ['api'] and len(seg) >= 4 and seg[1] == 'models':
            repo_id, rest, raw_rest = '/'.join(seg[2:4]), seg[4:], raw[4:]
            if method == 'GET' and not rest:
                return self.repo_info, (repo_id, 'main')
            if method == 'GET' and rest[0] == 'revision' and len(rest) >= 2:
                return self.repo_info, (repo_id, '/'.join(raw_rest[1:]))
            if method == 'GET' and rest[0] == 'tree' and len(rest) >= 2:
                return self.tree, (repo_id, raw_rest[1], '/'.join(rest[2:]))
            if method == 'POST' and rest[0] == 'preupload' and len(rest) >= 2:
                return self.preupload, (repo_id, raw_rest[1])
            if method == 'POST' and rest[0] == 'commit' and len(rest) >= 2:
                return self.commit, (repo_id, raw_rest[1])
            if method == 'POST' and rest[0] == 'branch' and len(rest) >= 2:
                return self.create_branch, (repo_id, '/'.join(rest[1:]))
        lfs_batch = ['info', 'lfs', 'objects', 'batch']
        if method == 'POST' and len(seg) == 6 and seg[1].endswith('.git') and seg[2:] == lfs_batch:
            return self.lfs_batch, (f'{seg[0]}/{seg[1][:-4]}',)
        if method == 'PUT' and len(seg) == 2 and seg[0] == '_lfs':
            return self.lfs_put, (seg[1],)
        if method in ('GET', 'HEAD') and len(seg) >= 5 and seg[2] == 'resolve':
            return self.resolve, ('/'.join(seg[:2]), raw[3], '/'.join(seg[4:]))
        return None, ()

    def do_GET(self):
        self._dispatch('GET')

    def do_HEAD(self):
        self._dispatch('HEAD')

    def do_POST(self):
        self._dispatch('POST')

    def do_PUT(self):
        self._dispatch('PUT')

    # --- endpoints --------------------------------------------------------------------------------------------
    def whoami(self, query, head):
        user = self._user()
        if user is None:
            raise HubError(401, 'Invalid username or password.')
        self._json(200, {'type': 'user', 'name': user[0], 'orgs': [],
                         'auth': {'accessToken': {'role': 'write' if user[1] else 'read'}}})

    def create_repo(self, query, head):
        payload = json.loads(self._body() or b'{}')
        namespace = payload.get('organization')
        user = self._writer(namespace or '')
        if payload.get('type', 'model') != 'model':
            raise HubError(400, 'This test hub only hosts model repos')
        repo_id = f'{namespace or user}/{payload["name"]}'
        url = f'{self.server.url}/{repo_id}'
        with self.state.lock:
            if repo_id in self.state.repos:
                raise HubError(409, 'You already created this model repo', body={'url': url})
            private = payload.get('visibility') == 'private' or bool(payload.get('private'))
            self.state.create_repo(repo_id, private=private)
        self._json(200, {'url': url, 'name': repo_id, 'id': repo_id})

    def create_branch(self, repo_id, branch, query, head):
        repo = self._repo(repo_id, write=True)
        payload = json.loads(self._body() or b'{}')
        with self.state.lock:
            if branch in repo.branches:
                raise HubError(409, f'Reference already exists: refs/heads/{branch}')
            start = self._commit(repo, payload.get('startingPoint') or 'main')
            repo.branches[branch] = start
        self._json(200, {})

    def validate_yaml(self, query, head):
        payload = json.loads(self._body() or b'{}')
        match = re.match(r'^---\n(.*?)\n---\n', payload.get('content', ''), flags=re.S)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as e:
            self._json(400, {'errors': [{'message': f'Invalid YAML: {e}'}]})
            return
        if metadata is not None and not isinstance(metadata, dict):
            self._json(400, {'errors': [{'message': 'YAML metadata must be a mapping'}]})
            return
        self._json(200, {'errors': [], 'warnings': []})

    def repo_info(self, repo_id, revision, query, head):
        repo = self._repo(repo_id)
        sha = self._commit(repo, revision)
        tree = repo.commits[sha]
        self._json(200, {
            'id': repo_id, 'modelId': repo_id, 'author': repo_id.split('/')[0], 'sha': sha,
            'private': repo.private, 'gated': False, 'disabled': False, 'tags': [],
            'lastModified': datetime.now(timezone.utc).isoformat().replace('+00:00', 'Z'),
            'siblings': [{'rfilename': p} for p in sorted(tree)],
        })

    def tree(self, repo_id, revision, path, query, head):
        repo = self._repo(repo_id)
        tree = repo.commits[self._commit(repo, revision)]
        entries = []
        for p in sorted(tree):
            if path and not p.startswith(path.rstrip('/') + '/'):
                continue
            blob = tree[p]
            entry = {'type': 'file', 'oid': blob.oid, 'size': len(blob.data), 'path': p}
            if blob.lfs:
                entry['lfs'] = {'oid': blob.sha256, 'size': len(blob.data),
                                'pointerSize': len(lfs_pointer(blob.sha256, len(blob.data)))}
            entries.append(entry)
        self._json(200, entries)

    def preupload(self, repo_id, revision, query, head):
        repo = self._repo(repo_id, write=True)
        tree = repo.commits[self._commit(repo, revision)]
        files = []
        for f in json.loads(self._body())['files']:
            lfs = is_lfs_path(f['path'], f['size'])
            existing = tree.get(f['path'])
            oid = None if existing is None else (existing.sha256 if existing.lfs else existing.oid)
            files.append({'path': f['path'], 'uploadMode': 'lfs' if lfs else 'regular', 'shouldIgnore': False,
                          'oid': oid})
        self._json(200, {'files': files, 'commitOid': repo.branches.get(unquote(revision))})

    def lfs_batch(self, repo_id, query, head):
        self._repo(repo_id, write=True)
        payload = json.loads(self._body())
        if payload.get('operation') != 'upload':
            raise HubError(400, 'This test hub serves downloads through /resolve only')
        objects = []
        for obj in payload['objects']:
            entry = {'oid': obj['oid'], 'size': obj['size'], 'authenticated': True}
            if obj['oid'] not in self.state.lfs:
                entry['actions'] = {'upload': {'href': f'{self.server.url}/_lfs/{obj["oid"]}', 'expires_in': 900}}
            objects.append(entry)
        self._json(200, {'transfer': 'basic', 'objects': objects, 'hash_algo': 'sha256'},
                    {'Content-Type': 'application/vnd.git-lfs+json'})

    def lfs_put(self, oid, query, head):
        data = self._body()
        fault = self.state.take_fault('lfs_put')
        if fault is not None:
            raise HubError(fault.status, fault.message)
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, 'Uploaded content does not match its sha256 oid')
        with self.state.lock:
            self.state.lfs[oid] = data
        self._send(200)

    def commit(self, repo_id, revision, query, head):
        repo = self._repo(repo_id, write=True)
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if not lines or lines[0].get('key') != 'header':
            raise HubError(400, 'The commit payload must start with a header line')
        header = lines[0]['value']
        branch = unquote(revision)
        fault = self.state.take_fault('commit')
        if fault is not None:
            raise HubError(fault.status, fault.message)
        with self.state.lock:
            if branch not in repo.branches:
                raise HubError(404, f'Invalid rev id: {branch}', code='RevisionNotFound')
            parent = header.get('parentCommit')
            if parent is not None and parent != repo.branches[branch]:
                raise HubError(412, 'A commit has happened since the parent commit. Please retry.')
            tree = dict(repo.commits[repo.branches[branch]])
            for line in lines[1:]:
                key, value = line['key'], line['value']
                if key == 'file':
                    tree[value['path']] = Blob(base64.b64decode(value['content']), lfs=False)
                elif key == 'lfsFile':
                    data = self.state.lfs.get(value['oid'])
                    if data is None:
                        raise HubError(422, f'LFS object {value["oid"]} for {value["path"]} was never uploaded')
                    tree[value['path']] = Blob(data, lfs=True)
                elif key == 'deletedFile':
                    if tree.pop(value['path'], None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {value['path']}",
                                       code='EntryNotFound')
                elif key == 'deletedFolder':
                    for p in [p for p in tree if p.startswith(value['path'].rstrip('/') + '/')]:
                        del tree[p]
                else:
                    raise HubError(400, f'Unknown commit operation {key!r}')
            sha = self.state.new_commit(repo, branch, tree, header.get('summary', ''))
        self._json(200, {'success': True, 'commitOid': sha, 'commitUrl': f'{self.server.url}/{repo_id}/commit/{sha}',
                         'hookOutput': ''})

    def resolve(self, repo_id, revision, path, query, head):
        repo = self._repo(repo_id)
        sha = self._commit(repo, revision)
        blob = repo.commits[sha].get(path)
        if blob is None:
            raise HubError(404, 'Entry not found', code='EntryNotFound', headers={'X-Repo-Commit': sha})
        headers = {'X-Repo-Commit': sha, 'ETag': f'"{blob.etag}"', 'Accept-Ranges': 'bytes',
                   'Content-Type': 'application/octet-stream'}
        if blob.lfs:
            headers.update({'X-Linked-Etag': f'"{blob.sha256}"', 'X-Linked-Size': str(len(blob.data))})
        data = blob.data
        if head:
            self._send(200, headers=headers, head=True, length=len(data))
            return
        if self.state.take_fault('truncate', path) is not None:
            self._send(200, data[:len(data) // 2], headers)
            return
        match = re.fullmatch(r'bytes=(\d+)-(\d*)', self.headers.get('Range', ''))
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            headers['Content-Range'] = f'bytes {start}-{end}/{len(data)}'
            self._send(206, data[start:end + 1], headers)
            return
        self._send(200, data, headers)


class HubServer(ThreadingHTTPServer):
    """The test hub, serving on 127.0.0.1 from a background thread (``with HubServer(...) as hub:``)."""
    daemon_threads = True

    def __init__(self, tokens: Optional[Dict[str, Tuple[str, bool]]] = None):
        super().__init__(('127.0.0.1', 0), HubHandler)
        self.state = HubState(tokens or {})
        self.url = f'http://127.0.0.1:{self.server_address[1]}'
        self._thread = threading.Thread(target=self.serve_forever, name='hub-server', daemon=True)

    def __enter__(self) -> 'HubServer':
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join()


def client_env(url: str, home) -> Dict[str, str]:
    """Environment that points huggingface_hub / `hf` at this hub, with a private HF_HOME and cache."""
    return {
        'HF_ENDPOINT': url, 'HF_HOME': str(home), 'HF_HUB_CACHE': f'{home}/hub',
        'HF_HUB_DISABLE_XET': '1', 'HF_HUB_DISABLE_TELEMETRY': '1', 'HF_HUB_DISABLE_PROGRESS_BARS': '1',
        'HF_HUB_DISABLE_UPDATE_CHECK': '1',
    }


def point_client_at(monkeypatch, url: str, home) -> None:
    """Point this process's huggingface_hub at the hub: env vars for subprocesses, and the constants the
    library read from them at import time (it was imported before any fixture ran)."""
    from huggingface_hub import constants
    for key, value in client_env(url, home).items():
        monkeypatch.setenv(key, value)
    for key in ('HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN', 'HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE'):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(constants, 'ENDPOINT', url)
    monkeypatch.setattr(constants, 'HUGGINGFACE_CO_URL_TEMPLATE', url + '/{repo_id}/resolve/{revision}/{filename}')
    monkeypatch.setattr(constants, 'HF_HOME', str(home))
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', f'{home}/hub')
    monkeypatch.setattr(constants, 'HF_TOKEN_PATH', f'{home}/token')
    monkeypatch.setattr(constants, 'HF_STORED_TOKENS_PATH', f'{home}/stored_tokens')
    monkeypatch.setattr(constants, 'HF_HUB_DISABLE_XET', True)
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
