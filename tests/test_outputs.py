"""Outputs are complete or absent, and nothing timm-prelu did not write is ever replaced or deleted.

Read-only destinations: the tests run as root, for whom a chmod'ed folder stays writable, so an unwritable place is
a path below a regular file (no filesystem lets a file have children) and, on Linux, a path in /proc (which
refuses new files even for root).
"""
import json
import os
import sys
from pathlib import Path

import pytest

from timm_prelu.cli import main
from timm_prelu.errors import OutputError
from timm_prelu.outputs import (
    MARKER_NAME, check_destination, final_data, final_path, finished_output_dir, finished_output_file,
    finished_output_files, is_timm_prelu_output, save_figure,
)

KWARGS = {'width_mult': 0.125, 'fc_dim': 64}


def _tree(root: Path) -> dict:
    """Every path under ``root`` with its bytes (files) or None (folders): compares a folder before / after."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob('*'))}


def _user_folder(path: Path) -> Path:
    """A folder a user made: a config.json (what the hub folder check used to take for its own) and a subfolder."""
    (path / 'sub').mkdir(parents=True)
    (path / 'config.json').write_text('{"architecture": "resnet50"}')
    (path / 'sub' / 'notes.txt').write_text('keep me')
    return path


def _png_figure():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    return fig


def _leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if '.partial-' in p.name or p.name.endswith('.tmp')
                  or '.old-' in p.name)


# --- rule: never the working directory, home, root, or a folder holding an input -------------------------------

def test_push_dry_run_into_the_working_directory_is_refused_and_it_is_untouched(tmp_path, monkeypatch, capsys):
    cwd = _user_folder(tmp_path / 'project')
    monkeypatch.chdir(cwd)
    before = _tree(cwd)
    for extra in ([], ['--overwrite']):
        for target in ('.', str(cwd), '..', str(cwd / 'sub' / '..')):
            code = main(['push', 'ckpt.pth.tar', '--repo-id', 'a/b', '--dry-run', target, *extra])
            err = capsys.readouterr().err
            assert code == 2 and err.count('\n') == 1 and '--dry-run' in err, (target, extra, err)
            assert 'working directory' in err
    assert _tree(cwd) == before


@pytest.mark.parametrize('kind', ['dir', 'file'])
def test_protected_places_are_refused_even_with_overwrite(tmp_path, monkeypatch, kind):
    home = tmp_path / 'home'
    home.mkdir()
    monkeypatch.setenv('HOME', str(home))
    data = tmp_path / 'runs' / 'r1' / 'data'
    data.mkdir(parents=True)
    cases = {os.path.abspath(os.sep): 'filesystem root', str(home): 'home folder',
             str(tmp_path / 'runs'): 'holds an input', str(data): 'is an input'}
    for path, why in cases.items():
        with pytest.raises(OutputError, match=why) as info:
            check_destination(path, kind=kind, overwrite=True, inputs=[data])
        assert info.value.param == 'out'
    assert data.is_dir()


def test_an_ancestor_of_an_input_is_refused_even_when_it_is_our_output(tmp_path, capsys):
    with finished_output_dir(tmp_path / 'run') as work:  # an earlier output of ours ...
        (work / 'model.onnx').write_bytes(b'not really a model')
    model = tmp_path / 'run' / 'model.onnx'  # ... holding the model the next command reads
    data = tmp_path / 'data'
    (data / 'cls').mkdir(parents=True)
    before = _tree(tmp_path / 'run')
    for out in (tmp_path / 'run', tmp_path):
        code = main(['eval', '--data', str(data), '--onnx', str(model), '--out', str(out), '--overwrite'])
        err = capsys.readouterr().err
        assert code == 2 and '--out' in err and 'holds an input' in err, err
    code = main(['eval', '--data', str(data), '--onnx', str(model), '--out', str(data), '--overwrite'])
    assert code == 2 and 'is an input' in capsys.readouterr().err
    with pytest.raises(OutputError, match='holds an input'):
        with finished_output_dir(tmp_path / 'run', overwrite=True, inputs=[model]):
            pass
    assert _tree(tmp_path / 'run') == before


# --- rule: a folder that is not our output is never replaced ----------------------------------------------------

def test_a_user_folder_with_a_config_json_is_refused_and_untouched(tmp_path, capsys):
    user = _user_folder(tmp_path / 'mine')
    before = _tree(user)
    commands = [
        ['push', str(tmp_path / 'ckpt.pth.tar'), '--repo-id', 'a/b', '--dry-run', str(user)],
        ['eval', '--data', str(tmp_path), '--onnx', str(tmp_path / 'm.onnx'), '--out', str(user)],
        ['demo', '--quick', '--out', str(user)],
        ['bench', '--quick', '--out', str(user)],
        ['reproduce', 'depth', '--out', str(user)],
    ]
    for argv in commands:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.count('\n') == 1 and 'already exists' in err and '--overwrite' in err, (argv, err)
        code = main(argv + ['--overwrite'])
        err = capsys.readouterr().err
        assert code == 2 and 'not an output of timm-prelu' in err and 'never replaced' in err, (argv, err)
    assert _tree(user) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['mine']


def test_our_output_that_gained_a_user_file_is_not_replaced(tmp_path):
    out = tmp_path / 'eval'
    with finished_output_dir(out, kind='eval') as work:
        (work / 'table.md').write_text('ours')
        (work / 'plots').mkdir()
        (work / 'plots' / 'a.png').write_bytes(b'png')
    for added in ('notes.txt', 'plots/mine.png', 'extra/'):
        target = out / added.rstrip('/')
        target.mkdir() if added.endswith('/') else target.write_text('user')
        with pytest.raises(OutputError, match=f'did not write \\({added}\\)'):
            with finished_output_dir(out, overwrite=True):
                pass
        target.rmdir() if added.endswith('/') else target.unlink()
    assert (out / 'table.md').read_text() == 'ours'
    assert _leftovers(tmp_path) == []


def test_a_marker_a_user_could_mistake_is_not_enough(tmp_path):
    for content in ('', 'not json', '{"tool": "something-else", "state": "finished", "files": []}',
                    '{"tool": "timm-prelu", "state": "partial", "pid": 1}', '[1, 2]'):
        folder = tmp_path / 'f'
        folder.mkdir()
        (folder / MARKER_NAME).write_text(content)
        assert not is_timm_prelu_output(folder)
        with pytest.raises(OutputError, match='not an output of timm-prelu'):
            check_destination(folder, overwrite=True)
        (folder / MARKER_NAME).unlink()
        folder.rmdir()


# --- rule: a file where a folder goes, a folder where a file goes, an unwritable place --------------------------

def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    a_file = tmp_path / 'results'
    a_file.write_text('user data')
    for argv in (['eval', '--data', str(tmp_path), '--onnx', 'm.onnx', '--out', str(a_file)],
                 ['demo', '--quick', '--out', str(a_file)], ['bench', '--out', str(a_file)],
                 ['reproduce', 'depth', '--out', str(a_file)],
                 ['push', 'c.pth.tar', '--repo-id', 'a/b', '--dry-run', str(a_file)]):
        for extra in ([], ['--overwrite']):
            code = main(argv + extra)
            err = capsys.readouterr().err
            assert code == 2 and 'is a file, where a folder goes' in err, (argv, err)
    assert a_file.read_text() == 'user data'


def test_onnx_output_into_a_folder_named_like_a_file_is_refused(tmp_path, capsys):
    folder = tmp_path / 'x.onnx'
    folder.mkdir()
    (folder / 'keep.txt').write_text('mine')
    (tmp_path / 'y.onnx').write_text('user file')
    (tmp_path / 'z.backbone.onnx').mkdir()
    for out, extra, why in ((folder, [], 'is a folder, where a file goes'),
                            (folder, ['--overwrite'], 'is a folder, where a file goes'),
                            (tmp_path / 'y.onnx', [], 'already exists'),
                            (tmp_path / 'y.onnx', ['--overwrite'], 'not written by timm-prelu'),
                            (tmp_path / 'z.onnx', ['--split'], 'z.backbone.onnx is a folder'),
                            (tmp_path / 'model.bin', [], 'must end in .onnx')):
        code = main(['export-onnx', 'prelu_model_a', '-o', str(out), *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.count('\n') == 1 and why in err and '-o' in err, (out, extra, err)
    assert (folder / 'keep.txt').read_text() == 'mine' and (tmp_path / 'y.onnx').read_text() == 'user file'
    for path in (tmp_path / 'x.png', tmp_path / 'sub' / 'x.png'):
        path.mkdir(parents=True)
        with pytest.raises(OutputError, match='is a folder, where a file goes'):
            save_figure(_png_figure(), path)


def _unwritable(tmp_path: Path) -> list:
    a_file = tmp_path / 'a-file'
    a_file.write_text('x')
    places = [a_file / 'out', a_file / 'deeper' / 'out']
    if sys.platform.startswith('linux') and Path('/proc/self').is_dir():
        places.append(Path('/proc/timm-prelu-test-out'))
    return places


def test_unwritable_destinations_are_refused(tmp_path, capsys):
    for place in _unwritable(tmp_path):
        for kind in ('dir', 'file'):
            with pytest.raises(OutputError, match='cannot be (created|written)'):
                check_destination(place, kind=kind)
        for argv in (['reproduce', 'depth', '--out', str(place)], ['demo', '--out', str(place)],
                     ['init-report', 'plain8', '--depth-plot', str(place)],
                     ['export-onnx', 'prelu_model_a', '-o', f'{place}.onnx']):
            code = main(argv)
            err = capsys.readouterr().err
            assert code == 2 and err.count('\n') == 1 and 'cannot be' in err, (argv, err)


# --- rule: destinations are checked first -----------------------------------------------------------------------

@pytest.fixture
def no_work(monkeypatch):
    """Every way a command starts its real work raises: reaching one means the destination was checked too late."""
    calls = []

    def forbidden(name):
        def fail(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f'{name} was called before the destination was checked')
        return fail

    import timm
    import timm_prelu.benchmark as benchmark
    import timm_prelu.cli.eval as cli_eval
    import timm_prelu.demo.pipeline as pipeline
    import timm_prelu.hub.folder as hub_folder
    import timm_prelu.init.depth as depth
    import timm_prelu.sources as sources
    import timm_prelu.sources.resolve as resolve
    import timm_prelu.init.probe as probe
    import timm_prelu.init.slopes as slopes
    import timm_prelu.onnx_model.export as export
    for module, name in ((timm, 'create_model'), (export, 'resolve_model'), (cli_eval, 'build_predictor'),
                         (pipeline, 'run_demo'), (benchmark, 'run_benchmarks'), (depth, 'run_depth_experiment'),
                         (probe, 'create_model'), (slopes, 'load_slopes'), (hub_folder, 'load_for_hub'),
                         (sources, 'resolve_model'), (resolve, 'resolve_model'), (export, '_resolve')):
        monkeypatch.setattr(module, name, forbidden(f'{module.__name__}.{name}'))
    return calls


def test_each_command_fails_on_a_bad_destination_before_any_work(tmp_path, no_work, capsys):
    a_file = tmp_path / 'a-file'
    a_file.write_text('x')
    user = _user_folder(tmp_path / 'user')
    data = tmp_path / 'data'
    (data / 'cls').mkdir(parents=True)
    ckpt = tmp_path / 'ckpt.pth.tar'
    ckpt.write_bytes(b'')
    commands = {
        'export-onnx': (['export-onnx', 'prelu_model_c', '--pretrained', '-o'], '-o',
                        [str(user), str(a_file / 'm.onnx')]),
        'eval': (['eval', '--data', str(data), '--model', 'prelu_model_c', '--out'], '--out', [str(a_file), str(user)]),
        'demo': (['demo', '--out'], '--out', [str(a_file), str(user)]),
        'bench': (['bench', '--out'], '--out', [str(a_file), str(user)]),
        'reproduce': (['reproduce', 'depth', '--out'], '--out', [str(a_file), str(user)]),
        'init-report': (['init-report', 'prelu_model_c', '--depth-plot'], '--depth-plot',
                        [str(a_file), str(user), str(a_file / 'p.png')]),
        'slopes': (['slopes', 'prelu_model_c', '--plot'], '--plot', [str(a_file), str(a_file / 'p.png')]),
        'push': (['push', str(ckpt), '--repo-id', 'a/b', '--dry-run'], '--dry-run', [str(a_file), str(user), '.']),
    }
    for name, (argv, flag, bad) in commands.items():
        for dest in bad:
            for extra in ([], ['--overwrite']):
                code = main(argv + [dest] + extra)
                err = capsys.readouterr().err
                assert code == 2 and err.count('\n') == 1, (name, dest, err)
                assert f'timm-prelu {name}: error: {flag} ' in err, (name, dest, err)
    assert no_work == []


def test_library_writers_check_before_their_work(tmp_path, monkeypatch):
    import timm
    import timm_prelu.benchmark.runner as runner
    import timm_prelu.hub.publish as publish
    import timm_prelu.inference.evaluation as evaluation
    import timm_prelu.onnx_model.export as export
    import timm_prelu.training.launcher as launcher
    from timm_prelu.demo.pipeline import DemoConfig, run_demo
    calls = []
    import timm_prelu.hub.folder as hub_folder
    for module, name in ((timm, 'create_model'), (export, '_resolve'), (hub_folder, 'load_for_hub'),
                         (launcher, 'find_train_script'), (runner, 'describe_machine'),
                         (evaluation, 'walk_imagefolder')):
        monkeypatch.setattr(module, name, lambda *a, _name=name, **k: calls.append(_name))
    user = _user_folder(tmp_path / 'user')
    prior = tmp_path / 'prior.onnx'
    prior.write_bytes(b'a user file')
    for write in (lambda: publish.build_hub_folder(tmp_path / 'ckpt.pth.tar', user, 'a/b'),
                  lambda: export.export_onnx('prelu_model_a', prior),
                  lambda: runner.run_benchmarks(user, quick=True),
                  lambda: evaluation.evaluate_folder(None, tmp_path / 'no-such-data', out=user),
                  lambda: run_demo(DemoConfig(out=user))):
        with pytest.raises(OutputError, match='already exists: choose another path, or pass overwrite=True'):
            write()
    assert calls == [] and prior.read_bytes() == b'a user file'


# --- overwrite replaces our own output --------------------------------------------------------------------------

def test_overwrite_replaces_our_own_folder(tmp_path):
    out = tmp_path / 'run'
    with finished_output_dir(out, kind='test') as work:
        (work / 'a.txt').write_text('first')
        (work / 'nested').mkdir()
        with finished_output_dir(work / 'nested' / 'eval') as inner:  # an output inside an output
            (inner / 'table.md').write_text('t')
    assert is_timm_prelu_output(out) and is_timm_prelu_output(out / 'nested' / 'eval')
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker['state'] == 'finished' and marker['kind'] == 'test'
    assert 'a.txt' in marker['files'] and 'nested/eval/table.md' in marker['files']
    with pytest.raises(OutputError, match='already exists'):
        with finished_output_dir(out):
            pass
    with finished_output_dir(out, overwrite=True) as work:
        (work / 'b.txt').write_text('second')
        private = work / 'private.bin'  # as a library writing through tempfile.mkstemp leaves it
        private.write_bytes(b'x')
        private.chmod(0o600)
    assert sorted(p.name for p in out.iterdir()) == [MARKER_NAME, 'b.txt', 'private.bin']
    umask = os.umask(0)
    os.umask(umask)
    for path in (out, out / 'b.txt', out / 'private.bin', out / MARKER_NAME):
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert path.stat().st_mode & 0o777 == expected, path
    assert _leftovers(tmp_path) == []


def test_overwrite_replaces_our_own_files_only(tmp_path):
    import onnx
    import onnx.helper as oh
    from timm_prelu.onnx_model.runtime import METADATA_KEY
    from timm_prelu.outputs import ONNX_MARKER_KEY
    assert ONNX_MARKER_KEY == METADATA_KEY
    foreign, ours = _tiny_graph(), _tiny_graph()
    oh.set_model_props(foreign, {'author': 'someone'})
    oh.set_model_props(ours, {'author': 'someone', METADATA_KEY: '{}'})
    onnx.save(foreign, str(tmp_path / 'foreign.onnx'))
    onnx.save(ours, str(tmp_path / 'ours.onnx'))
    assert not is_timm_prelu_output(tmp_path / 'foreign.onnx') and is_timm_prelu_output(tmp_path / 'ours.onnx')

    fig = _png_figure()
    fig.savefig(tmp_path / 'foreign.png')
    save_figure(fig, tmp_path / 'ours.png')
    assert not is_timm_prelu_output(tmp_path / 'foreign.png') and is_timm_prelu_output(tmp_path / 'ours.png')
    save_figure(_png_figure(), tmp_path / 'ours.png')  # the library replaces its own figure
    with pytest.raises(OutputError, match='not written by timm-prelu'):
        save_figure(_png_figure(), tmp_path / 'foreign.png')
    (tmp_path / 'table.csv').write_text('a,b\n')
    for name in ('foreign.onnx', 'foreign.png', 'table.csv'):
        before = (tmp_path / name).read_bytes()
        with pytest.raises(OutputError, match='not written by timm-prelu'):
            with finished_output_file(tmp_path / name, overwrite=True) as tmp:
                tmp.write_bytes(b'new')
        assert (tmp_path / name).read_bytes() == before
    with finished_output_file(tmp_path / 'ours.onnx', overwrite=True) as tmp:
        onnx.save(ours, str(tmp))
    assert is_timm_prelu_output(tmp_path / 'ours.onnx')
    assert _leftovers(tmp_path) == []


def _tiny_graph():
    """A stand-in with the exported graph's signature: images (N, 3, H, W) -> logits (N, 3)."""
    import onnx.helper as oh
    nodes = [oh.make_node('GlobalMaxPool', ['x'], ['p']), oh.make_node('Flatten', ['p'], ['y'])]
    graph = oh.make_graph(nodes, 'g', [oh.make_tensor_value_info('x', 1, ['batch', 3, 'height', 'width'])],
                          [oh.make_tensor_value_info('y', 1, ['batch', 3])])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid('', 18)])


