"""Publishing and fetching through the Hugging Face Hub, the timm way, against a local Hub (tests/hub_server.py).

The real huggingface_hub client and `hf` CLI talk HTTP to the server; timm's own loaders read what was pushed.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

from hub_server import Fault, HubServer, client_env, point_client_at
from timm_prelu.cli import main as cli
from timm_prelu.errors import HubError, HubFileNotFoundError, PretrainedMismatchError, UserError
from timm_prelu.hub import push_checkpoint, recorded_metrics
from timm_prelu.sources import read_checkpoint, resolve_model

WRITE_TOKEN, READ_TOKEN = 'hf_write_token', 'hf_read_token'
REPO = 'timm-prelu/prelu_model_a.in1k'  # where the registry tag's weights go once published


@pytest.fixture(scope='module')
def hub_home(tmp_path_factory):
    return tmp_path_factory.mktemp('hf_home')


@pytest.fixture(scope='module')
def hub_server(hub_home):
    """A local Hub with a write and a read token; this process's client points at it with HF_TOKEN set."""
    with HubServer({WRITE_TOKEN: ('alice', True), READ_TOKEN: ('bob', False)}) as server, \
            pytest.MonkeyPatch.context() as mp:
        point_client_at(mp, server.url, hub_home)
        mp.setenv('HF_TOKEN', WRITE_TOKEN)
        yield server


@pytest.fixture(scope='module')
def reference(trained_run):
    """The checkpoint's own model (train.py's model_best.pth.tar, loaded by hand) and an input batch."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        raw = torch.load(trained_run['dir'] / 'model_best.pth.tar', map_location='cpu', weights_only=True)
    model = timm.create_model(trained_run['model'], num_classes=trained_run['num_classes'],
                              **trained_run['model_kwargs'])
    model.load_state_dict(raw['state_dict'])
    model.eval()
    size = trained_run['img_size']
    return model, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope='module')
def pushed(hub_server, trained_run):
    """model_best.pth.tar pushed with --onnx to the registry tag's repo by the CLI, as a user would."""
    rc = cli(['push', str(trained_run['dir'] / 'model_best.pth.tar'), '--repo-id', REPO, '--onnx'])
    assert rc == 0
    return REPO


def load(source, **kwargs):
    return resolve_model(source, **kwargs).model


def snapshot_folder(repo_id, **kwargs):
    """The verified local snapshot of a Hub model, as the resolver fetched it."""
    return Path(resolve_model(f'hf-hub:{repo_id}', **kwargs).provenance.file).parent


def assert_same_model(model, reference):
    ref_model, x = reference
    ref_state = ref_model.state_dict()
    assert list(model.state_dict()) == list(ref_state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, ref_state[key]), key
    with torch.no_grad():
        assert torch.equal(model.eval()(x), ref_model(x))


def _files(server, repo_id, branch='main'):
    repo = server.state.repos[repo_id]
    return set(repo.commits[repo.branches[branch]])


# --- the folder ---------------------------------------------------------------------------------------------------

def _visible(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith('.'))


