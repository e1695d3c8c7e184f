"""The variance probe on a 30-layer plain ReLU net checks the paper's derivation (section 2.2) numerically.

Derivation, for conv l fed by a ReLU: Var[y_l] = n_l Var[w_l] E[x_l^2] with E[x_l^2] = 1/2 Var[y_{l-1}], so
the per-layer factor F_l = Var[y_l] / Var[y_{l-1}] has expectation 1/2 n_l Var[w_l]: 1 with He init
(Var[w] = 2/n), 1/2 with Xavier (Var[w] = 1/n when fan-in = fan-out). Backward: Var[dy_l] = 1/2 n^_{l+1}
Var[w_{l+1}] Var[dy_{l+1}] with n^ = k^2 d, the same factors here (all convs are 64 -> 64).

Sampling error, from the same formulas at finite width d (channels; the weights are shared over positions, so
channels are the independent units): F_l = (2/d) * sum over the ~d/2 active channels of chi^2_1 terms, whose
variance is (4/d)(E[relu(g)^4] - E[relu(g)^2]^2) = (4/d)(3/2 - 1/4) = 5/d. So the mean of M per-layer factors
has sd sqrt(5/(d M)), and over S layers ln(Var ratio) is a random walk with drift -5S/(2d) and variance 5S/d
(E[ln F] ~ -Var[F]/2). Bounds below are 4 sd. The net uses circular padding: zero padding would give border
positions fewer than k^2 c inputs, which the derivation does not cover.
"""
import math

import pytest
import torch

from timm_prelu.cli import main
from timm_prelu.init import init_weights_
from timm_prelu.init.plain_net import PlainNet
from timm_prelu.init.probe import format_probe_table, plot_probe, probe_inits, probe_variance

WIDTH = 64
SEEDS = (0, 1, 2)
CONVS = range(1, 27)  # 0-based indices of conv 2 .. conv 27: each fed by a ReLU after a 64-channel conv
SIGMA_FACTOR = math.sqrt(5 / WIDTH)  # sd of one per-layer factor F_l, relative to its mean


pytestmark = pytest.mark.usefixtures('one_torch_thread')  # tiny convs: more threads only add contention


@pytest.fixture(scope='module')
def probes(one_torch_thread):
    """Response and gradient std per layer of the 30-layer net after each init, for three seeds."""
    out = []
    for seed in SEEDS:
        model = PlainNet(depth=30, width=WIDTH, num_stages=1, img_size=8, in_chans=3, fc_dim=64,
                         padding_mode='circular')
        x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(100 + seed))
        out.append(probe_inits(model, x, ('he', 'xavier'), seed=seed))
    return out


def mean_factor(probes, rule, what):
    """Mean over layers and seeds of the measured per-layer variance factor (forward, or backward towards the input)."""
    factors = []
    for result in probes:
        std = [getattr(s, what) for s in result[rule]]
        for i in CONVS:
            factors.append((std[i] / std[i - 1]) ** 2 if what == 'response_std' else (std[i - 1] / std[i]) ** 2)
    return sum(factors) / len(factors), len(factors)


@pytest.mark.parametrize('rule, expected', [('he', 1.0), ('xavier', 0.5)])
@pytest.mark.parametrize('what', ['response_std', 'grad_std'])
def test_per_layer_factor_matches_the_paper_formula(probes, rule, expected, what):
    factor, m = mean_factor(probes, rule, what)
    assert factor == pytest.approx(expected, rel=4 * SIGMA_FACTOR / math.sqrt(m))


def test_he_keeps_the_response_std_within_a_constant_factor_xavier_shrinks_it_like_2_to_the_minus_l(probes):
    steps = len(CONVS) - 1  # conv 2 -> conv 27
    drift = -5 * steps / (2 * WIDTH)  # expected ln(Var ratio) of the finite-width random walk
    half_width = 4 * math.sqrt(5 * steps / WIDTH / len(SEEDS))

    def mean_log_var_ratio(rule):
        return sum(2 * math.log(r[rule][CONVS[-1]].response_std / r[rule][CONVS[0]].response_std)
                   for r in probes) / len(probes)

    he, xavier = mean_log_var_ratio('he'), mean_log_var_ratio('xavier')
    assert drift - half_width < he < drift + half_width  # std ratio within [0.12, 3.1]: flat up to noise
    halvings = steps * math.log(0.5)  # Xavier leaves the 1/2 of every ReLU: 2^-25 in variance
    assert drift + halvings - half_width < xavier < drift + halvings + half_width


def test_gradients_vanish_towards_the_input_with_xavier_only(probes):
    steps = 26  # conv 27 -> conv 1, each seed on its own
    spread = math.exp(4 * math.sqrt(5 * steps / WIDTH) / 2)  # 4 sd of the random walk, in std: about 17
    for result in probes:
        he, xavier = result['he'], result['xavier']
        assert 1 / spread < he[0].grad_std / he[26].grad_std < spread
        assert xavier[0].grad_std / xavier[26].grad_std < 2 ** (-steps / 2) * spread  # 2^-13 in std, +- noise


def test_probe_leaves_the_model_as_it_was():
    model = PlainNet(depth=6, width=4, img_size=8)
    model.train()
    init_weights_(model, 'he')
    stats = probe_variance(model, torch.randn(2, 1, 8, 8))
    assert [s.index for s in stats] == list(range(1, 7))
    assert [s.name for s in stats][:2] == ['features.0', 'features.3']  # a max pool after each one-conv stage
    assert model.training and all(p.grad is None for p in model.parameters())


def test_table_and_plot(tmp_path):
    model = PlainNet(depth=8, width=4, img_size=8)
    results = probe_inits(model, torch.randn(2, 1, 8, 8))
    table = format_probe_table(results)
    assert table.count('\n| ') == 8 and 'xavier std(dL/dy)' in table
    path = plot_probe(results, tmp_path / 'depth.png')
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert [p.name for p in tmp_path.iterdir()] == ['depth.png']


def test_init_report_cli(tmp_path, capsys):
    png = tmp_path / 'plain.png'
    assert main(['init-report', 'plain12', '--img-size', '8', '--batch-size', '2', '--depth-plot', str(png)]) == 0
    out = capsys.readouterr().out
    assert 'he init (fan_in): 12 layers, 0 unmatched' in out and 'xavier: last/first response std' in out
    assert png.stat().st_size > 0
    assert main(['init-report', 'prelu_model_a', '--init', 'he', '--img-size', '32', '--batch-size', '1',
                 '--model-kwargs', 'width_mult=0.125', 'fc_dim=16']) == 0
    assert '| 19 | head | Linear |' in capsys.readouterr().out


def test_init_report_cli_errors(tmp_path, capsys):
    assert main(['init-report', 'no_such_model']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'unknown model' in err and 'plain30' in err
    (tmp_path / 'a-file').write_text('')
    assert main(['init-report', 'plain12', '--depth-plot', str(tmp_path / 'a-file' / 'p.png')]) == 2
    assert '--depth-plot' in (err := capsys.readouterr().err) and 'cannot be created' in err
