"""Where timm's train.py comes from: the lookup order, and the download into the user cache.

The download is tested against a real HTTP server on 127.0.0.1 serving the very train.py the suite found.
"""
import http.server
import socket
import threading
from pathlib import Path

import pytest
import timm

from timm_prelu.cli import main as cli_main
from timm_prelu.errors import TrainScriptError
from timm_prelu.training import train_script as ts
from timm_prelu.training.launcher import find_train_script as launcher_find_train_script


class _Server:
    """A static file server on 127.0.0.1 that counts the requests it answers."""

    def __init__(self, root: Path):
        self.requests = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def no_local_script(tmp_path, monkeypatch):
    """No $TIMM_TRAIN_SCRIPT, no ./pytorch-image-models, an empty user cache in tmp."""
    work = tmp_path / 'work'
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv(ts.TRAIN_SCRIPT_ENV, raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    return tmp_path / 'cache' / 'timm-prelu'


@pytest.fixture
def served(tmp_path, train_script, monkeypatch):
    """A server holding `v<timm version>/train.py` (the real script) and TIMM_TRAIN_SCRIPT_URL pointing at it."""
    root = tmp_path / 'www'
    (root / f'v{timm.__version__}').mkdir(parents=True)
    (root / f'v{timm.__version__}' / 'train.py').write_bytes(train_script.read_bytes())
    server = _Server(root)
    monkeypatch.setenv(ts.TRAIN_SCRIPT_URL_ENV, server.url + '/v{version}/train.py')
    yield server, root
    server.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _assert_names_both_ways_out(error: TrainScriptError):
    message = str(error)
    assert '\n' not in message
    assert ts.TRAIN_SCRIPT_ENV in message and 'git clone https://github.com/huggingface/pytorch-image-models' in message
    assert 'network' in message
    assert error.__cause__ is not None


def test_download_into_user_cache_then_cache_hit(no_local_script, served, train_script, capsys):
    server, _ = served
    script = ts.find_train_script()
    assert script == (no_local_script / f'train-{timm.__version__}.py').resolve()
    assert script.read_bytes() == train_script.read_bytes()
    assert server.requests == [f'/v{timm.__version__}/train.py']
    err = capsys.readouterr().err
    assert f'{server.url}/v{timm.__version__}/train.py' in err and str(script) in err  # where from, where to
    assert sorted(p.name for p in no_local_script.iterdir()) == [script.name]  # no temp file left behind
    # The downloaded script is one the launcher can use: train.py's own parser reads its flags.
    from timm_prelu.training.launcher import parse_train_args
    assert parse_train_args(['--model', 'prelu_model_a'], script).model == 'prelu_model_a'

    assert ts.find_train_script() == script  # cache hit: no second download
    assert len(server.requests) == 1
    server.close()
    assert launcher_find_train_script() == script  # still found with the server gone


def test_download_404_is_one_line_and_saves_nothing(no_local_script, served):
    server, root = served
    (root / f'v{timm.__version__}' / 'train.py').unlink()
    with pytest.raises(TrainScriptError, match='HTTP 404') as e:
        ts.find_train_script()
    _assert_names_both_ways_out(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert not no_local_script.exists() or not any(no_local_script.iterdir())


def test_unreachable_server_is_one_line_naming_both_ways_out(no_local_script, monkeypatch, capsys):
    url = f'http://127.0.0.1:{_closed_port()}/v{{version}}/train.py'
    monkeypatch.setenv(ts.TRAIN_SCRIPT_URL_ENV, url)
    with pytest.raises(TrainScriptError) as e:
        ts.find_train_script()
    _assert_names_both_ways_out(e.value)
    assert url.format(version=timm.__version__) in str(e.value)
    assert not no_local_script.exists() or not any(no_local_script.iterdir())
    capsys.readouterr()
    # The command line gives the same message as one line and exits 2.
    assert cli_main(['train', '--dry-run', '--', '--epochs', '1']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("timm's train.py: downloading")  # says what it tried
    assert len(err) == 2 and err[1].startswith('timm-prelu train: error:')
    assert ts.TRAIN_SCRIPT_ENV in err[1] and 'network' in err[1]


@pytest.mark.parametrize('content', ['html', 'truncated', 'other_python', 'too_large'])
def test_corrupt_download_is_refused(no_local_script, served, train_script, content):
    _, root = served
    real = train_script.read_bytes()
    data = {
        'html': b'<!DOCTYPE html><html><body>Rate limit exceeded</body></html>',
        'truncated': real[:len(real) // 2],
        'other_python': b'import argparse\nprint("hello")\n',
        'too_large': b'#' * (ts.MAX_SCRIPT_BYTES + 1),
    }[content]
    (root / f'v{timm.__version__}' / 'train.py').write_bytes(data)
    with pytest.raises(TrainScriptError, match="not timm's train.py") as e:
        ts.find_train_script()
    _assert_names_both_ways_out(e.value)
    assert not no_local_script.exists() or not any(no_local_script.iterdir())


def test_lookup_order(no_local_script, train_script, tmp_path, monkeypatch):
    monkeypatch.setenv(ts.TRAIN_SCRIPT_URL_ENV, f'http://127.0.0.1:{_closed_port()}/{{version}}/train.py')
    cached = no_local_script / f'train-{timm.__version__}.py'
    cached.parent.mkdir(parents=True)
    cached.write_bytes(train_script.read_bytes())
    assert ts.find_train_script() == cached.resolve()  # the user cache
    checkout = Path.cwd() / 'pytorch-image-models'
    checkout.mkdir()
    (checkout / 'train.py').write_text('')
    assert ts.find_train_script() == (checkout / 'train.py').resolve()  # ./pytorch-image-models beats the cache
    monkeypatch.setenv(ts.TRAIN_SCRIPT_ENV, str(train_script))
    assert ts.find_train_script() == train_script.resolve()  # the environment beats the current directory
    assert ts.find_train_script(checkout) == (checkout / 'train.py').resolve()  # an explicit path beats all


def test_named_script_that_is_missing_is_an_error_not_a_download(no_local_script, served, tmp_path, capsys):
    server, _ = served
    missing = tmp_path / 'nope' / 'train.py'
    with pytest.raises(TrainScriptError, match='git clone') as e:
        ts.find_train_script(missing)
    assert e.value.param == 'path' and str(missing) in str(e.value)
    assert cli_main(['train', '--timm-script', str(missing), '--', '--epochs', '1']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err and 'git clone' in err
    assert server.requests == []
