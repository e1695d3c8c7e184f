"""The PReLU-nets' contract: the paper's Table 3, its complexity and init, and timm's model API.

Full-size models are built on the meta device (shapes and multiply-adds without memory or compute); everything
that runs numbers uses the same structure at a fraction of the width.
"""
import copy
import math
import os

import pytest
import safetensors.torch
import timm
import torch
import torch.nn as nn

import timm_prelu  # noqa: F401  (registers the models)
from timm_prelu.cli import main
from timm_prelu.models.complexity import PAPER_MACS, count_macs, count_params
from timm_prelu.errors import UserError
from timm_prelu.errors import ModelSourceError
from timm_prelu.models import HUB_ORG, PReLUNet, PretrainedMismatchError
from timm_prelu.models.prelu_net import PUBLISHED_TAGS

MODEL_NAMES = ['prelu_model_a', 'prelu_model_b', 'prelu_model_c']
TABLE3 = {  # convs per stage, stage widths, depth (conv + fc)
    'prelu_model_a': ((5, 5, 5), (256, 512, 512), 19),
    'prelu_model_b': ((6, 6, 6), (256, 512, 512), 22),
    'prelu_model_c': ((6, 6, 6), (384, 768, 896), 22),
}
NARROW = dict(width_mult=0.125, fc_dim=64)
PRELU_INIT = 0.25


def narrow(name='prelu_model_a', **kwargs) -> PReLUNet:
    return timm.create_model(name, **{**NARROW, **kwargs})


def full_size_meta(name, **kwargs) -> PReLUNet:
    return timm.create_model(name, device='meta', **kwargs)


def convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def linears(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def feature_side(side: int, num_stages: int = 3) -> int:
    side = (side - 1) // 2 + 1  # 7x7/2 stem, padding 3
    for _ in range(num_stages):
        side //= 2
    return side


# --- registry and pretrained configs ---

def test_registry():
    assert timm.list_models('prelu_*') == MODEL_NAMES
    # list_pretrained lists tags with weights; none are published, so none is listed (the tags still exist)
    assert timm.list_pretrained('prelu_*') == [f'{n}.in1k' for n in MODEL_NAMES if f'{n}.in1k' in PUBLISHED_TAGS]
    assert timm.list_models('prelu_*', include_tags=True) == [f'{n}.in1k' for n in MODEL_NAMES]


@pytest.mark.parametrize('model_name', MODEL_NAMES)
def test_pretrained_cfg(model_name):
    cfg = full_size_meta(model_name).pretrained_cfg
    assert cfg.get('hf_hub_id') is None and not cfg.get('url') and not cfg.get('file')  # nothing published yet
    assert cfg['input_size'] == (3, 224, 224) and cfg['pool_size'] == (14, 14)
    assert cfg['crop_pct'] == 0.875 and cfg['interpolation'] == 'bilinear'
    assert cfg['num_classes'] == 1000 and cfg['first_conv'] == 'stem.conv' and cfg['classifier'] == 'head'
    assert cfg['mean'] == timm.data.IMAGENET_DEFAULT_MEAN and cfg['std'] == timm.data.IMAGENET_DEFAULT_STD


# --- the paper's Table 3 ---

@pytest.mark.parametrize('model_name', MODEL_NAMES)
def test_table3_architecture(model_name):
    depths, widths, depth = TABLE3[model_name]
    model = full_size_meta(model_name)
    stem = model.stem.conv
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding) == \
           (3, 96, (7, 7), (2, 2), (3, 3))
    assert len(model.stages) == 3
    for stage, n, width in zip(model.stages, depths, widths):
        pool, *blocks = stage
        assert isinstance(pool, nn.MaxPool2d) and (pool.kernel_size, pool.stride) == (2, 2)
        assert len(blocks) == n
        for block in blocks:
            c = block.conv
            assert (c.out_channels, c.kernel_size, c.stride, c.padding) == (width, (3, 3), (1, 1), (1, 1))
    assert model.pool.levels == [7, 3, 2, 1] and model.pool.num_bins == 63
    assert [(fc.in_features, fc.out_features) for fc in linears(model)] == \
           [(63 * widths[-1], 4096), (4096, 4096), (4096, 1000)]
    assert len(convs(model)) + len(linears(model)) == depth
    # a rectifier after every conv and after fc1, fc2; dropout 0.5 on fc1 and fc2 only
    assert sum(isinstance(m, nn.PReLU) for m in model.modules()) == len(convs(model)) + 2
    dropouts = {name: m.p for name, m in model.named_modules() if isinstance(m, nn.Dropout)}
    assert dropouts == {'drop1': 0.5, 'drop2': 0.5}
    assert model.num_features == widths[-1] and model.head_hidden_size == 4096
    assert model.feature_info == [dict(num_chs=96, reduction=2, module='stem')] + [
        dict(num_chs=w, reduction=2 ** (i + 2), module=f'stages.{i}') for i, w in enumerate(widths)]


