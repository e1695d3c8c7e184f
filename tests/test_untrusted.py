"""Image folders and ONNX files from other people: bounded, loop-safe walks that count each file once, classes
that never shift silently, and crafted metadata refused in one line (exit code 2 on the command line)."""
import contextlib
import json
import os
import signal
import time

import numpy as np
import onnx
import pytest
from onnx import helper
from PIL import Image

from timm_prelu.cli import main
from timm_prelu.errors import DatasetError, OnnxModelError, TimmPreluError
from timm_prelu.inference.evaluation import evaluate_folder
from timm_prelu.inference.folders import walk_imagefolder
from timm_prelu.inference.predictor import MultiScalePredictor, OnnxBackend, TorchBackend
from timm_prelu.onnx_model.runtime import METADATA_KEY, PRETRAINED_CFG_KEY, OnnxModel, read_metadata


EVAL_FLAGS = ['--scales', '32', '--views', 'full', '--no-flip', '--no-progress']


@pytest.fixture(scope='module', autouse=True)
def _one_thread(one_torch_thread):
    yield


@contextlib.contextmanager
def time_limit(seconds: int):
    """Fail instead of hanging: a walk that follows loops never returns."""
    def expire(*_):
        raise TimeoutError(f'still running after {seconds} s')
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def make_folder(root, classes, per_class=3, seed=0):
    """An ImageFolder of small random PNGs; a class given as (name, 0) is an empty folder."""
    rng = np.random.default_rng(seed)
    for spec in classes:
        name, n = spec if isinstance(spec, tuple) else (spec, per_class)
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f'{i}.png')
    return root