def test_export_onnx_cli_overwrites_its_own_export(tmp_path, capsys, monkeypatch):
    import timm_prelu.onnx_model.export as export
    # the file handling is under test, not torch.onnx: a tiny stand-in graph keeps this fast
    monkeypatch.setattr(export, '_export_graph', lambda *args: _tiny_graph())
    out = tmp_path / 'a.onnx'
    argv = ['export-onnx', 'prelu_model_a', '--model-kwargs', 'width_mult=0.125', 'fc_dim=64', '--num-classes', '3',
            '--no-verify', '-o', str(out)]
    assert main(argv) == 0
    first = out.read_bytes()
    assert is_timm_prelu_output(out)
    capsys.readouterr()
    assert main(argv) == 2
    assert 'already exists' in capsys.readouterr().err and out.read_bytes() == first
    assert main(argv + ['--overwrite']) == 0
    assert out.read_bytes() != first  # a new export id and time
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.onnx']


# --- interrupted writes leave nothing ---------------------------------------------------------------------------

@pytest.mark.parametrize('error', [RuntimeError('boom'), KeyboardInterrupt()])
def test_interrupted_writes_leave_nothing(tmp_path, error):
    with pytest.raises(type(error)):
        with finished_output_dir(tmp_path / 'run') as work:
            (work / 'half.txt').write_text('half')
            with finished_output_dir(work / 'inner') as inner:
                (inner / 'x').write_text('x')
                raise error
    with pytest.raises(type(error)):
        with finished_output_files([tmp_path / 'm.onnx', tmp_path / 'm.head.onnx']) as temps:
            temps[0].write_bytes(b'graph')
            raise error
    with pytest.raises(type(error)):
        with finished_output_file(tmp_path / 'new' / 'p.png') as tmp:
            tmp.write_bytes(b'png')
            raise error
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ['new'])
    assert not any((tmp_path / 'new').iterdir()) if (tmp_path / 'new').exists() else True