@pytest.mark.parametrize('model_name', MODEL_NAMES)
def test_multiply_adds_match_the_paper(model_name):
    macs = count_macs(full_size_meta(model_name))
    assert abs(macs / PAPER_MACS[model_name] - 1) < 0.015, macs


def test_macs_counted_on_meta_equal_real_ones():
    torch.manual_seed(0)
    real = narrow()
    meta = narrow(device='meta')
    assert count_macs(meta, (3, 64, 48)) == count_macs(real, (3, 64, 48)) > 0
    assert count_params(meta) == count_params(real)


def test_fc1_dominates_the_parameters():
    model = full_size_meta('prelu_model_a')
    assert model.fc1.weight.numel() == 63 * 512 * 4096
    assert model.fc1.weight.numel() / count_params(model) > 0.7


def test_models_command_prints_the_complexity_table(capsys):
    assert main(['models']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith('| model |') and len(lines) == 2 + len(MODEL_NAMES)
    for line, name in zip(lines[2:], MODEL_NAMES):
        cells = [c.strip() for c in line.strip('|').split('|')]
        assert cells[0] == name and abs(float(cells[-1]) - 1) < 0.015


# --- kwargs: act, width, fc, classes, channels ---

@pytest.mark.parametrize('act', ['prelu', 'prelu_shared', 'relu'])
def test_act_variants(act):
    model = narrow(act=act)
    reference = narrow()
    prelus = [m for m in model.modules() if isinstance(m, nn.PReLU)]
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if act == 'relu':
        assert not prelus and sum(isinstance(m, nn.ReLU) for m in model.modules()) == len(layers) - 1
    else:
        assert len(prelus) == len(layers) - 1
        for (_, layer), prelu in zip(layers, prelus):
            assert prelu.num_parameters == (layer.weight.shape[0] if act == 'prelu' else 1)
            assert torch.equal(prelu.weight, torch.full_like(prelu.weight, PRELU_INIT))
    # same architecture otherwise
    shapes = {k: v.shape for k, v in model.state_dict().items() if '.act' not in k and not k.startswith('act')}
    assert shapes == {k: v.shape for k, v in reference.state_dict().items()
                      if '.act' not in k and not k.startswith('act')}
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


def test_unknown_act_and_pool_are_rejected():
    with pytest.raises(ValueError, match='prelu_shared'):
        narrow(act='gelu')
    with pytest.raises(ValueError, match="'spp'"):
        narrow(global_pool='avg')
    with pytest.raises(ValueError, match='SPP head'):
        narrow(global_pool='', num_classes=5)


@pytest.mark.parametrize('width_mult,fc_dim', [(0.25, 128), (0.5, 32)])
def test_width_mult_and_fc_dim(width_mult, fc_dim):
    model = timm.create_model('prelu_model_c', width_mult=width_mult, fc_dim=fc_dim, num_classes=10)
    depths, widths, _ = TABLE3['prelu_model_c']
    assert model.stem.conv.out_channels == round(96 * width_mult)
    for stage, n, width in zip(model.stages, depths, widths):
        assert [b.conv.out_channels for b in stage[1:]] == [round(width * width_mult)] * n
    assert [(fc.in_features, fc.out_features) for fc in linears(model)] == \
           [(63 * round(896 * width_mult), fc_dim), (fc_dim, fc_dim), (fc_dim, 10)]
    assert model.head_hidden_size == fc_dim


def test_in_chans_num_classes_drop_rate():
    model = narrow(in_chans=1, num_classes=7, drop_rate=0.3)
    assert model.stem.conv.in_channels == 1 and model.in_chans == 1
    assert model.drop1.p == model.drop2.p == 0.3
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    headless = narrow(num_classes=0).eval()
    assert headless(torch.randn(2, 3, 32, 32)).shape == (2, NARROW['fc_dim'])


# --- He init ---

def assert_drawn_from(layer, expected):
    w = layer.weight.detach().double()
    samples = w.numel()
    # the sample std of N Gaussians has a standard error of about std / sqrt(2 N); allow 5 of them
    assert abs(w.std().item() - expected) < 5 * expected / math.sqrt(2 * samples), (layer, w.std(), expected)
    assert abs(w.mean().item()) < 5 * expected / math.sqrt(samples)
    assert torch.count_nonzero(layer.bias) == 0


@pytest.mark.parametrize('init_mode', ['fan_out', 'fan_in'])
@pytest.mark.parametrize('act,slope', [('prelu', PRELU_INIT), ('prelu_shared', PRELU_INIT), ('relu', 0.0)])
def test_he_init_statistics(act, slope, init_mode):
    """Convs: std sqrt(2 / ((1 + a^2) n)), n = k^2 d (backward case) or k^2 c (forward); fc: forward case."""
    torch.manual_seed(0)
    model = timm.create_model('prelu_model_a', act=act, width_mult=0.25, fc_dim=256, num_classes=10,
                              init_mode=init_mode)
    for conv in convs(model):
        k2 = conv.kernel_size[0] * conv.kernel_size[1]
        n = k2 * (conv.out_channels if init_mode == 'fan_out' else conv.in_channels)
        assert_drawn_from(conv, math.sqrt(2 / ((1 + slope ** 2) * n)))
    for fc in linears(model):
        assert_drawn_from(fc, math.sqrt(2 / ((1 + slope ** 2) * fc.in_features)))


def test_default_init_is_the_papers_backward_case():
    model = narrow()
    assert model.init_mode == 'fan_out' and model.fc_init == 'he'
    torch.manual_seed(0)
    stem = model.stem.conv  # fan-in 3 * 49 = 147, fan-out 12 * 49 = 588: the cases differ by a factor 2
    assert_drawn_from(stem, math.sqrt(2 / ((1 + PRELU_INIT ** 2) * 49 * stem.out_channels)))


def test_paper_fc_init():
    """fc_init='paper': fc1 and fc2 std 0.01, the classifier 0.001 (also when a new classifier is made)."""
    torch.manual_seed(0)
    model = timm.create_model('prelu_model_a', width_mult=0.125, fc_dim=256, num_classes=100, fc_init='paper')
    for layer, std in ((model.fc1, 0.01), (model.fc2, 0.01), (model.head, 0.001)):
        assert_drawn_from(layer, std)
    model.reset_classifier(50)
    assert_drawn_from(model.head, 0.001)
    model.init_weights()
    assert_drawn_from(model.fc1, 0.01)


@pytest.mark.parametrize('kwarg', ['init_mode', 'fc_init', 'spp_bins'])
def test_unknown_init_and_binning_rules_are_rejected(kwarg):
    with pytest.raises(ValueError, match=f'unknown {kwarg}'):
        narrow(**{kwarg: 'fan_sideways'})


@pytest.mark.parametrize('spp_bins', ['sppnet', 'adaptive'])
def test_spp_bins_kwarg_selects_the_rule(spp_bins):
    torch.manual_seed(0)
    model = narrow(spp_bins=spp_bins, num_classes=10).eval()
    assert model.pool.bins == spp_bins
    features = torch.randn(2, model.num_features, 14, 14)
    with torch.no_grad():
        pooled = model.pool(features)
    level3 = pooled[:, model.num_features * 49:model.num_features * 58].reshape(2, -1, 3, 3)
    # the 3-level's last bin: rows 8-12 (SPP-net) or 9-13 (adaptive)
    rows = slice(8, 13) if spp_bins == 'sppnet' else slice(9, 14)
    assert torch.equal(level3[..., 2, 2], features[:, :, rows, rows].amax(dim=(-1, -2)))
    assert narrow().pool.bins == 'sppnet'  # SPP-net's fixed-size rule by default


def test_init_weights_reinitialises_after_to_empty():
    model = narrow(device='meta').to_empty(device='cpu')
    model.init_weights()
    prelus = [m for m in model.modules() if isinstance(m, nn.PReLU)]
    assert all(torch.equal(p.weight, torch.full_like(p.weight, PRELU_INIT)) for p in prelus)
    assert all(torch.count_nonzero(m.bias) == 0 for m in convs(model) + linears(model))
    assert torch.isfinite(model(torch.randn(1, 3, 32, 32))).all()


@pytest.mark.parametrize('act', ['prelu', 'prelu_shared', 'relu'])
def test_no_weight_decay_names_every_slope_and_nothing_else(act):
    model = narrow(act=act)
    slopes = {f'{name}.weight' for name, m in model.named_modules() if isinstance(m, nn.PReLU)}
    assert model.no_weight_decay() == slopes
    assert slopes <= set(dict(model.named_parameters()))
    assert len(slopes) == (0 if act == 'relu' else len(convs(model)) + 2)


# --- any input size ---

@pytest.mark.parametrize('size', [(15, 15), (16, 16), (15, 40), (33, 17), (64, 48), (97, 131)],
                         ids=lambda s: f'{s[0]}x{s[1]}')
def test_any_input_size(size):
    model = narrow(num_classes=10).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, model.num_features, feature_side(size[0]), feature_side(size[1]))
        assert model.forward_head(features, pre_logits=True).shape == (2, NARROW['fc_dim'])
        assert model(x).shape == (2, 10)