def eval_cli(capsys, data, *flags):
    code = main(['eval', '--data', str(data), *EVAL_FLAGS, *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- rule 4: folder walks are bounded ---------------------------------------------------------------------------

@pytest.mark.parametrize('limit', [None, 4])
@pytest.mark.parametrize('loops', ['self', 'to-root', 'two', 'three', 'alias'])
def test_symlink_loops_are_reported_not_followed(tmp_path, exported, capsys, loops, limit):
    root = make_folder(tmp_path / 'data', ['class_0', 'class_1'])
    (root / 'class_0' / 'deeper').mkdir()
    Image.new('RGB', (32, 32)).save(root / 'class_0' / 'deeper' / 'x.png')
    links, num_loops = {  # two loops in one folder make timm's walk (and earlier versions) run for ever
        'self': ([('class_0/deeper/again', '..')], 1),
        'to-root': ([('class_1/up', '..')], 1),
        'two': ([('class_0/deeper/a', '..'), ('class_0/deeper/b', '..')], 2),
        'three': ([('class_0/deeper/l1', '../..'), ('class_1/l2', '..'), ('class_0/deeper/l3', '.')], 3),
        'alias': ([('class_0/deeper/a', '..'), ('class_0/b', 'deeper')], 1),  # b: a second path, not a loop
    }[loops]
    for where, target in links:
        os.symlink(target, root / where)
    with time_limit(30):
        listing = walk_imagefolder(root, limit=limit)
    assert len(listing.samples) == (7 if limit is None else 4)
    assert len({os.stat(p).st_ino for p, _ in listing.samples}) == len(listing.samples)
    assert [t for _, t in listing.samples] == sorted(t for _, t in listing.samples)
    if limit is None:
        assert listing.complete and [t for _, t in listing.samples] == [0, 0, 0, 0, 1, 1, 1]
        assert len(listing.skipped) == len(links) and len(listing.loops) == num_loops, listing.skipped
    else:
        assert not listing.complete

    start = time.monotonic()
    with time_limit(120):
        code, out, err = eval_cli(capsys, root, '--onnx', str(exported[1]), '--threads', '1',
                                  *(['--limit', str(limit)] if limit else []))
    assert code == 0, err
    assert f'{7 if limit is None else 4} images evaluated' in out
    if limit is None:
        assert f'{num_loops} symlink loop(s) not followed' in out
    assert time.monotonic() - start < 120


def test_each_real_file_is_counted_once(tmp_path):
    root = make_folder(tmp_path / 'data', ['cat', 'dog'])
    os.link(root / 'cat' / '0.png', root / 'cat' / 'hard.png')  # a hard link in the same class
    os.symlink('1.png', root / 'cat' / 'soft.png')  # a symlinked file
    (root / 'cat' / 'sub').mkdir()
    Image.new('RGB', (32, 32)).save(root / 'cat' / 'sub' / 'z.png')
    os.symlink('sub', root / 'cat' / 'sub-again')  # the same folder twice
    os.symlink('../dog/0.png', root / 'cat' / 'borrowed.png')  # another class's image: not a cat
    os.symlink('../dog', root / 'cat' / 'dogs')  # another class's folder
    os.symlink('dog', root / 'dog2')  # a class folder that is another class folder
    os.symlink('missing.png', root / 'dog' / 'dangling.png')
    listing = walk_imagefolder(root)
    names = sorted(os.path.relpath(p, root) for p, _ in listing.samples)
    assert names == ['cat/0.png', 'cat/1.png', 'cat/2.png', 'cat/sub/z.png', 'dog/0.png', 'dog/1.png', 'dog/2.png']
    assert {os.path.relpath(p, root): t for p, t in listing.samples}['dog/0.png'] == 1
    why = {os.path.relpath(p, root): w for p, w in listing.skipped}
    assert why['cat/hard.png'].startswith('same file as') and why['cat/soft.png'].startswith('same file as')
    assert why['cat/sub-again'].startswith('same folder as')
    assert 'another class folder' in why['cat/borrowed.png'] and 'another class folder' in why['cat/dogs']
    assert why['dog2'].startswith('same folder as') and why['dog/dangling.png'] == 'broken symlink'
    assert listing.class_to_idx == {'cat': 0, 'dog': 1, 'dog2': 2} and listing.empty_classes == ['dog2']


def test_special_files_are_skipped_not_read(tmp_path, exported, capsys):
    root = make_folder(tmp_path / 'data', ['class_0', 'class_1'], per_class=2)
    os.mkfifo(root / 'class_0' / 'pipe.png')  # opening it would wait for a writer for ever
    os.symlink('/dev/zero', root / 'class_1' / 'endless.jpg')  # reading it would never end
    with time_limit(120):
        code, out, err = eval_cli(capsys, root, '--onnx', str(exported[1]), '--threads', '1',
                                  '--out', str(tmp_path / 'eval'))
    assert code == 0, err
    assert '4 images evaluated, 2 skipped' in out
    skipped = (tmp_path / 'eval' / 'skipped.txt').read_text()
    assert skipped.count('not a regular file') == 2 and 'pipe.png' in skipped and 'endless.jpg' in skipped


def test_walk_bounds_and_bad_roots(tmp_path):
    root = make_folder(tmp_path / 'data', ['a', 'b'], per_class=4)
    with pytest.raises(DatasetError, match='more than 5 files and folders'):
        walk_imagefolder(root, max_entries=5)
    deep = root / 'b' / 'l1' / 'l2' / 'l3'
    deep.mkdir(parents=True)
    Image.new('RGB', (32, 32)).save(deep / 'deep.png')
    listing = walk_imagefolder(root, max_depth=2)
    assert len(listing.samples) == 8 and any('folder levels deep' in w for _, w in listing.skipped)
    assert len(walk_imagefolder(root).samples) == 9
    listing = walk_imagefolder(root, limit=3)
    assert len(listing.samples) == 3 and not listing.complete
    with pytest.raises(DatasetError, match='limit must be a positive'):
        walk_imagefolder(root, limit=0)
    with pytest.raises(DatasetError, match='no such folder'):
        walk_imagefolder(tmp_path / 'missing')
    with pytest.raises(DatasetError, match='is a file, not a folder'):
        walk_imagefolder(root / 'a' / '0.png')
    (tmp_path / 'flat').mkdir()
    Image.new('RGB', (8, 8)).save(tmp_path / 'flat' / 'img.png')
    with pytest.raises(DatasetError, match='no class folders'):
        walk_imagefolder(tmp_path / 'flat')
    (tmp_path / 'noimg' / 'a').mkdir(parents=True)
    (tmp_path / 'noimg' / 'a' / 'x.txt').write_text('x')
    with pytest.raises(DatasetError, match='no images found'):
        walk_imagefolder(tmp_path / 'noimg')


def test_empty_class_folder_never_shifts_later_classes(tmp_path, exported, capsys):
    import timm
    # the model knows its labels: matched by name, the empty folder changes nothing
    named = make_folder(tmp_path / 'named', ['class_0', ('class_1', 0), 'class_3'])
    out_dir = tmp_path / 'named-eval'
    code, out, err = eval_cli(capsys, named, '--onnx', str(exported[1]), '--threads', '1', '--out', str(out_dir))
    assert code == 0, err
    assert 'class folder(s) without images: class_1' in out
    assert json.loads((out_dir / 'class_to_idx.json').read_text()) == {'class_0': 0, 'class_1': 1, 'class_3': 3}
    with np.load(out_dir / 'predictions.npz') as z:
        assert z['targets'].tolist() == [0, 0, 0, 3, 3, 3]

    # no label names: folder order, the empty folder keeps its index; the mapping is printed and written
    plain = make_folder(tmp_path / 'plain', ['0', ('1', 0), '2', '10'])
    out_dir = tmp_path / 'plain-eval'
    code, out, err = eval_cli(capsys, plain, '--model', 'prelu_model_a', '--model-kwargs', 'width_mult=0.125',
                              'fc_dim=64', '--num-classes', '11', '--device', 'cpu', '--out', str(out_dir))
    assert code == 0, err
    assert 'class index by folder order (natural sort): 0=0, 1=1, 2=2, 3=10' in out
    assert 'class folder(s) without images keep their index: 1 (1)' in out
    assert json.loads((out_dir / 'class_to_idx.json').read_text()) == {'0': 0, '1': 1, '2': 2, '10': 3}
    with np.load(out_dir / 'predictions.npz') as z:
        assert z['targets'].tolist() == [0, 0, 0, 2, 2, 2, 3, 3, 3]

    # Python API: the same mapping on the result
    model = timm.create_model('prelu_model_a', width_mult=0.125, fc_dim=64, num_classes=4)
    result = evaluate_folder(MultiScalePredictor(TorchBackend(model, 'cpu'), scales=(32,), views='full', flip=False),
                             plain, progress=False)
    assert result.class_to_idx == {'0': 0, '1': 1, '2': 2, '10': 3}


def test_classes_that_do_not_fit_the_model_stop_the_run(tmp_path, exported, capsys):
    partial = make_folder(tmp_path / 'partial', ['class_0', 'class_1', 'kitten'], per_class=1)
    code, out, err = eval_cli(capsys, partial, '--onnx', str(exported[1]))
    assert code == 2 and err.count('\n') == 1 and 'kitten are not among the model' in err
    with pytest.raises(DatasetError, match='kitten are not among'):
        evaluate_folder(MultiScalePredictor(OnnxBackend(exported[1], providers='cpu', threads=1), scales=(32,),
                                            views='full'), partial, progress=False)
    many = make_folder(tmp_path / 'many', [f'c{i}' for i in range(11)], per_class=1)
    code, out, err = eval_cli(capsys, many, '--onnx', str(exported[1]))
    assert code == 2 and err.count('\n') == 1 and '11 class folders, the model has only 10' in err
    code, out, err = eval_cli(capsys, tmp_path / 'nowhere', '--onnx', str(exported[1]))
    assert code == 2 and 'no such folder' in err
    code, out, err = eval_cli(capsys, partial, '--onnx', str(exported[1]), '--limit', '0')
    assert code == 2 and 'limit must be a positive' in err


# -- crafted ONNX metadata: one line naming the field, never a traceback or a NaN -------------------------------

def _edit(info=None, cfg=None, raw_info=None):
    def apply(i, c):
        i.update(info or {})
        c.update(cfg or {})
        for k in [k for k, v in (cfg or {}).items() if v is _DROP]:
            del c[k]
        return raw_info
    return apply


_DROP = object()
CRAFTED = {  # name: (edit, field named in the message)
    'num_classes vs graph': (_edit({'num_classes': 5}, {'num_classes': 5, 'label_names': _DROP}), 'num_classes is 5'),
    'num_classes vs cfg': (_edit({'num_classes': 12}), 'pretrained_cfg.num_classes'),
    'num_classes not int': (_edit({'num_classes': '10'}), 'num_classes'),
    'std zero': (_edit(cfg={'std': [0.2, 0.0, 0.2]}), 'pretrained_cfg.std holds 0'),
    'std negative': (_edit(cfg={'std': [-0.2, 0.2, 0.2]}), 'pretrained_cfg.std holds -0.2'),
    'std infinite': (_edit(cfg={'std': [float('inf'), 0.2, 0.2]}), 'pretrained_cfg.std holds inf'),
    'std NaN': (_edit(cfg={'std': [float('nan'), 0.2, 0.2]}), 'pretrained_cfg.std holds nan'),
    'mean short': (_edit(cfg={'mean': [0.5, 0.5]}), 'pretrained_cfg.mean'),
    'mean text': (_edit(cfg={'mean': 'imagenet'}), 'pretrained_cfg.mean'),
    'std long': (_edit(cfg={'std': [0.2] * 4}), 'pretrained_cfg.std'),
    'input_size huge': (_edit(cfg={'input_size': [3, 100000, 100000]}), 'pretrained_cfg.input_size'),
    'input_size float': (_edit(cfg={'input_size': [3, 32.5, 32]}), 'pretrained_cfg.input_size'),
    'input_size channels': (_edit(cfg={'input_size': [1, 32, 32]}), 'pretrained_cfg.input_size[0]'),
    'input_size below a cell': (_edit({'min_input_size': 1}, {'input_size': [3, 8, 8]}), 'pretrained_cfg.input_size'),
    'stride zero': (_edit({'feature_stride': 0}), 'feature_stride'),
    'stride disagrees': (_edit({'feature_stride': 8}), 'receptive_field.stride'),
    'min_input_size negative': (_edit({'min_input_size': -3}), 'min_input_size'),
    'in_chans': (_edit({'in_chans': 4}), 'pretrained_cfg.input_size[0]'),
    'labels short': (_edit(cfg={'label_names': ['cat']}), 'pretrained_cfg.label_names has 1 entries'),
    'labels not strings': (_edit(cfg={'label_names': list(range(10))}), 'pretrained_cfg.label_names'),
    'labels repeat': (_edit(cfg={'label_names': ['cat'] * 2 + [f'c{i}' for i in range(8)]}), "they repeat 'cat'"),
    'label rewrites the terminal': (_edit(cfg={'label_names': ['\x1b[2Kdog'] + [f'c{i}' for i in range(9)]}),
                                    'U+001B'),
    'label description with a bidi override': (
        _edit(cfg={'label_descriptions': ['a\u202eb'] + [f'c{i}' for i in range(9)]}),
        'pretrained_cfg.label_descriptions cannot be shown as class names'),
    'interpolation': (_edit(cfg={'interpolation': 'magic'}), 'pretrained_cfg.interpolation'),
    'split path': (_edit({'split': {'backbone': '../../etc/x.onnx', 'head': 'a.head.onnx'}}), 'split.backbone'),
    'not JSON': (_edit(raw_info='{"format": 1, "graph": '), 'not valid JSON'),
    'JSON list': (_edit(raw_info='[1, 2]'), 'not a JSON object'),
}


def _craft(src, dst, edit):
    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props}
    info, cfg = json.loads(props[METADATA_KEY]), json.loads(props[PRETRAINED_CFG_KEY])
    raw = edit(info, cfg)
    helper.set_model_props(proto, {**props, METADATA_KEY: raw or json.dumps(info), PRETRAINED_CFG_KEY: json.dumps(cfg)})
    onnx.save(proto, str(dst))
    return dst


@pytest.mark.parametrize('case', sorted(CRAFTED))
def test_crafted_onnx_metadata_is_one_clear_error(exported, tmp_path, capsys, case):
    edit, named = CRAFTED[case]
    path = _craft(exported[1], tmp_path / 'm.onnx', edit)
    for load in (read_metadata, lambda p: OnnxModel(p, providers='cpu', threads=1)):
        with pytest.raises(OnnxModelError) as e:
            load(path)
        assert named in str(e.value) and '\n' not in str(e.value) and str(path) in str(e.value)
    image = tmp_path / 'img.png'
    Image.new('RGB', (40, 40), (120, 30, 200)).save(image)
    code = main(['predict', str(image), '--onnx', str(path), '--scales', '32', '--views', 'full'])
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1 and named in err


def test_backbone_whose_stride_lies_is_refused(exported, tmp_path):
    backbone = exported[1].with_name('a.backbone.onnx')
    assert OnnxModel(backbone, providers='cpu', threads=1).graph == 'backbone'
    edit = _edit({'feature_stride': 4, 'receptive_field': {'size': 301, 'stride': 4, 'padding': 143}})
    path = _craft(backbone, tmp_path / 'b.onnx', edit)
    read_metadata(path)  # consistent with itself: only running the graph shows the lie
    with pytest.raises(OnnxModelError, match='feature_stride is 4, but the graph maps a 16x16 input to a 1x1'):
        OnnxModel(path, providers='cpu', threads=1)
    path = _craft(backbone, tmp_path / 'c.onnx', _edit({'num_features': 65}))
    for load in (read_metadata, lambda p: OnnxModel(p, providers='cpu', threads=1)):
        with pytest.raises(OnnxModelError, match="num_features is 65, but the graph's output has 64"):
            load(path)


def test_no_nan_reaches_a_score_table(exported, tmp_path, capsys):
    """Weights that give NaN / inf: a clear error before any table, from the API and the command line."""
    import timm
    import torch
    model = timm.create_model('prelu_model_a', width_mult=0.125, fc_dim=64, num_classes=3)
    with torch.no_grad():
        model.head.weight[0, 0] = float('nan')  # one NaN weight
    data = make_folder(tmp_path / 'data', ['a', 'b'], per_class=1)
    predictor = MultiScalePredictor(TorchBackend(model, 'cpu'), scales=(32,), views='full', flip=False)
    with pytest.raises(TimmPreluError, match='non-finite scores'):
        evaluate_folder(predictor, data, out=tmp_path / 'eval', progress=False)
    assert not (tmp_path / 'eval' / 'table.csv').exists()
    with torch.no_grad():
        model.head.weight[0, 0] = 0.0
        model.head.bias[1] = float('inf')
    with pytest.raises(TimmPreluError, match='non-finite scores'):
        predictor.predict(Image.new('RGB', (40, 40), (255, 255, 255)))

    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / 'inf.safetensors')
    code = main(['eval', '--data', str(data), '--model', 'prelu_model_a', '--checkpoint',
                 str(tmp_path / 'inf.safetensors'), '--model-kwargs', 'width_mult=0.125', 'fc_dim=64',
                 '--device', 'cpu', *EVAL_FLAGS])
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1 and 'non-finite scores' in err
    with pytest.raises(TimmPreluError, match='scales must be positive integers'):
        MultiScalePredictor(TorchBackend(model, 'cpu'), scales=('256',))
