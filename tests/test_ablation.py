"""The small-model ablation (paper Tables 1-2): the model's geometry, 10-view testing, the verdict, and a CI-sized
run that must learn."""
import csv
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from timm_prelu.cli import main
from timm_prelu.outputs import MARKER_NAME
from timm_prelu.init.ablation import (
    LAYERS, AblationRun, SmallNet, _random_crops, summarize, ten_view_scores, verdict,
)


def test_small_net_is_model_e_scaled_down():
    shapes = {}
    model = SmallNet(act='prelu', width=16, fc_dim=128)
    for name in ('pool1', 'pool2'):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape))
    model.conv36.register_forward_hook(lambda m, i, o: shapes.__setitem__('conv36', o.shape))
    assert model(torch.zeros(2, 1, 48, 48)).shape == (2, 10)
    # maps 24 -> 8 (pool 3x3 /3) -> 4 (pool 2x2 /2), the 2x2 convs keeping each stage's size
    assert shapes['pool1'][-2:] == (8, 8) and shapes['pool2'][-2:] == (4, 4) and shapes['conv36'] == (2, 64, 4, 4)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(fcs) == 14  # the paper's 14 layers
    assert [c.kernel_size for c in convs] == [(7, 7)] + [(2, 2)] * 10
    assert [c.out_channels for c in convs] == [16] + [32] * 4 + [64] * 6
    assert fcs[0].in_features == 64 * (16 + 9 + 4 + 1)
    slopes = {n: p.numel() for n, p in model.named_parameters() if n.startswith('act_')}
    assert len(slopes) == 13 and slopes['act_conv1.weight'] == 16 and slopes['act_fc2.weight'] == 128
    shared = SmallNet(act='prelu_shared')
    assert all(p.numel() == 1 for n, p in shared.named_parameters() if n.startswith('act_'))
    assert not [n for n, _ in SmallNet(act='relu').named_parameters() if n.startswith('act_')]