def test_minimum_input_size_is_computed_from_the_architecture():
    model = narrow()
    assert model.min_input_size == 15
    assert feature_side(15) == 1 and feature_side(14) == 0
    for size in [(14, 14), (15, 14), (8, 100)]:
        with pytest.raises(ValueError, match='at least 15 px'):
            model(torch.randn(1, 3, *size))
    with pytest.raises(ValueError, match='at least 15 px'):
        model.forward_intermediates(torch.randn(1, 3, 14, 30))


# --- timm API: heads, features, intermediates, pruning, checkpointing, scripting ---

def test_reset_classifier_and_headless_model():
    model = narrow(num_classes=10).eval()
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(0)
        assert torch.equal(model(x), pre_logits)
        model.reset_classifier(0, '')  # no head: the last conv map
        assert torch.equal(model(x), model.forward_features(x))
        assert model.head_hidden_size == model.num_features
        model.reset_classifier(5)  # a classifier brings a fresh SPP head back
        assert model(x).shape == (2, 5) and model.global_pool == 'spp'
        assert not model.head.training and not model.drop1.training
    with pytest.raises(ValueError, match='SPP head'):
        model.reset_classifier(5, '')
    with pytest.raises(ValueError, match="'spp'"):
        model.reset_classifier(5, 'avg')