def test_an_interrupted_overwrite_keeps_the_earlier_output(tmp_path):
    with finished_output_dir(tmp_path / 'run') as work:
        (work / 'a.txt').write_text('first')
    with pytest.raises(RuntimeError):
        with finished_output_dir(tmp_path / 'run', overwrite=True) as work:
            (work / 'a.txt').write_text('second')
            raise RuntimeError('boom')
    assert (tmp_path / 'run' / 'a.txt').read_text() == 'first' and _leftovers(tmp_path) == []


def test_stale_work_folders_of_ours_are_discarded_and_others_kept(tmp_path):
    import socket
    import subprocess
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True,
                          text=True).stdout.strip()
    stale, alive, user, plain = (tmp_path / name for name in
                                 ('run.partial-stale', 'run.partial-alive', 'run.partial-user', 'run.partial'))
    for folder, pid in ((stale, int(dead)), (alive, os.getppid())):
        folder.mkdir()
        (folder / MARKER_NAME).write_text(json.dumps({'tool': 'timm-prelu', 'state': 'partial', 'pid': pid,
                                                      'host': socket.gethostname()}))
    for folder in (user, plain):
        folder.mkdir()
        (folder / 'data.txt').write_text('mine')
    with finished_output_dir(tmp_path / 'run') as work:
        (work / 'a').write_text('a')
    assert not stale.exists()
    assert alive.is_dir() and (user / 'data.txt').is_file() and (plain / 'data.txt').is_file()
    assert (tmp_path / 'run' / 'a').read_text() == 'a'


# --- finished outputs name their final paths --------------------------------------------------------------------

def test_final_path_maps_work_folders_to_their_outputs(tmp_path):
    outside = tmp_path / 'elsewhere' / 'x'
    with finished_output_dir(tmp_path / 'demo') as work:
        with finished_output_dir(work / 'eval' / 'relu') as inner:
            assert final_path(inner / 'table.md') == tmp_path / 'demo' / 'eval' / 'relu' / 'table.md'
            assert final_path(work / 'data' / 'val') == tmp_path / 'demo' / 'data' / 'val'
            assert final_path(outside) == outside
            recorded = {'source': f'local-dir:{inner}/hub', 'files': [str(work / 'a'), str(outside)], 'n': 3}
            assert final_data(recorded) == {'source': f'local-dir:{tmp_path}/demo/eval/relu/hub',
                                            'files': [str(tmp_path / 'demo' / 'a'), str(outside)], 'n': 3}
    assert final_path(work / 'data') == work / 'data'  # finished: no longer mapped
