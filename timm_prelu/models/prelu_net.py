"""PReLU-nets: models A, B and C of He et al. (ICCV 2015)

Paper:
* `Delving Deep into Rectifiers: Surpassing Human-Level Performance on ImageNet Classification`
  - https://arxiv.org/abs/1502.01852

Table 3 of the paper: a 7x7/2 stem, three stages of 3x3 convs each opened by a 2x2/2 max pool, spatial pyramid
max pooling {7, 3, 2, 1} and fc 4096 -> 4096 -> classes with dropout. Every conv and the first two fc layers are
followed by a PReLU (learned per channel, initialised to 0.25); weights are He-initialised for that slope.

Paper fidelity of the defaults (each a kwarg, see ``PReLUNet.__init__``):

* ``spp_bins='sppnet'``: SPP-net's fixed-size rule, window ceil(a/n), stride floor(a/n). A reading, not stated by
  the paper: it says its SPP follows SPP-net and gives no binning rule. The default is the rule SPP-net's paper
  states for its training; SPP-net's own pooling code for multi-view testing bins adaptively, which is the other
  reading, ``'adaptive'`` (adaptive_max_pool2d's bins, which also cover the rows the fixed-size rule leaves out).
  The two differ only where a level does not divide the map: at 224 px, the 3-level of the 14 x 14 map (rows 0-4,
  4-8, 8-12 against 0-4, 4-9, 9-13). Changing the rule of trained weights changes their outputs, so use the rule
  they were trained with.
* ``init_mode='fan_out'``: the paper trained with the backward case, Eqn. (14), n = k^2 d. ``'fan_in'`` is the
  forward case, Eqn. (10), n = k^2 c; the paper shows both make every model converge.
* ``fc_init='he'`` is a stated deviation: the paper drew fc1 and fc2 from std 0.01 and fc3 from std 0.001, constants
  tuned for its unnormalised input (pixel values about +-128 around the mean). These models take normalised input
  (timm's mean / std) and come in other widths (``width_mult``, ``fc_dim``), where fixed constants leave the fc
  layers far from unit gain, so the fc layers get the forward case of He init (n = fan-in, which keeps the logits'
  scale independent of the number of classes). ``fc_init='paper'`` gives the paper's constants.
"""
from functools import partial
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import get_device_dtype, register_notrace_function
from timm.models import (
    build_model_with_cfg, checkpoint, checkpoint_seq, generate_default_cfgs, register_model, resolve_pretrained_cfg)
from timm.models._features import feature_take_indices

from ..errors import ModelSourceError, PretrainedMismatchError
from ..layers import SPP_BINS, SpatialPyramidPool, create_rectifier, he_init_layer_, rectifier_slope

__all__ = ['PReLUNet', 'HUB_ORG', 'PUBLISHED_TAGS', 'INIT_MODES', 'FC_INITS', 'min_input_size', 'checkpoint_filter_fn',
           'PretrainedMismatchError']

# Published weights live at f'{HUB_ORG}/{model}.{tag}' on the Hugging Face Hub.
HUB_ORG = 'timm-prelu'
# The tags whose weights are published. Only these get an hf_hub_id, so only they appear in timm.list_pretrained
# and load with pretrained=True alone; none are published yet.
PUBLISHED_TAGS: FrozenSet[str] = frozenset()

# The paper's Table 3: convs per stage and their widths.
cfgs: Dict[str, Dict[str, Tuple[int, ...]]] = {
    'prelu_model_a': dict(depths=(5, 5, 5), widths=(256, 512, 512)),
    'prelu_model_b': dict(depths=(6, 6, 6), widths=(256, 512, 512)),
    'prelu_model_c': dict(depths=(6, 6, 6), widths=(384, 768, 896)),
}
STEM_WIDTH = 96
ACTS = ('prelu', 'prelu_shared', 'relu')
POOLS = ('spp', '')
INIT_MODES = ('fan_out', 'fan_in')
FC_INITS = ('he', 'paper')
PAPER_FC_STD = {'fc1': 0.01, 'fc2': 0.01, 'head': 0.001}  # for the paper's unnormalised input
HEAD_LAYERS = ('pool', 'fc1', 'act1', 'drop1', 'fc2', 'act2', 'drop2')


def min_input_size(num_stages: int = 3) -> int:
    """Smallest image side that still leaves a 1 x 1 map after the stem and the stages' 2x2 pools."""
    size = 1
    for _ in range(num_stages):
        size *= 2  # inverse of a 2x2/2 floor pool
    return 2 * size - 1  # inverse of the 7x7/2 stem with padding 3: out = (in - 1) // 2 + 1