def test_group_matcher():
    model = narrow()
    coarse = timm.models.group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse) == 1 + 3 + 1  # stem, stages, head (unmatched -> last)
    fine = timm.models.group_parameters(model, model.group_matcher(coarse=False))
    assert len(fine) == 1 + 15 + 1


def test_features_only():
    model = narrow(features_only=True).eval()
    assert model.feature_info.channels() == [12, 32, 64, 64]
    assert model.feature_info.reduction() == [2, 4, 8, 16]
    outputs = model(torch.randn(1, 3, 64, 48))
    assert [tuple(o.shape[-2:]) for o in outputs] == [(32, 24), (16, 12), (8, 6), (4, 3)]


def test_forward_intermediates_and_stop_early():
    model = narrow().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, taps = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x)) and len(taps) == 4
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        assert torch.equal(early[0], taps[1])
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(last_two, taps[2:]))


@pytest.mark.parametrize('indices', [[0], [1], [2], [3], [0, 1, 2, 3]])
def test_prune_intermediate_layers(indices):
    model = narrow(drop_rate=0.5).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
    pruned = copy.deepcopy(model).train()
    take = pruned.prune_intermediate_layers(indices)
    assert pruned.num_classes == 0 and pruned.num_features == model.feature_info[max(indices)]['num_chs']
    selected = pruned.forward_intermediates(x, indices=take, intermediates_only=True)
    sum(f.sum() for f in selected).backward()
    assert not [n for n, p in pruned.named_parameters() if p.grad is None]
    pruned.eval()
    with torch.no_grad():
        for i, tap in zip(indices, pruned.forward_intermediates(x, indices=take, intermediates_only=True)):
            assert torch.equal(tap, taps[i])
        assert torch.equal(pruned(x), taps[max(indices)])  # headless: forward ends at the last kept tap


