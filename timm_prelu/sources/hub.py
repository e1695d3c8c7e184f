"""Fetching a published model from the Hugging Face Hub, verified, and the Hub's errors in words a user can act on.

The weights are downloaded with ``huggingface_hub`` into its cache and checked against the checksum the Hub gave
for them (an LFS file's etag is its sha256, the cache names the blob after it); a damaged cached copy is removed and
fetched once more, a damaged file on the Hub is never kept. ``config.json`` is then fetched at the same commit, so
weights and configuration always belong together.
"""
import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

from ..errors import HubError, HubFileNotFoundError, TimmPreluError
from ..formatting import first_line

__all__ = ['HubSnapshot', 'fetch_hub_model', 'hub_errors', 'verify_safetensors', 'sha256_file', 'WEIGHTS_NAME',
           'CONFIG_NAME']

WEIGHTS_NAME = 'model.safetensors'  # timm's HF_SAFE_WEIGHTS_NAME
CONFIG_NAME = 'config.json'
PUBLISH_HINT = 'publish it with timm_prelu.hub.push_checkpoint (`timm-prelu push`) or timm\'s push_to_hf_hub'


@dataclass
class HubSnapshot:
    """A verified model in the local Hugging Face cache: its folder at one commit, and its weights' sha256."""
    repo_id: str
    commit: str
    folder: Path
    weights: Path
    sha256: str


def _endpoint() -> str:
    from huggingface_hub import constants
    return constants.ENDPOINT


def _http_error_type() -> type:
    """The HTTP library's base error (httpx2 for huggingface_hub 2.x, httpx for 1.x)."""
    try:
        from httpx2 import HTTPError
    except ImportError:
        try:
            from httpx import HTTPError
        except ImportError:
            return OSError
    return HTTPError


def _nothing_changed(action: str) -> str:
    return 'nothing was committed, the repo is unchanged' if action == 'pushing to' else 'nothing was cached'


def _http_message(e, repo_id: str, action: str, has_token: bool) -> str:
    """What an HTTP error from the Hub API means for the user, by status and the Hub's X-Error-Message."""
    status = e.response.status_code if e.response is not None else None
    server = (e.response.headers.get('X-Error-Message') if e.response is not None else None) or ''
    if status == 401 and 'Invalid credentials' in server:
        return (f'the Hugging Face token was rejected (invalid or expired): create a new one at '
                f'{_endpoint()}/settings/tokens and log in with `hf auth login` (or set HF_TOKEN)')
    access = 'write' if action == 'pushing to' else 'read'
    if status == 401:
        if not has_token:
            return (f'{action} {repo_id} needs a Hugging Face token and none is set: log in with `hf auth login` '
                    f'using a token with {access} access (or set HF_TOKEN)')
        return (f'{action} {repo_id} was refused (401 Unauthorized): log in again with `hf auth login` using a '
                f'token with {access} access (or set HF_TOKEN)')
    if status == 403:
        return (f'your token may not write to {repo_id.split("/")[0]} ({server or "403 Forbidden"}): use a token '
                f'with write access to that namespace (`hf auth login`, or HF_TOKEN)')
    return (f'{action} {repo_id} failed: {first_line(e)}; {_nothing_changed(action)}: check the connection to '
            f'{_endpoint()} (HF_ENDPOINT) and run again')


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: Optional[str], action: str, filename: str = WEIGHTS_NAME,
               param: str = 'source') -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one-line HubErrors that name the fix (cause chained)."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import (
        GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, RemoteEntryNotFoundError,
        RepositoryNotFoundError, RevisionNotFoundError)
    where = f'{repo_id}@{revision}' if revision else repo_id
    try:
        yield
    except TimmPreluError:
        raise
    except GatedRepoError as e:
        raise HubError(f'{repo_id} is gated: request access at {_endpoint()}/{repo_id}, then log in with '
                       f'`hf auth login` (or set HF_TOKEN)', param=param) from e
    except RepositoryNotFoundError as e:
        raise HubError(f'repo {repo_id} not found on {_endpoint()} (or it is private and your token cannot read '
                       f'it): check the name, or log in with `hf auth login` / HF_TOKEN as a user with access',
                       param=param) from e
    except RevisionNotFoundError as e:
        raise HubError(f'revision {revision!r} does not exist in {repo_id}: give an existing branch, tag or commit '
                       f'(e.g. main)', param=param) from e
    except RemoteEntryNotFoundError as e:
        raise HubFileNotFoundError(f'{where} has no {filename}: it is not a timm model repo; {PUBLISH_HINT}',
                                   param=param) from e
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        raise HubError(f'{where} is not in the local Hugging Face cache and offline mode (HF_HUB_OFFLINE=1) '
                       f'forbids downloading it: fetch it once online (e.g. `hf download {repo_id}`) or unset '
                       f'HF_HUB_OFFLINE', param=param) from e
    except HfHubHTTPError as e:
        raise HubError(_http_message(e, repo_id, action, get_token() is not None), param=param) from e
    except RuntimeError as e:
        if isinstance(e.__cause__, HfHubHTTPError):  # huggingface_hub wraps failed LFS uploads to the storage
            raise HubError(f'{action} {where} failed: {e} ({first_line(e.__cause__)}); '
                           f'{_nothing_changed(action)}: run again', param=param) from e
        raise
    except (_http_error_type(), OSError) as e:
        raise HubError(f'{action} {where} failed: {first_line(e)}; {_nothing_changed(action)}: check the '
                       f'connection to {_endpoint()} (HF_ENDPOINT) and run again', param=param) from e