@register_notrace_function  # data-dependent check; FX cannot trace a branch on the input size
def check_input_size(x: torch.Tensor, min_size: int) -> None:
    if x.dim() != 4:
        raise ValueError(f'expected an NCHW image batch, got a tensor of shape {tuple(x.shape)}')
    h, w = x.shape[-2], x.shape[-1]
    if h < min_size or w < min_size:
        raise ValueError(
            f'input of {h}x{w} px is too small for this PReLU-net: both sides must be at least {min_size} px '
            f'(resize the image up)')


def _empty(layer_cls: type, *args: Any, device=None, dtype=None, **kwargs: Any) -> nn.Module:
    """A conv / linear layer with uninitialised storage, for init_weights to fill.

    Skips torch's default init, which He init overwrites anyway: drawing twice costs seconds for model C's 330M.
    """
    layer = layer_cls(*args, device='meta', dtype=dtype, **kwargs)
    return layer.to_empty(device=device if device is not None else torch.get_default_device())


def _rectifier(act: str, channels: int, device=None, dtype=None) -> nn.Module:
    # create_rectifier takes no device / dtype: move the (few) slopes once created
    return create_rectifier(act, channels).to(device=device, dtype=dtype)


def _initial_slope(rectifier: nn.Module) -> float:
    """The slope ``a`` a rectifier starts with, read without touching its (maybe meta or empty) tensors."""
    return float(rectifier.init) if isinstance(rectifier, nn.PReLU) else rectifier_slope(rectifier)