def test_prune_keeping_the_head_keeps_the_output():
    model = narrow().eval()
    x = torch.randn(1, 3, 32, 32)
    pruned = copy.deepcopy(model)
    pruned.prune_intermediate_layers([3], prune_head=False)
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x))


@pytest.mark.parametrize('features_only', [False, True])
def test_grad_checkpointing_gives_the_same_output_and_gradients(features_only):
    x = torch.randn(2, 3, 32, 32)
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = narrow(features_only=features_only).train()
        model.set_grad_checkpointing(checkpointing)
        torch.manual_seed(1)  # same dropout masks
        out = model(x)
        out = torch.cat([o.flatten(1) for o in out], 1) if features_only else out
        out.pow(2).mean().backward()
        results.append((out.detach(), [p.grad for p in model.parameters()]))
    (out0, grads0), (out1, grads1) = results
    torch.testing.assert_close(out1, out0)
    for g0, g1 in zip(grads0, grads1):
        torch.testing.assert_close(g1, g0)


def test_torchscript_matches_eager():
    model = narrow(num_classes=10).eval()
    scripted = torch.jit.script(model)
    for size in [(15, 15), (40, 56)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), model(x))


# --- pretrained weights from a local file ---

@pytest.fixture
def checkpoint_file(tmp_path):
    """A narrow, 10-class prelu_model_a saved as safetensors, with the model it came from."""
    def save(name='prelu_model_a', **kwargs):
        torch.manual_seed(0)
        model = narrow(name, **{'num_classes': 10, **kwargs})
        path = tmp_path / f'{name}-{len(list(tmp_path.iterdir()))}.safetensors'
        safetensors.torch.save_file(model.state_dict(), str(path))
        return model, path
    return save


def load(path, name='prelu_model_a', **kwargs):
    return narrow(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)


def test_pretrained_file_loads_bit_identical(checkpoint_file):
    source, path = checkpoint_file(num_classes=1000)  # the pretrained config's classes
    loaded = load(path)
    expected = source.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())


def test_checkpoint_with_other_classes_loads_into_a_model_with_those_classes(checkpoint_file):
    source, path = checkpoint_file(num_classes=10)
    loaded = load(path, num_classes=10)
    expected = source.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    assert loaded.pretrained_cfg['num_classes'] == 10


@pytest.mark.parametrize('source_classes', [10, 1000])
def test_other_num_classes_reinitialises_the_classifier(checkpoint_file, source_classes):
    source, path = checkpoint_file(num_classes=source_classes)
    loaded = load(path, num_classes=7)
    expected = source.state_dict()
    for k, v in loaded.state_dict().items():
        if k.startswith('head.'):
            assert v.shape[0] == 7
        else:
            assert torch.equal(v, expected[k]), k
    assert torch.count_nonzero(loaded.head.bias) == 0 and loaded.head.weight.std() > 0


def test_in_chans_and_features_only_from_a_pretrained_file(checkpoint_file):
    source, path = checkpoint_file(num_classes=1000)
    gray = load(path, in_chans=1, num_classes=5)
    torch.testing.assert_close(gray.stem.conv.weight, source.stem.conv.weight.sum(dim=1, keepdim=True))
    assert torch.equal(gray.fc1.weight, source.fc1.weight)
    features = load(path, features_only=True).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = source.eval().forward_intermediates(x, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(features(x), expected))