def sha256_file(path: Union[str, os.PathLike]) -> str:
    """Hex sha256 of a file, read in 4 MB chunks."""
    path = Path(path)
    h = hashlib.sha256()
    with path.open('rb') as f:
        for chunk in iter(lambda: f.read(1 << 22), b''):
            h.update(chunk)
    return h.hexdigest()


def verify_safetensors(path: Union[str, os.PathLike]) -> Tuple[Optional[str], Optional[str]]:
    """(why ``path`` is not a sound safetensors file or None, its sha256 when computed).

    A Hub cache blob is named after the checksum the Hub gave (sha256 for LFS files, git's sha1 otherwise); its
    content must match it. Then the safetensors header must parse.
    """
    from safetensors import safe_open
    real = Path(os.path.realpath(path))
    name = real.name
    sha256 = None
    if re.fullmatch(r'[0-9a-f]{64}', name) or re.fullmatch(r'[0-9a-f]{40}', name):
        if len(name) == 64:
            sha256 = sha256_file(real)
            ok = sha256 == name
        else:
            git = hashlib.sha1(b'blob %d\0' % real.stat().st_size)
            with real.open('rb') as f:
                for chunk in iter(lambda: f.read(1 << 22), b''):
                    git.update(chunk)
            ok = git.hexdigest() == name
        if not ok:
            return 'its content does not match the checksum the Hub gave for it', None
    try:
        with safe_open(str(real), framework='pt') as f:
            f.keys()
    except Exception as e:  # SafetensorError for bad headers / files shorter than their header says
        return f'it is not a valid safetensors file ({e})', None
    return None, sha256 or sha256_file(real)


def _evict(path: Union[str, os.PathLike]) -> None:
    """Remove a cached file (the snapshot link and the blob it points to) so the next call downloads it again."""
    real = os.path.realpath(path)
    for p in {str(path), real}:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def fetch_hub_model(
        repo_id: str,
        revision: Optional[str] = None,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        token: Optional[str] = None,
) -> HubSnapshot:
    """Download (or find cached) a repo's model.safetensors, verified, then its config.json at the same commit."""
    from huggingface_hub import hf_hub_download
    where = f'{repo_id}@{revision}' if revision else repo_id
    problem = None
    for _ in range(2):
        with hub_errors(repo_id, revision, 'downloading'):
            path = hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision, cache_dir=cache_dir, token=token)
        problem, sha256 = verify_safetensors(path)
        if problem is None:
            break
        _evict(path)
        if 'checksum' not in problem:
            break  # the file itself is bad, not our copy of it: downloading again cannot help
    if problem is not None:
        raise HubError(f'{WEIGHTS_NAME} of {where} is corrupt or truncated: {problem}. It was removed from the '
                       f'cache; if it keeps happening the file on the Hub is broken: publish it again',
                       param='source')
    weights = Path(path)
    commit = weights.parent.name  # the cache keeps each commit's files in snapshots/<commit>/
    with hub_errors(repo_id, commit, 'downloading', CONFIG_NAME):
        hf_hub_download(repo_id, CONFIG_NAME, revision=commit, cache_dir=cache_dir, token=token)
    return HubSnapshot(repo_id=repo_id, commit=commit, folder=weights.parent, weights=weights, sha256=sha256)
