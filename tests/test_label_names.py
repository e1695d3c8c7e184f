"""Class names are data from outside: one check for label files, ImageFolders, config.json and ONNX metadata."""
import json
import re

import pytest

from timm_prelu.errors import ConfigError, DatasetError, ModelSourceError
from timm_prelu.inference.folders import walk_imagefolder
from timm_prelu.sources import read_label_names
from timm_prelu.sources.labels import label_names_problem
from timm_prelu.sources.resolve import read_hub_config

HIDDEN = {  # what each would do on a terminal or in a table, unseen
    'escape sequence': 'dog\x1b[2K\rcat',
    'BOM': '\ufeffdog',
    'line separator': 'dog\u2028cat',
    'paragraph separator': 'dog\u2029cat',
    'zero-width space': 'do\u200bg',
    'right-to-left override': 'dog\u202etac',
    'tab': 'dog\tcat',
    'carriage return': 'dog\rcat',
}


@pytest.mark.parametrize('name', sorted(HIDDEN))
def test_invisible_characters_are_refused(name):
    problem = label_names_problem(['bird', HIDDEN[name]])
    assert problem.startswith('class 1 (') and f'U+{ord(next(c for c in HIDDEN[name] if not c.isalnum())):04X}' \
        in problem
    assert problem.isascii() and '\x1b' not in problem  # the message itself shows them escaped


def test_names_a_user_writes_are_kept():
    names = ['tabby cat', 'Großkatze', '犬', 'n01440764', "jack-o'-lantern", 'crane (bird)', 'étoile']
    assert label_names_problem(names) is None
    assert label_names_problem(['crane', 'crane'], unique=False) is None  # descriptions may repeat (ImageNet's)
    assert 'repeat' in label_names_problem(['crane', 'crane'])
    assert 'empty' in label_names_problem(['a', ' '])


@pytest.mark.parametrize('content, message', [
    ('\ufeffcat\ndog\n'.encode(), 'U+FEFF'),
    ('cat\ndog\u2028bird\n'.encode(), 'U+2028'),  # one line, not two: the classes after it would shift
    ('cat\n\x1b[31mdog\n'.encode(), 'U+001B'),
])
def test_label_files_with_hidden_characters(tmp_path, content, message):
    path = tmp_path / 'labels.txt'
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        read_label_names(path)
    assert e.value.param == 'labels' and str(path) in str(e.value)


def test_crlf_label_files_still_read(tmp_path):
    path = tmp_path / 'labels.txt'
    path.write_bytes(b'cat\r\ndog\r\n')
    assert read_label_names(path) == ['cat', 'dog']


def test_imagefolder_class_names_are_checked(tmp_path):
    for name in ('cat', 'dog\u202e'):
        (tmp_path / name).mkdir()
        (tmp_path / name / 'a.png').write_bytes(b'')
    with pytest.raises(ConfigError, match='U\\+202E'):
        read_label_names(tmp_path)
    with pytest.raises(DatasetError, match='class folders cannot name classes.*U\\+202E') as e:
        walk_imagefolder(tmp_path)
    assert e.value.param == 'data'


@pytest.mark.parametrize('labels, message', [
    (['cat', 'cat', 'dog'], "they repeat 'cat'"),
    (['cat', '\x1b]0;owned\x07', 'dog'], 'U+001B'),
])
def test_config_json_label_names_are_checked(tmp_path, labels, message):
    path = tmp_path / 'config.json'
    path.write_text(json.dumps({'architecture': 'prelu_model_a', 'num_classes': 3, 'label_names': labels,
                                'pretrained_cfg': {}}))
    with pytest.raises(ModelSourceError, match=re.escape(message)):
        read_hub_config(path)


def test_printed_text_is_escaped():
    from timm_prelu.formatting import printable
    assert printable('a\x1b[2Kb\u202ec\nd\te 犬 é') == 'a\\x1b[2Kb\\u202ec\nd\\te 犬 é'
    assert printable('plain text') == 'plain text'


def test_file_names_cannot_rewrite_the_terminal(tmp_path, capsys):
    from PIL import Image
    from timm_prelu.cli import main
    Image.new('RGB', (40, 40), (10, 20, 30)).save(tmp_path / 'a\x1b[2Kb.png')
    (tmp_path / 'c\u202ed.png').write_bytes(b'not an image')
    assert main(['predict', str(tmp_path), '--model', 'prelu_model_a', '--model-kwargs', 'width_mult=0.125',
                 'fc_dim=16', '--num-classes', '3', '--scales', '32', '--views', 'full', '--device', 'cpu']) == 0
    captured = capsys.readouterr()
    assert '\x1b' not in captured.out and '\u202e' not in captured.out
    assert 'a\\x1b[2Kb.png: ' in captured.out and 'c\\u202ed.png' in captured.out