@pytest.mark.parametrize('source,target,expected', [
    (dict(name='prelu_model_b'), dict(), r'unexpected in the checkpoint: stages\.0\.6\.'),
    (dict(width_mult=0.25), dict(), r'shape mismatch: stem\.conv\.weight \(checkpoint \(24, 3, 7, 7\), '
                                    r'model \(12, 3, 7, 7\)\)'),
    (dict(fc_dim=32), dict(), r'fc1\.weight \(checkpoint \(32, 4032\), model \(64, 4032\)\)'),
    (dict(), dict(act='relu'), r'unexpected in the checkpoint: .*stages\.0\.1\.act\.weight'),
    (dict(act='relu'), dict(), r'missing from the checkpoint: stem\.act\.weight'),
    (dict(), dict(act='prelu_shared'), r'stem\.act\.weight \(checkpoint \(12,\), model \(1,\)\)'),
], ids=['other-model', 'other-width', 'other-fc', 'prelu-into-relu', 'relu-into-prelu', 'channelwise-into-shared'])
def test_checkpoint_of_another_architecture_is_a_clear_error(checkpoint_file, source, target, expected):
    _, path = checkpoint_file(**source)
    with pytest.raises(PretrainedMismatchError, match=expected) as error:
        load(path, num_classes=10, **target)
    assert isinstance(error.value, ValueError) and isinstance(error.value, UserError)
    assert 'Create the model the checkpoint was trained as' in str(error.value)


def test_pretrained_file_under_the_tag_name_loads(checkpoint_file):
    source, path = checkpoint_file(num_classes=1000)
    loaded = load(path, name='prelu_model_a.in1k')
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in loaded.state_dict().items())


# --- pretrained tags without published weights ---

@pytest.mark.parametrize('name', MODEL_NAMES + ['prelu_model_b.in1k'])
def test_pretrained_without_published_weights_fails_at_once(name):
    with pytest.raises(ModelSourceError, match=r'no weights are published') as error:
        timm.create_model(name, pretrained=True, device='meta')
    message = str(error.value)
    for how in ('pretrained_cfg_overlay=dict(file=', 'local-dir:', 'hf-hub:'):
        assert how in message, how
    assert error.value.param == 'pretrained'
    with pytest.raises(ModelSourceError, match='no weights are published'):
        timm.create_model(name, pretrained=True, features_only=True, device='meta')


def test_pretrained_fails_without_touching_an_unreachable_network(tmp_path):
    """Before: about 38 s of retries offline, then a generic connection error. HF_HUB_OFFLINE is unset and the
    Hub endpoint is a closed local port, so any download attempt would retry."""
    import socket
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]  # closed once the block ends
    script = (
        'import time, timm, timm_prelu\n'
        'start = time.perf_counter()\n'
        'try:\n'
        '    timm.create_model("prelu_model_c", pretrained=True, device="meta")\n'
        'except timm_prelu.errors.ModelSourceError as e:\n'
        '    print(round(time.perf_counter() - start, 3), e)\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith('HF_')}
    env.update(HF_ENDPOINT=f'http://127.0.0.1:{port}', HF_HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seconds, message = proc.stdout.split(' ', 1)
    assert 'no weights are published for prelu_model_c.in1k' in message
    assert float(seconds) < 1.0


def test_a_tag_with_weights_passes_to_timms_loader(tmp_path, monkeypatch, checkpoint_file):
    """Once published, a tag's config has an hf_hub_id and the same call goes to the Hub (offline here: the
    Hub client's own error, not ours); a user's own hf_hub_id or file does the same."""
    from timm_prelu.models import prelu_net
    monkeypatch.setattr(prelu_net, 'PUBLISHED_TAGS', frozenset({'prelu_model_c.in1k'}))
    cfg = prelu_net._tag_cfg('prelu_model_c.in1k')
    assert cfg['hf_hub_id'] == f'{HUB_ORG}/prelu_model_c.in1k'
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)
    for kwargs in (dict(pretrained_cfg=dict(cfg, architecture='prelu_model_c', tag='in1k')),
                   dict(pretrained_cfg_overlay=dict(hf_hub_id='me/my-prelu'))):
        with pytest.raises(OSError, match='cannot find the requested files in the local cache'):
            timm.create_model('prelu_model_c', pretrained=True, device='meta', **kwargs)
    source, path = checkpoint_file(num_classes=1000)
    assert torch.equal(load(path).fc1.weight, source.fc1.weight)


def test_checkpoint_classes_differing_from_an_unchanged_model_is_a_clear_error(checkpoint_file):
    _, path = checkpoint_file(num_classes=10)
    with pytest.raises(PretrainedMismatchError, match='10 classes, the model 1000: .*num_classes=10'):
        load(path)  # num_classes left at the config's 1000