def test_init_is_he_backward_case_for_convs():
    model = SmallNet(act='prelu', width=16, fc_dim=128)
    model.init_weights(torch.Generator().manual_seed(0))
    w = model.conv33.weight  # n = k^2 d = 4 * 64, slope 0.25
    assert float(w.detach().std()) == pytest.approx(math.sqrt(2 / (1.0625 * 4 * 64)), rel=0.05)
    w = model.fc2.weight  # forward case: n = 128 inputs
    assert float(w.detach().std()) == pytest.approx(math.sqrt(2 / (1.0625 * 128)), rel=0.05)
    assert all(float(m.bias.detach().abs().max()) == 0 for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_ten_view_scores_match_crops_cut_by_hand():
    torch.manual_seed(0)
    model = SmallNet(act='prelu', width=4, fc_dim=16).eval()
    x = torch.randn(3, 1, 55, 50)
    # 48 px views of 55 x 50: corners at rows 0 / 7 and columns 0 / 2, centre at (3, 1); each also mirrored
    crops = [x[:, :, 0:48, 0:48], x[:, :, 0:48, 2:50], x[:, :, 7:55, 0:48], x[:, :, 7:55, 2:50], x[:, :, 3:51, 1:49]]
    crops += [torch.from_numpy(c.numpy()[..., ::-1].copy()) for c in crops]
    with torch.no_grad():
        expected = np.mean([torch.softmax(model(c), 1).numpy() for c in crops], axis=0)
    np.testing.assert_allclose(ten_view_scores(model, x, 48).numpy(), expected, atol=1e-6)


def test_random_crops_are_windows_of_their_image():
    x = torch.arange(4 * 10 * 12, dtype=torch.float32).reshape(4, 1, 10, 12)
    out = _random_crops(x, 8, torch.Generator().manual_seed(0))
    assert out.shape == (4, 1, 8, 8)
    for img, crop in zip(x[:, 0].numpy(), out[:, 0].numpy()):
        windows = [img[i:i + 8, j:j + 8] for i in range(3) for j in range(5)]
        assert any(np.array_equal(crop, w) or np.array_equal(crop, w[:, ::-1]) for w in windows)


def _runs(errors):
    """Synthetic runs: {variant: [top-1 error per seed]}."""
    return [AblationRun(v, s, [1.0], e, 0.0, [] if v == 'relu' else [0.5] + [0.1] * 12)
            for v, errs in errors.items() for s, e in enumerate(errs)]


def test_verdict_reads_the_gap_against_its_spread():
    clear = verdict(_runs({'relu': [10, 11, 12], 'prelu_shared': [8, 9, 10], 'prelu': [7, 8, 9]}))
    assert 'holds in the means over 3 seeds' in clear[0]
    assert 'ReLU - PReLU channel-wise: +3.00 +- 0.00' in '\n'.join(clear) and 'excludes 0' in clear[3]
    noisy = verdict(_runs({'relu': [10, 5, 12], 'prelu_shared': [11, 6, 8], 'prelu': [9, 9, 9]}))
    assert 'does not hold' in noisy[0] and all('includes 0' in line for line in noisy[1:4])
    assert 'larger early, smaller deep' in noisy[-1]
    # 3 seeds, differences +1, +2, +3: mean 2, standard error 1/sqrt(3), t(2 df) 4.303 -> [-0.48, +4.48]
    spread = verdict(_runs({'relu': [11, 12, 13], 'prelu_shared': [10, 10, 10], 'prelu': [10, 10, 10]}))
    assert '+2.00 +- 0.58' in spread[1] and '[-0.48, +4.48]' in spread[1] and 'includes 0' in spread[1]
    s = summarize(_runs({'relu': [10, 11, 12], 'prelu_shared': [8, 9, 10], 'prelu': [7, 8, 9]}))
    assert s['relu'].top1 == (11.0, 1.0)


def test_quick_run_learns_and_writes_consistent_outputs(tmp_path, capsys):
    out = tmp_path / 'ablation'
    assert main(['reproduce', 'ablation', '--quick', '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [MARKER_NAME, 'ablation.png', 'runs.csv', 'summary.md']
    assert (out / 'ablation.png').read_bytes()[:4] == b'\x89PNG'
    summary = (out / 'summary.md').read_text()
    assert summary.strip() in printed
    with open(out / 'runs.csv') as f:
        rows = list(csv.DictReader(f))
    assert sorted((r['variant'], int(r['seed'])) for r in rows) == sorted(
        (v, s) for v in ('relu', 'prelu_shared', 'prelu') for s in (0, 1, 2))
    for r in rows:
        # real learning: chance is 90% top-1 error on 10 digits
        assert float(r['top1_err']) < 60, r
        slopes = [r[f'slope_{layer}'] for layer in LAYERS]
        assert all(slopes) if r['variant'] != 'relu' else not any(slopes)
        if r['variant'] != 'relu':  # the slopes moved from their init
            assert max(abs(float(a) - 0.25) for a in slopes) > 0.01
    for variant, label in (('relu', 'ReLU'), ('prelu_shared', 'PReLU channel-shared'), ('prelu', 'PReLU channel-wise')):
        errs = np.array([float(r['top1_err']) for r in rows if r['variant'] == variant])
        assert f'| {label} | {errs.mean():.2f} +- {errs.std(ddof=1):.2f} |' in summary
    assert "The paper's ordering" in summary and ('seed noise' in summary or 'real difference' in summary)


@pytest.mark.parametrize('argv, message', [
    (['ablation', '--seeds', '3'], 'at least 2 different seeds'),
    (['ablation', '--seed', '3'], 'not an option of the ablation'),
    (['depth', '--quick'], 'not an option of the depth'),
    (['ablation', '--steps', '10'], 'too few'),
])
def test_reproduce_ablation_cli_errors(tmp_path, capsys, argv, message):
    assert main(['reproduce', *argv, '--out', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and message in err, err
    assert not (tmp_path / 'o').exists()
