"""One-line notes where a command's output would otherwise mislead: far test scales, He's std at finite width."""
from timm_prelu.cli import main as cli_main

from conftest import TINY_KWARGS, TINY_MODEL

MODEL = ['--model', TINY_MODEL, '--model-kwargs', *[f'{k}={v}' for k, v in TINY_KWARGS.items()],
         '--num-classes', '10', '--device', 'cpu', '--views', 'full', '--no-flip']


def _notes(out: str):
    return [line for line in out.splitlines() if 'training input size' in line]


def test_predict_and_eval_note_scales_far_above_the_training_size(digits_folder, capsys):
    image = sorted((digits_folder / 'val').glob('*/*.png'))[0]
    # the README's scales on a model trained at 32 px, as the demo's: one note, and the prediction still runs
    assert cli_main(['predict', str(image), *MODEL, '--input-size', '32', '--scales', '37', '256', '480']) == 0
    out = capsys.readouterr().out
    assert _notes(out) == ["note: scales 256 480 are over 4x the model's training input size (32 px): objects "
                           "will look far larger than in training, so expect a high error; the paper's 256 384 480 "
                           "for 224 px are --scales 37 55 69 here (going on as asked)"]
    assert f'{image}: ' in out
    assert cli_main(['eval', '--data', str(digits_folder / 'val'), *MODEL, '--input-size', '32', '--scales', '256',
                     '--limit', '3', '--no-progress']) == 0
    out = capsys.readouterr().out
    assert len(_notes(out)) == 1 and 'scales 256 are over 4x' in out and '3 image' in out
    # the paper's ratios give no note; without --input-size the reference is the pretrained_cfg's 224 px
    assert cli_main(['predict', str(image), *MODEL, '--input-size', '32', '--scales', '37', '55', '69']) == 0
    assert _notes(capsys.readouterr().out) == []
    assert cli_main(['predict', str(image), *MODEL, '--scales', '256', '480']) == 0
    assert _notes(capsys.readouterr().out) == []
    assert cli_main(['predict', str(image), *MODEL, '--scales', '224', '1000']) == 0
    assert "scales 1000 are over 4x the model's training input size (224 px)" in capsys.readouterr().out


def test_init_report_explains_the_per_layer_factor(capsys):
    assert cli_main(['init-report', 'plain11', '--batch-size', '2']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-3].startswith('he: last/first response std') and lines[-2].startswith('xavier: ')
    assert lines[-1].startswith("note: He makes each layer's variance factor 1 only in expectation")
    assert lines[-1].endswith("see docs/init.md ('Checking it')")
    assert cli_main(['init-report', 'plain11', '--batch-size', '2', '--init', 'xavier']) == 0
    assert 'note: He makes' not in capsys.readouterr().out
