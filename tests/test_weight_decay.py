"""PReLU slopes get no weight decay however train.py builds the optimizer; conv / fc weights get the recipe's."""
import pytest
import torch.nn as nn

from timm.models import create_model
from timm.optim import create_optimizer_v2, optimizer_kwargs

from timm_prelu.training.launcher import find_recipe, parse_train_args

from conftest import NUM_CLASSES, TINY_KWARGS

RECIPE_WEIGHT_DECAY = 5e-4


def train_py_model_and_optimizer(argv, train_script):
    """The model and optimizer exactly as train.py builds them from ``argv``."""
    args = parse_train_args(argv, train_script)
    model = create_model(
        args.model, pretrained=False, in_chans=3, num_classes=args.num_classes, drop_rate=args.drop,
        drop_path_rate=args.drop_path, drop_block_rate=args.drop_block, global_pool=args.gp,
        bn_momentum=args.bn_momentum, bn_eps=args.bn_eps, scriptable=args.torchscript,
        checkpoint_path=args.initial_checkpoint, **args.model_kwargs)
    args.lr = args.lr or args.lr_base * args.batch_size / args.lr_base_size  # train.py's rule, one process
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    return args, model, optimizer


def weight_decay_of(model, optimizer):
    """Parameter name -> weight decay of the one group that holds it."""
    group_of = {}
    for group in optimizer.param_groups:
        for p in group['params']:
            assert id(p) not in group_of, 'a parameter sits in two groups'
            group_of[id(p)] = group['weight_decay']
    names = {name: group_of[id(p)] for name, p in model.named_parameters() if id(p) in group_of}
    assert len(names) == len(list(model.parameters())), 'a parameter is not optimized'
    return names


def names_of(model, types):
    return [f'{n}.weight' for n, m in model.named_modules() if isinstance(m, types)]


@pytest.mark.parametrize('act', ['prelu', 'prelu_shared'])
@pytest.mark.parametrize('opt_flags', [
    [],  # the recipe's SGD with classical momentum
    ['--opt', 'sgd'],
    ['--opt', 'adamw'],
    ['--opt', 'lamb'],
    ['--opt', 'sgd', '--layer-decay', '0.75'],
], ids=['recipe', 'sgd', 'adamw', 'lamb', 'sgd-layer-decay'])
def test_train_py_optimizer_skips_slopes(opt_flags, act, train_script):
    kwargs = [f'{k}={v}' for k, v in {**TINY_KWARGS, 'act': act}.items()]
    argv = ['--config', str(find_recipe('prelu_model_a')), '--model-kwargs', *kwargs,
            '--num-classes', str(NUM_CLASSES), *opt_flags]
    args, model, optimizer = train_py_model_and_optimizer(argv, train_script)
    assert args.weight_decay == RECIPE_WEIGHT_DECAY
    decay = weight_decay_of(model, optimizer)

    slopes = names_of(model, nn.PReLU)
    assert len(slopes) == 18  # stem + 15 stage convs + fc1 + fc2 of model A
    assert all(decay[n] == 0 for n in slopes)
    weights = names_of(model, (nn.Conv2d, nn.Linear))
    assert len(weights) == 19  # and the classifier
    assert all(decay[n] == RECIPE_WEIGHT_DECAY for n in weights)
    if '--layer-decay' in opt_flags:
        scales = {g['lr_scale'] for g in optimizer.param_groups}
        assert len(scales) > 1 and max(scales) == 1.0  # the layer-wise lr decay really is on


def test_explicit_no_weight_decay_without_timm_1d_rule(train_script):
    """Even with timm's 'no decay for 1-D params' rule off, no_weight_decay() keeps the slopes undecayed."""
    args = parse_train_args(['--config', str(find_recipe('prelu_model_a')), '--model-kwargs',
                             *[f'{k}={v}' for k, v in TINY_KWARGS.items()]], train_script)
    model = create_model(args.model, num_classes=NUM_CLASSES, **args.model_kwargs)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), filter_bias_and_bn=False)
    decay = weight_decay_of(model, optimizer)
    assert all(decay[n] == 0 for n in names_of(model, nn.PReLU))
    assert decay['fc1.bias'] == RECIPE_WEIGHT_DECAY  # the rule is really off: biases are decayed now