def test_dry_run_folder_is_timm_layout_and_loads_with_plain_timm(trained_run, reference, tmp_path, capsys):
    out = tmp_path / 'digits-prelu'
    assert cli(['push', str(trained_run['dir'] / 'model_best.pth.tar'), '--repo-id', 'me/digits-prelu',
                '--dry-run', str(out), '--labels', str(trained_run['data'] / 'train')]) == 0
    summary = capsys.readouterr().out
    assert re.search(r'model.safetensors +\d+\.\d MB', summary) and 'label names: 10 (0, 1, 2, 3, 4, ...)' in summary
    assert re.search(r'metrics: .*top1 \d', summary)
    assert _visible(out) == ['README.md', 'config.json', 'model.safetensors']
    assert _visible(tmp_path) == ['digits-prelu']  # no temp folder left beside it

    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == trained_run['model'] and config['num_classes'] == trained_run['num_classes']
    assert {k: config['model_args'][k] for k in trained_run['model_kwargs']} == trained_run['model_kwargs']
    assert config['label_names'] == [str(i) for i in range(10)]  # the ImageFolder's class folders, as given
    assert config['pretrained_cfg']['input_size'] == [3, trained_run['img_size'], trained_run['img_size']]

    from huggingface_hub import ModelCard
    card = ModelCard.load(out / 'README.md')
    assert card.data.library_name == 'timm' and 'timm' in card.data.tags and card.data.license == 'apache-2.0'
    metrics = recorded_metrics(read_checkpoint(trained_run['dir'] / 'model_best.pth.tar'))
    top1 = next(r for r in card.data.eval_results if r.metric_type == 'accuracy')
    assert top1.metric_value == pytest.approx(metrics['top1'], abs=1e-4)
    for text in ('GMACs', 'Params (M)', "hf-hub:me/digits-prelu", 'local-dir:', 'pretrained_cfg_overlay',
                 '@inproceedings{he2015delving', '| `--epochs` | `2` |'):
        assert text in card.content, text
    assert str(trained_run['data']) not in card.content  # no local paths published

    # plain timm (import timm_prelu only registers the architecture)
    assert_same_model(timm.create_model(f'local-dir:{out}', pretrained=True), reference)
    assert_same_model(timm.create_model(
        trained_run['model'], pretrained=True, **trained_run['model_kwargs'],
        pretrained_cfg_overlay=dict(file=str(out / 'model.safetensors'), num_classes=10)), reference)

    labels = tmp_path / 'labels.txt'
    labels.write_text('zero\none\n')
    assert cli(['push', str(trained_run['dir'] / 'model_best.pth.tar'), '--repo-id', 'me/digits-prelu',
                '--dry-run', str(out), '--overwrite', '--labels', str(labels)]) == 2
    assert '--labels: 2 label names given' in capsys.readouterr().err
    labels.unlink()

    # a failing rebuild leaves the finished folder as it was
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli(['push', str(trained_run['dir'] / 'model_best.pth.tar'), '--repo-id', 'me/digits-prelu',
                '--dry-run', str(out), '--overwrite', '--model-kwargs', 'num_classes=3']) == 2
    assert 'num_classes=10' in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _visible(tmp_path) == ['digits-prelu']
    # without --overwrite an existing folder is refused before anything is loaded
    assert cli(['push', str(trained_run['dir'] / 'model_best.pth.tar'), '--repo-id', 'me/digits-prelu',
                '--dry-run', str(out)]) == 2
    assert 'already exists' in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# --- push and every way to load ------------------------------------------------------------------------------------