class ConvAct(nn.Module):
    """A conv followed by its rectifier."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, act: str, device=None, dtype=None):
        super().__init__()
        self.conv = _empty(nn.Conv2d, in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2,
                           device=device, dtype=dtype)
        self.act = _rectifier(act, out_chs, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class PReLUNet(nn.Module):
    """PReLU-net (He et al., 2015): stem, three conv stages, spatial pyramid pooling and a 3-layer fc head."""

    def __init__(
            self,
            depths: Sequence[int] = (5, 5, 5),
            widths: Sequence[int] = (256, 512, 512),
            num_classes: int = 1000,
            in_chans: int = 3,
            act: str = 'prelu',
            width_mult: float = 1.0,
            fc_dim: int = 4096,
            spp_levels: Sequence[int] = (7, 3, 2, 1),
            spp_bins: str = 'sppnet',
            init_mode: str = 'fan_out',
            fc_init: str = 'he',
            drop_rate: float = 0.5,
            global_pool: str = 'spp',
            device=None,
            dtype=None,
    ) -> None:
        """
        Args:
            depths: Number of 3x3 convs in each stage.
            widths: Output channels of each stage.
            num_classes: Number of classifier outputs (0 for none).
            in_chans: Number of input image channels.
            act: 'prelu' (one slope per channel), 'prelu_shared' (one per layer) or 'relu'.
            width_mult: Multiplier of every conv width (stem included); 1.0 is the paper's network.
            fc_dim: Width of fc1 and fc2 (the paper's 4096).
            spp_levels: Pyramid levels of the spatial pyramid pooling.
            spp_bins: 'sppnet' (SPP-net's fixed-size rule: window ceil(a/n), stride floor(a/n)) or 'adaptive' (the
                bins of adaptive_max_pool2d, covering every row); the paper states neither, see
                :mod:`timm_prelu.layers.spp`.
            init_mode: He init of the convs: 'fan_out' (the paper's, backward case, n = k^2 d) or 'fan_in'
                (forward case, n = k^2 c).
            fc_init: 'he' (forward case He init of fc1, fc2 and the classifier: a stated deviation for normalised
                input) or 'paper' (std 0.01, 0.01, 0.001, as the paper for its unnormalised input).
            drop_rate: Dropout after fc1 and fc2.
            global_pool: 'spp' (the paper's head: SPP, fc1, fc2) or '' (no head: forward returns the last conv
                map; needs num_classes=0).
        """
        super().__init__()
        if act not in ACTS:
            raise ValueError(f'unknown act {act!r}: choose one of {ACTS}')
        if width_mult <= 0 or fc_dim <= 0:
            raise ValueError(f'width_mult and fc_dim must be positive, got {width_mult} and {fc_dim}')
        for name, value, choices in (('spp_bins', spp_bins, SPP_BINS), ('init_mode', init_mode, INIT_MODES),
                                     ('fc_init', fc_init, FC_INITS)):
            if value not in choices:
                raise ValueError(f'unknown {name} {value!r}: choose one of {choices}')
        dd = {'device': device, 'dtype': dtype}
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.act = act
        self.fc_dim = fc_dim
        self.spp_levels = tuple(int(n) for n in spp_levels)
        self.spp_bins = spp_bins
        self.init_mode = init_mode
        self.fc_init = fc_init
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.min_input_size = min_input_size(len(depths))

        stem_chs = max(1, round(STEM_WIDTH * width_mult))
        self.stem = ConvAct(in_chans, stem_chs, 7, 2, act, **dd)
        self.feature_info = [dict(num_chs=stem_chs, reduction=2, module='stem')]
        stages = []
        prev_chs = stem_chs
        for i, (depth, width) in enumerate(zip(depths, widths)):
            out_chs = max(1, round(width * width_mult))
            blocks: List[nn.Module] = [nn.MaxPool2d(kernel_size=2, stride=2)]
            for d in range(depth):
                blocks.append(ConvAct(prev_chs if d == 0 else out_chs, out_chs, 3, 1, act, **dd))
            stages.append(nn.Sequential(*blocks))
            prev_chs = out_chs
            self.feature_info.append(dict(num_chs=out_chs, reduction=2 ** (i + 2), module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.num_features = prev_chs

        self.global_pool = ''
        self.head_hidden_size = prev_chs
        for name in HEAD_LAYERS + ('head',):
            setattr(self, name, nn.Identity())
        self.init_weights()
        self.reset_classifier(num_classes, global_pool)  # builds and initialises the head

    @torch.no_grad()
    def init_weights(self) -> None:
        """He init of the convs (``init_mode``), the fc rule of ``fc_init``, slopes back to their start, zero biases.

        The forward case takes ``a`` from the rectifier feeding a layer, the backward case from the one after it;
        all rectifiers of one net start at the same slope and the paper keeps the 1/2 factor at the ends (first
        layer, classifier), so one ``a`` serves every layer.
        """
        slope = _initial_slope(self.stem.act)
        for m in self.modules():
            if isinstance(m, nn.PReLU):
                m.reset_parameters()
            elif isinstance(m, nn.Conv2d):
                he_init_layer_(m, slope=slope, mode=self.init_mode)
        for name in ('fc1', 'fc2', 'head'):
            self._init_fc(name)

    @torch.no_grad()
    def _init_fc(self, name: str) -> None:
        """fc1, fc2 or the classifier (if present) by ``fc_init``."""
        layer = getattr(self, name)
        if not isinstance(layer, nn.Linear):
            return
        if self.fc_init == 'paper':
            layer.weight.normal_(0.0, PAPER_FC_STD[name])
            if layer.bias is not None:
                layer.bias.zero_()
        else:
            he_init_layer_(layer, slope=_initial_slope(self.stem.act), mode='fan_in')

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """PReLU slopes: weight decay would push them to 0, i.e. towards ReLU (paper, section 2.1)."""
        return {f'{name}.weight' for name, m in self.named_modules() if isinstance(m, nn.PReLU)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.(\d+)',
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier; the SPP head (pool, fc1, fc2) is kept, removed ('') or rebuilt ('spp').

        Args:
            num_classes: Number of classes of the new classifier, 0 for none (forward then returns fc2's output).
            global_pool: 'spp', '' (no head at all: forward returns the last conv map) or None to keep the
                current one. A classifier needs the SPP head: on a headless model num_classes > 0 rebuilds it.
        """
        if global_pool is None:
            global_pool = self.global_pool or ('spp' if num_classes > 0 else '')
        if global_pool not in POOLS:
            raise ValueError(
                f"PReLU-nets pool with spatial pyramid pooling: global_pool must be 'spp' or '' (no head), "
                f"got {global_pool!r}")
        if not global_pool and num_classes > 0:
            raise ValueError("a classifier needs the SPP head: use global_pool='spp' or num_classes=0")
        dd = get_device_dtype(self)
        if global_pool != self.global_pool:
            if global_pool:
                self._build_spp_head(**dd)
            else:
                for name in HEAD_LAYERS:
                    setattr(self, name, nn.Identity())
                self.head_hidden_size = self.num_features
            self.global_pool = global_pool
        self.num_classes = num_classes
        if num_classes > 0:
            self.head = _empty(nn.Linear, self.head_hidden_size, num_classes, **dd)
            self._init_fc('head')
        else:
            self.head = nn.Identity()
        self.train(self.training)  # new modules follow the model's mode

    def _build_spp_head(self, device=None, dtype=None) -> None:
        """SPP -> fc1 -> rectifier -> dropout -> fc2 -> rectifier -> dropout, freshly initialised."""
        self.pool = SpatialPyramidPool(self.spp_levels, self.spp_bins)
        self.fc1 = _empty(nn.Linear, self.num_features * self.pool.num_bins, self.fc_dim, device=device, dtype=dtype)
        self.act1 = _rectifier(self.act, self.fc_dim, device=device, dtype=dtype)
        self.drop1 = nn.Dropout(self.drop_rate)
        self.fc2 = _empty(nn.Linear, self.fc_dim, self.fc_dim, device=device, dtype=dtype)
        self.act2 = _rectifier(self.act, self.fc_dim, device=device, dtype=dtype)
        self.drop2 = nn.Dropout(self.drop_rate)
        self._init_fc('fc1')
        self._init_fc('fc2')
        self.head_hidden_size = self.fc_dim

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that returns intermediates.

        Args:
            x: Input image tensor.
            indices: Take last n features if int, all if None, select matching indices if sequence.
                Index 0 is the stem output, 1-3 the stage outputs (the last is the forward_features output).
            norm: Unused (no final norm).
            stop_early: Stop iterating over stages when the last desired intermediate is reached.
            output_fmt: Shape of intermediate feature outputs; only 'NCHW'.
            intermediates_only: Only return intermediate features.
        """
        assert output_fmt in ('NCHW',), 'Output shape must be NCHW.'
        if not torch.jit.is_scripting():
            check_input_size(x, self.min_input_size)
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)

        x = self.stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        if torch.jit.is_scripting() or not stop_early:  # can't slice stages in torchscript
            stages = self.stages
        else:
            stages = self.stages[:max_index]
        for i, stage in enumerate(stages):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(stage, x)
            else:
                x = stage(x)
            if i + 1 in take_indices:
                intermediates.append(x)

        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last wanted intermediate, and the head if asked or if its input is gone."""
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        if max_index < len(self.stages):
            self.stages = self.stages[:max_index]
            self.num_features = self.feature_info[max_index]['num_chs']
            self.min_input_size = min_input_size(len(self.stages))
            prune_head = True  # fc1 is sized for the last stage's map
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> last conv feature map (N, num_features, H/16, W/16)."""
        if not torch.jit.is_scripting():
            check_input_size(x, self.min_input_size)
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map (any size >= 1x1) -> SPP -> fc1 -> fc2 [-> classifier]."""
        x = self.pool(x)
        x = self.drop1(self.act1(self.fc1(x)))
        x = self.drop2(self.act2(self.fc2(x)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


def _describe_mismatch(state_dict: Dict[str, torch.Tensor], model: nn.Module, skip: Sequence[str]) -> List[str]:
    """Readable lines for every key whose presence or shape differs between checkpoint and model."""
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith(tuple(skip))}
    given = {k: v.shape for k, v in state_dict.items() if not k.startswith(tuple(skip))}
    lines = []
    shape_diff = [k for k in expected if k in given and given[k] != expected[k]]
    for name, keys in (
            ('shape mismatch', shape_diff),
            ('missing from the checkpoint', [k for k in expected if k not in given]),
            ('unexpected in the checkpoint', [k for k in given if k not in expected])):
        if keys:
            shown = [f'{k} (checkpoint {tuple(given[k])}, model {tuple(expected[k])})' if k in shape_diff else k
                     for k in keys[:4]]
            more = f' and {len(keys) - 4} more' if len(keys) > 4 else ''
            lines.append(f'{name}: {", ".join(shown)}{more}')
    return lines


def checkpoint_filter_fn(
        state_dict: Dict[str, torch.Tensor],
        model: PReLUNet,
        features_only: bool = False,
) -> Dict[str, torch.Tensor]:
    """Check a checkpoint against the model before timm loads it, so a misfit is one readable error.

    The classifier follows timm's rule (a model with other num_classes than the pretrained config gets a new
    classifier), with the checkpoint's own classifier as the reference: the config's num_classes is set to the
    checkpoint's, so a model created with the checkpoint's num_classes loads its classifier as well.
    """
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    arch = cfg.get('architecture', type(model).__name__)
    ckpt_classes = state_dict['head.weight'].shape[0] if 'head.weight' in state_dict else 0
    model_classes = 0 if features_only else model.num_classes
    if cfg and cfg.get('num_classes') != ckpt_classes:
        if model_classes != ckpt_classes and model_classes == cfg.get('num_classes'):
            raise PretrainedMismatchError(
                f'the checkpoint for {arch} has a classifier of {ckpt_classes} classes, the model {model_classes}: '
                f'create the model with num_classes={ckpt_classes} to load it, or start a new N-class classifier '
                f'with num_classes=N and pretrained_cfg_overlay=dict(..., num_classes={ckpt_classes})')
        cfg['num_classes'] = ckpt_classes  # timm compares the model's num_classes with this to keep or drop 'head'

    skip = ['head.'] if model_classes != ckpt_classes else []
    stem = state_dict.get('stem.conv.weight')
    cfg_in_chans = (cfg.get('input_size') or (3,))[0]
    if stem is not None and stem.shape[1] == cfg_in_chans and stem.shape[1] != model.in_chans:
        skip.append('stem.conv.weight')  # timm adapts the first conv to the model's in_chans
    problems = _describe_mismatch(state_dict, model, skip)
    if problems:
        raise PretrainedMismatchError(
            f'the checkpoint does not fit {arch}: ' + '; '.join(problems) +
            '. Create the model the checkpoint was trained as (same model name and the same act, width_mult, '
            'fc_dim, spp_levels and in_chans kwargs)')
    return state_dict


def _check_weights_exist(variant: str, kwargs: Dict[str, Any]) -> None:
    """Fail at once, before any download, when ``pretrained=True`` names no weights.

    timm would warn and return a randomly initialised model for a tag without weights; a tag of this package has
    weights once it is in PUBLISHED_TAGS (then it has an hf_hub_id), or when the caller names a source.
    """
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                 pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    if cfg.has_weights or cfg.state_dict is not None:
        return
    tag = f'{variant}.{cfg.tag}' if cfg.tag else variant
    raise ModelSourceError(
        f'no weights are published for {tag} yet, so pretrained=True has nothing to load. Load your own: '
        f"timm.create_model('{variant}', pretrained=True, pretrained_cfg_overlay=dict(file='model.safetensors')) "
        f'(a safetensors or PyTorch state dict; add num_classes=N to the overlay if its classifier has N classes), '
        f"timm.create_model('local-dir:/path/to/folder', pretrained=True) (a folder with config.json and "
        f"model.safetensors), or timm.create_model('hf-hub:ORG/NAME', pretrained=True) (a Hub repository)",
        param='pretrained')


def _create_prelu_net(variant: str, pretrained: bool = False, **kwargs: Any) -> PReLUNet:
    if pretrained:
        _check_weights_exist(variant, kwargs)
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    return build_model_with_cfg(
        PReLUNet,
        variant,
        pretrained,
        **cfgs[variant],
        pretrained_filter_fn=partial(checkpoint_filter_fn, features_only=kwargs.get('features_only', False)),
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (14, 14),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv', 'classifier': 'head',
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:1502.01852',
        'paper_name': 'Delving Deep into Rectifiers: Surpassing Human-Level Performance on ImageNet Classification',
        **kwargs,
    }


def _tag_cfg(name: str) -> Dict[str, Any]:
    """The config of one tag; the Hub id only once its weights are published."""
    return _cfg(hf_hub_id=f'{HUB_ORG}/{name}' if name in PUBLISHED_TAGS else None)


default_cfgs = generate_default_cfgs({
    name: _tag_cfg(name) for name in ('prelu_model_a.in1k', 'prelu_model_b.in1k', 'prelu_model_c.in1k')})


@register_model
def prelu_model_a(pretrained: bool = False, **kwargs: Any) -> PReLUNet:
    """PReLU-net model A: 19 layers, 5 convs per stage, widths 256/512/512 (1.90 x10^10 mult-adds at 224)."""
    return _create_prelu_net('prelu_model_a', pretrained=pretrained, **kwargs)


@register_model
def prelu_model_b(pretrained: bool = False, **kwargs: Any) -> PReLUNet:
    """PReLU-net model B: 22 layers, 6 convs per stage, widths 256/512/512 (2.32 x10^10 mult-adds at 224)."""
    return _create_prelu_net('prelu_model_b', pretrained=pretrained, **kwargs)


@register_model
def prelu_model_c(pretrained: bool = False, **kwargs: Any) -> PReLUNet:
    """PReLU-net model C: 22 layers, 6 convs per stage, widths 384/768/896 (5.30 x10^10 mult-adds at 224)."""
    return _create_prelu_net('prelu_model_c', pretrained=pretrained, **kwargs)
