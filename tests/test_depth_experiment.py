"""The paper's depth experiment, shortened: a 30-layer plain ReLU net learns with He init and stalls with Xavier."""
import math

import pytest

from timm_prelu.cli import main
from timm_prelu.init.depth import DepthConfig, DepthRun, digits_tensors, train_plain_net

STEPS = 150  # He's smoothed loss is halved after 105-195 iterations (seeds 0-5), Xavier's flat for thousands


pytestmark = pytest.mark.usefixtures('one_torch_thread')  # tiny convs: more threads only add contention


def test_30_layers_he_learns_xavier_stalls():
    config = DepthConfig(steps=STEPS)
    data = digits_tensors(config.img_size, seed=0)
    he = train_plain_net(30, 'he', data, config, seed=0)
    xavier = train_plain_net(30, 'xavier', data, config, seed=0)
    assert he.initial_loss == pytest.approx(math.log(10), abs=0.1)  # both start at chance
    assert xavier.initial_loss == pytest.approx(math.log(10), abs=0.01)  # Xavier's logits are ~2^-13 of He's
    assert he.drop > 0.3, he.losses[-25:]  # a clear fall within STEPS iterations
    assert he.val_accuracy > 0.3  # chance is 0.1
    assert xavier.drop < 0.01, xavier.losses[-25:]  # still at chance: the signal vanished like 2^-L
    assert xavier.val_accuracy < 0.2


def test_run_verdicts():
    flat = DepthRun(30, 'xavier', [math.log(10)] * 300)
    falling = DepthRun(30, 'he', [math.log(10) * (1 - i / 400) for i in range(300)])
    assert flat.verdict == 'stalls' and flat.first_step_below(0.9) is None
    assert falling.verdict == 'converges' and falling.first_step_below(0.5) > 150


def test_reproduce_cli(tmp_path, capsys):
    out = tmp_path / 'depth'
    assert main(['reproduce', 'depth', '--out', str(out), '--steps', '60', '--depths', '8', '--seed', '1']) == 0
    printed = capsys.readouterr().out
    assert '| 8-layer, he |' in printed and '| 8-layer, xavier |' in printed
    assert sorted(p.name for p in out.iterdir()) == ['.timm-prelu-output.json', 'depth_experiment.png', 'losses.csv',
                                                     'summary.md']
    assert (out / 'summary.md').read_text().strip() in printed
    assert len((out / 'losses.csv').read_text().splitlines()) == 61
    assert (out / 'depth_experiment.png').read_bytes()[:4] == b'\x89PNG'


def test_reproduce_cli_errors(tmp_path, capsys):
    a_file = tmp_path / 'f'
    a_file.write_text('')
    for argv, message in [(['--steps', '10'], 'too few'), (['--out', str(a_file)], 'is a file, where a folder goes'),
                          (['--depths', '4'], 'at least 6')]:
        assert main(['reproduce', 'depth', '--out', str(tmp_path / 'o'), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and message in err, err