def test_push_then_every_loading_path_gives_the_same_weights(pushed, hub_server, hub_home, reference, trained_run,
                                                             tmp_path):
    assert _files(hub_server, pushed) == {'.gitattributes', 'README.md', 'config.json', 'model.safetensors',
                                          'model.onnx'}
    assert len(hub_server.state.repos[pushed].commits) == 2  # the repo's first commit + ONE upload commit

    assert_same_model(timm.create_model(f'hf-hub:{pushed}', pretrained=True), reference)
    # the architecture with the repo as its weights (the registry tag itself has no hf_hub_id until published)
    kwargs = dict(trained_run['model_kwargs'],
                  pretrained_cfg_overlay=dict(hf_hub_id=pushed, num_classes=trained_run['num_classes']))
    assert_same_model(timm.create_model(trained_run['model'], pretrained=True, **kwargs), reference)
    resolved = resolve_model(f'hf-hub:{pushed}')
    assert_same_model(resolved.model, reference)
    blob = Path(os.path.realpath(resolved.provenance.file))
    assert resolved.provenance.sha256 == blob.name  # verified against the Hub's sha256 (the LFS etag)
    assert resolved.provenance.revision == hub_server.state.repos[pushed].branches['main']

    # the real `hf download`, then timm from the files it fetched
    env = {**os.environ, **client_env(hub_server.url, hub_home), 'HF_TOKEN': WRITE_TOKEN}
    proc = subprocess.run([shutil.which('hf') or 'hf', 'download', pushed, '--quiet'], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    snapshot = Path(proc.stdout.strip().splitlines()[-1])
    assert snapshot == snapshot_folder(pushed)
    assert_same_model(timm.create_model(trained_run['model'], pretrained=True, **trained_run['model_kwargs'],
                                        pretrained_cfg_overlay=dict(file=str(snapshot / 'model.safetensors'),
                                                                    num_classes=10)), reference)
    assert_same_model(timm.create_model(f'local-dir:{snapshot}', pretrained=True), reference)

    import onnxruntime
    session = onnxruntime.InferenceSession(str(snapshot / 'model.onnx'))
    ref_model, x = reference
    logits, = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.allclose(torch.from_numpy(logits), ref_model(x), atol=1e-4)

    # offline, from the cache: a fresh process with HF_HUB_OFFLINE=1 sends no request
    torch.save(ref_model.state_dict(), tmp_path / 'ref.pt')
    script = (
        'import sys, torch, timm, timm_prelu\n'
        'ref = torch.load(sys.argv[1], weights_only=True)\n'
        f'a = timm.create_model("hf-hub:{pushed}", pretrained=True)\n'
        f'b = timm.create_model("{trained_run["model"]}", pretrained=True, **{kwargs!r})\n'
        'for m in (a, b):\n'
        '    assert all(torch.equal(v, ref[k]) for k, v in m.state_dict().items())\n'
    )
    requests = len(hub_server.state.requests)
    proc = subprocess.run([sys.executable, '-c', script, str(tmp_path / 'ref.pt')], capture_output=True,
                          text=True, env={**env, 'HF_HUB_OFFLINE': '1'}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(hub_server.state.requests) == requests


def test_private_repo_on_a_branch(hub_server, trained_run, reference, monkeypatch, tmp_path):
    url = push_checkpoint(trained_run['dir'] / 'model_best.pth.tar', 'alice/private-digits', private=True,
                          revision='dev')
    assert '/alice/private-digits/commit/' in url
    assert 'model.safetensors' not in _files(hub_server, 'alice/private-digits')  # main is untouched
    assert_same_model(load('hf-hub:alice/private-digits@dev'), reference)

    monkeypatch.delenv('HF_TOKEN')
    with pytest.raises(HubError, match='not found.*or it is private.*hf auth login') as e:
        load('hf-hub:alice/private-digits@dev', cache_dir=str(tmp_path / 'cache'))
    assert e.value.param == 'source' and e.value.__cause__ is not None


# --- push errors ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('token, message', [
    (None, 'needs a Hugging Face token and none is set: log in with `hf auth login`.*HF_TOKEN'),
    ('hf_wrong', 'token was rejected \\(invalid or expired\\).*hf auth login'),
    (READ_TOKEN, 'may not write to alice.*token with write access'),
])
def test_push_without_a_usable_token_changes_nothing(hub_server, trained_run, monkeypatch, capsys, token, message):
    monkeypatch.delenv('HF_TOKEN')
    args = ['push', str(trained_run['dir'] / 'last.pth.tar'), '--repo-id', 'alice/no-token']
    assert cli(args + (['--token', token] if token else [])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('timm-prelu push: error: ') and '\n' not in err
    assert re.search(message, err), err
    assert 'alice/no-token' not in hub_server.state.repos


@pytest.mark.parametrize('fault', [Fault('commit', status=409, message='Conflict: please retry'),
                                   Fault('lfs_put', status=403, message='Request has expired')])
def test_failed_upload_leaves_no_partial_commit(hub_server, trained_run, tmp_path, fault):
    # fresh weights, so that their upload really happens (the storage dedups identical files)
    state = read_checkpoint(trained_run['dir'] / 'last.pth.tar').state_dict
    checkpoint = tmp_path / f'{fault.kind}.safetensors'
    safetensors.torch.save_file({k: v + torch.rand(()) for k, v in state.items()}, checkpoint)
    kwargs = dict(model_name=trained_run['model'], model_kwargs=trained_run['model_kwargs'])
    repo_id = f'alice/flaky-{fault.kind.replace("_", "-")}'
    hub_server.state.faults.append(fault)
    with pytest.raises(UserError, match='nothing was committed, the repo is unchanged.*run again'):
        push_checkpoint(checkpoint, repo_id, **kwargs)
    assert fault.times == 0  # the failure happened where intended
    assert _files(hub_server, repo_id) == {'.gitattributes'}  # created, but no half-published model
    push_checkpoint(checkpoint, repo_id, **kwargs)
    assert {'config.json', 'model.safetensors', 'README.md'} <= _files(hub_server, repo_id)


# --- download errors ------------------------------------------------------------------------------------------------

def _cached(cache, repo_id):
    folder = Path(cache) / f'models--{repo_id.replace("/", "--")}'
    return sorted(str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file() or p.is_symlink()) \
        if folder.exists() else []


def test_unknown_repo_revision_and_missing_weights(hub_server, pushed):
    with pytest.raises(HubError, match='repo alice/nothing-here not found'):
        load('hf-hub:alice/nothing-here')
    with pytest.raises(HubError, match="revision 'v9' does not exist in .*: give an existing branch"):
        load(f'hf-hub:{pushed}@v9')
    hub_server.state.commit_files('alice/config-only', {'config.json': b'{"architecture": "prelu_model_a"}'})
    with pytest.raises(HubFileNotFoundError, match='has no model.safetensors: it is not a timm model repo'):
        load('hf-hub:alice/config-only')


def test_registry_tag_loads_its_hub_weights_and_names_a_class_mismatch(hub_server, pushed, trained_run, reference,
                                                                       tmp_path, monkeypatch):
    # as once the tag is published: prelu_model_a.in1k's hf_hub_id is the pushed repo, whose config supplies the
    # kwargs and classes
    import dataclasses
    from timm.models._registry import _model_pretrained_cfgs
    tag = f'{trained_run["model"]}.in1k'
    monkeypatch.setitem(_model_pretrained_cfgs, tag, dataclasses.replace(_model_pretrained_cfgs[tag], hf_hub_id=pushed))
    resolved = resolve_model(f'{trained_run["model"]}.in1k', pretrained=True)
    assert_same_model(resolved.model, reference)
    assert resolved.provenance.kind == 'pretrained' and resolved.provenance.repo_id == pushed
    with pytest.raises(PretrainedMismatchError, match=r'10 classes.*num_classes=10') as e:
        resolve_model(f'{trained_run["model"]}.in1k', pretrained=True, num_classes=1000)
    assert e.value.param == 'model_kwargs'
    folder = tmp_path / 'local'
    folder.mkdir()
    (folder / 'config.json').write_text(json.dumps({'architecture': 'prelu_model_a'}))
    (folder / 'model.safetensors').write_bytes(b'\x10' * 64)
    with pytest.raises(UserError, match='not a valid safetensors file'):
        resolve_model(f'local-dir:{folder}')


def test_corrupt_file_on_the_hub_is_not_kept(hub_server, hub_home, pushed):
    good = hub_server.state.repos[pushed]
    weights = good.commits[good.branches['main']]['model.safetensors'].data
    hub_server.state.commit_files('alice/corrupt', {'config.json': b'{}', 'model.safetensors': weights[:1000]})
    for _ in range(2):  # the second call must not take a cached copy for good
        with pytest.raises(UserError, match='corrupt or truncated.*publish it again'):
            load('hf-hub:alice/corrupt')
    assert not [p for p in _cached(Path(hub_home) / 'hub', 'alice/corrupt') if p.startswith(('blobs', 'snapshots'))]


def test_damaged_cache_entry_is_replaced(hub_server, hub_home, pushed, reference):
    blob = Path(os.path.realpath(resolve_model(f'hf-hub:{pushed}').provenance.file))
    data = bytearray(blob.read_bytes())
    data[-10:] = b'\xff' * 10  # bit rot in the tensor data: the header still parses
    blob.write_bytes(bytes(data))
    assert_same_model(load(f'hf-hub:{pushed}'), reference)


def test_interrupted_download_leaves_no_cache_entry(hub_server, pushed, reference, tmp_path):
    hub_server.state.faults.append(Fault('truncate', path='model.safetensors'))
    with pytest.raises(UserError, match=f'downloading {pushed} failed.*nothing was cached'):
        load(f'hf-hub:{pushed}', cache_dir=str(tmp_path))
    assert not [p for p in _cached(tmp_path, pushed) if 'safetensors' in p or 'blobs' in p]
    assert_same_model(load(f'hf-hub:{pushed}', cache_dir=str(tmp_path)), reference)


def test_offline_without_cache(hub_server, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(UserError, match='not in the local Hugging Face cache.*HF_HUB_OFFLINE'):
        load('hf-hub:alice/never-downloaded')
