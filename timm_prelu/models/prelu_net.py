"""PReLU-nets: models A, B and C of He et al. (ICCV 2015)

Paper:
* `Delving Deep into Rectifiers: Surpassing Human-Level Performance on ImageNet Classification`
  - https://arxiv.org/abs/1502.01852

Table 3 of the paper: a 7x7/2 stem, three stages of 3x3 convs each opened by a 2x2/2 max pool, spatial pyramid
max pooling {7, 3, 2, 1} and fc 4096 -> 4096 -> classes with dropout. Every conv and the first two fc layers are
followed by a PReLU (learned per channel, initialised to 0.25); weights are He-initialised for that slope.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_function
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ..layers import SpatialPyramidPool, create_rectifier, he_init_layer_, rectifier_slope

__all__ = ['PReLUNet', 'HUB_ORG', 'min_input_size']

# Pretrained tags resolve to f'{HUB_ORG}/{model}.{tag}' on the Hugging Face Hub.
HUB_ORG = 'timm-prelu'

# The paper's Table 3: convs per stage and their widths.
cfgs: Dict[str, Dict[str, Tuple[int, ...]]] = {
    'prelu_model_a': dict(depths=(5, 5, 5), widths=(256, 512, 512)),
    'prelu_model_b': dict(depths=(6, 6, 6), widths=(256, 512, 512)),
    'prelu_model_c': dict(depths=(6, 6, 6), widths=(384, 768, 896)),
}
STEM_WIDTH = 96


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


class ConvAct(nn.Module):
    """A conv followed by its rectifier."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, act: str, **dd):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, **dd)
        self.act = create_rectifier(act, out_chs)

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
            drop_rate: Dropout after fc1 and fc2.
            global_pool: Only 'spp': the paper's pooling is part of the architecture.
        """
        super().__init__()
        if global_pool != 'spp':
            raise ValueError(f"PReLU-nets pool with spatial pyramid pooling: global_pool must be 'spp', got {global_pool!r}")
        if act not in ('prelu', 'prelu_shared', 'relu'):
            raise ValueError(f"unknown act {act!r}: choose 'prelu', 'prelu_shared' or 'relu'")
        dd = {'device': device, 'dtype': dtype}
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.act = act
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
        self.head_hidden_size = fc_dim
        self.pool = SpatialPyramidPool(spp_levels)
        self.fc1 = nn.Linear(prev_chs * self.pool.num_bins, fc_dim, **dd)
        self.act1 = create_rectifier(act, fc_dim)
        self.drop1 = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(fc_dim, fc_dim, **dd)
        self.act2 = create_rectifier(act, fc_dim)
        self.drop2 = nn.Dropout(drop_rate)
        self.head = nn.Linear(fc_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """He init (forward case) of every conv / fc for the slope of the rectifier after it; zero biases."""
        for layer, rectifier in self._layers_with_rectifiers():
            he_init_layer_(layer, slope=rectifier_slope(rectifier) if rectifier is not None else 0.0)

    def _layers_with_rectifiers(self) -> List[Tuple[nn.Module, Optional[nn.Module]]]:
        """Each conv / fc layer with the rectifier that follows it (None for the classifier)."""
        pairs: List[Tuple[nn.Module, Optional[nn.Module]]] = []
        for m in self.modules():
            if isinstance(m, ConvAct):
                pairs.append((m.conv, m.act))
        for fc, act in ((self.fc1, self.act1), (self.fc2, self.act2)):
            if isinstance(fc, nn.Linear):
                pairs.append((fc, act))
        if isinstance(self.head, nn.Linear):
            pairs.append((self.head, None))
        return pairs

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
        if global_pool is not None and global_pool != 'spp':
            raise ValueError(f"PReLU-nets pool with spatial pyramid pooling: global_pool must be 'spp', got {global_pool!r}")
        self.num_classes = num_classes
        device, dtype = self.fc2.weight.device, self.fc2.weight.dtype
        self.head = nn.Linear(self.head_hidden_size, num_classes, device=device, dtype=dtype) \
            if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            he_init_layer_(self.head)

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
        """Prune the stages after the last wanted intermediate (and the head, if asked)."""
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        self.stages = self.stages[:max_index]
        if prune_head:
            self.pool = nn.Identity()
            self.fc1, self.act1, self.drop1 = nn.Identity(), nn.Identity(), nn.Identity()
            self.fc2, self.act2, self.drop2 = nn.Identity(), nn.Identity(), nn.Identity()
            self.head = nn.Identity()
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


def _create_prelu_net(variant: str, pretrained: bool = False, **kwargs: Any) -> PReLUNet:
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    return build_model_with_cfg(
        PReLUNet,
        variant,
        pretrained,
        **cfgs[variant],
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


default_cfgs = generate_default_cfgs({
    'prelu_model_a.in1k': _cfg(hf_hub_id=f'{HUB_ORG}/prelu_model_a.in1k'),
    'prelu_model_b.in1k': _cfg(hf_hub_id=f'{HUB_ORG}/prelu_model_b.in1k'),
    'prelu_model_c.in1k': _cfg(hf_hub_id=f'{HUB_ORG}/prelu_model_c.in1k'),
})


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
