"""timm_prelu.init: the paper's rule applied to any network, with the rectifier of each layer found, not guessed."""
import math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import timm_prelu  # noqa: F401  (registers the PReLU-nets)
from timm_prelu.errors import UserError
from timm_prelu.init import find_rectifiers, he_init_, init_weights_, xavier_init_
from timm_prelu.init.plain_net import PlainNet


def weights(model):
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


class FunctionalNet(nn.Module):
    """Rectifiers called as functions and in place, as many hand-written models do."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.leaky_relu(self.conv1(x), 0.3)
        x = self.conv2(x).relu_()
        return self.fc(x.mean((2, 3)))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


def test_he_std_and_zero_bias_on_plain_net():
    model = PlainNet(depth=10, width=8, img_size=16)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.constant_(m.bias, 1.0)
    report = he_init_(model, generator=torch.Generator().manual_seed(0))
    assert not report.unmatched
    layers = dict(model.named_modules())
    for layer in report.layers:
        m = layers[layer.name]
        n = m.weight[0].numel()  # k^2 c
        assert layer.fan == n and layer.slope == 0.0
        assert layer.std == pytest.approx(math.sqrt(2.0 / n))
        assert float(m.weight.detach().std()) == pytest.approx(layer.std, rel=0.25)  # >= 64 samples per layer
        assert torch.count_nonzero(m.bias) == 0


def test_timm_vgg19_every_layer_matched_to_the_relu_after_it():
    model = timm.create_model('vgg19', num_classes=10, mlp_ratio=1 / 16)  # vgg19, with a narrow conv 'fc' head
    links = find_rectifiers(model, example_input=torch.randn(1, 3, 32, 32))
    assert len(links) == 19  # 16 convs, the two conv "fc" layers of pre_logits, the classifier
    features = list(model.features.named_children())
    for i, (name, m) in enumerate(features):
        if isinstance(m, nn.Conv2d):
            after = links[f'features.{name}'].after
            assert after.kind == 'rectifier' and after.name == f'features.{features[i + 1][0]}'
    assert links['pre_logits.fc1'].after.name == 'pre_logits.act1'
    assert links['pre_logits.fc2'].before.name == 'pre_logits.act1'
    assert links['head.fc'].before.name == 'pre_logits.act2'
    assert links['head.fc'].after.kind == 'output'
    assert links['features.0'].before.kind == 'input'


def test_torchvision_vgg_fully_matched():
    with torch.device('meta'):  # skip torchvision's own init of 130M weights: ours overwrites them
        model = torchvision.models.vgg11(num_classes=10)
    model.to_empty(device='cpu')
    report = he_init_(model, example_input=torch.randn(1, 3, 32, 32))
    assert not report.unmatched
    assert [layer.rectifier for layer in report.layers[-3:]] == ['features.19', 'classifier.1', 'classifier.4']


def test_prelu_slopes_enter_as_root_mean_square():
    model = timm.create_model('prelu_model_a', width_mult=0.125, fc_dim=16, num_classes=10)
    act = model.stages[0][1].act  # PReLU after the first 3x3 conv, feeding the second one
    with torch.no_grad():
        act.weight.copy_(torch.linspace(0.0, 1.0, act.weight.numel()))
    report = he_init_(model, example_input=torch.randn(1, 3, 32, 32))
    assert not report.unmatched
    row = next(layer for layer in report.layers if layer.name == 'stages.0.2.conv')
    rms = float(act.weight.detach().pow(2).mean().sqrt())
    assert row.rectifier == 'stages.0.1.act' and row.slope == pytest.approx(rms)
    assert row.std == pytest.approx(math.sqrt(2.0 / ((1 + rms ** 2) * row.fan)))
    stem = report.layers[0]  # fed by the image: the paper keeps the 1/2 factor, a from the PReLU after it
    assert stem.name == 'stem.conv' and stem.slope == pytest.approx(0.25)


def test_functional_and_inplace_rectifiers_are_found():
    report = he_init_(FunctionalNet())
    assert not report.unmatched
    rows = {layer.name: layer for layer in report.layers}
    assert rows['conv2'].slope == pytest.approx(0.3) and rows['conv2'].rectifier == 'leaky_relu'
    assert rows['fc'].slope == 0.0 and rows['fc'].rectifier == '.relu_()'


def test_forward_case_uses_rectifier_before_backward_case_the_one_after():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.LeakyReLU(0.5), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 1))
    fwd = {layer.name: layer for layer in he_init_(model, mode='fan_in').layers}
    bwd = {layer.name: layer for layer in he_init_(model, mode='fan_out').layers}
    assert (fwd['2'].slope, fwd['2'].fan) == (0.5, 8 * 9)
    assert (bwd['2'].slope, bwd['2'].fan) == (0.0, 16 * 9)
    # the ends: the paper keeps 1/2 (1 + a^2) with a from the layer's other side; strict uses n Var[w] = 1
    assert fwd['0'].std == pytest.approx(math.sqrt(2.0 / (1.25 * 27)))
    assert bwd['4'].std == pytest.approx(math.sqrt(2.0 / 4))
    strict = {layer.name: layer for layer in he_init_(model, strict_first_layer=True).layers}
    assert strict['0'].std == pytest.approx(math.sqrt(1.0 / 27))
    assert strict['2'].std == fwd['2'].std


def test_unmatched_layers_are_reported_not_guessed_silently():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Residual(), nn.Conv2d(8, 8, 1), nn.GELU(),
                          nn.Conv2d(8, 2, 1))
    with pytest.warns(UserWarning, match='no rectifier found for 2 layers'):
        report = he_init_(model)
    unmatched = {layer.name: layer.note for layer in report.unmatched}
    assert set(unmatched) == {'3', '5'}  # 2.conv is fed by the ReLU: matched
    assert 'add' in unmatched['3'] and 'GELU' in unmatched['5']
    with pytest.raises(UserError, match='no rectifier found'):
        he_init_(model, unmatched='error')
    before = weights(model)
    with pytest.warns(UserWarning):
        skipped = he_init_(model, unmatched='skip')
    after = weights(model)
    assert torch.equal(before['5'], after['5']) and not torch.equal(before['0'], after['0'])
    assert next(layer for layer in skipped.layers if layer.name == '5').std is None


def test_xavier_variants():
    model = nn.Sequential(nn.Conv2d(4, 12, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12 * 4, 6))
    avg = xavier_init_(model)
    assert avg.layers[0].std == pytest.approx(math.sqrt(2.0 / (36 + 108)))
    assert avg.layers[1].std == pytest.approx(math.sqrt(2.0 / (48 + 6)))
    assert xavier_init_(model, mode='fan_in').layers[0].std == pytest.approx(math.sqrt(1.0 / 36))
    report = xavier_init_(model, distribution='uniform', generator=torch.Generator().manual_seed(0))
    bound = math.sqrt(3.0) * report.layers[1].std
    assert float(model[3].weight.detach().abs().max()) <= bound
    assert float(model[3].weight.detach().abs().max()) > 0.8 * bound  # 288 draws from U(-b, b)


def test_same_generator_seed_same_weights():
    a, b = PlainNet(depth=6), PlainNet(depth=6)
    init_weights_(a, 'he', generator=torch.Generator().manual_seed(3))
    init_weights_(b, 'he', generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(weights(a).values(), weights(b).values()))
    with pytest.raises(ValueError, match='unknown init rule'):
        init_weights_(a, 'orthogonal')


def test_model_rejecting_the_sample_input_gives_a_clear_error():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 222 * 222, 2))  # 224 px only
    with pytest.raises(UserError, match='example_input'):
        he_init_(model)
    assert not he_init_(model, example_input=torch.randn(1, 3, 224, 224)).unmatched
