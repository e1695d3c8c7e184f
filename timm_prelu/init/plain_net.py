"""Plain deep rectifier nets: CPU-scale analogues of the nets of the paper's depth experiment (He et al., ICCV 2015,
Figures 2-3), not those nets. The paper's are ImageNet models: the 22-layer net of Fig. 2 is model B (Table 3), the
30-layer net of Fig. 3 is Table 1's 14-layer small model plus 16 extra 2x2 convs. These are narrow stacks of 3x3
convs for small gray images (the depth experiment trains them on 16 px digits).

Plain means no batch norm and no shortcuts, so nothing but the initialisation keeps the signal's scale: 3x3 convs
in stages separated by 2x2 max pools (the width doubling at each pool, as in VGG), then fully connected layers,
every layer but the classifier followed by a rectifier. ``depth`` counts conv + fc layers as the paper does
("30 layers: 27 conv and 3 fc").
"""
import re
from typing import Any, List

import torch
import torch.nn as nn

from ..errors import ConfigError, ModelSourceError
from ..layers import create_rectifier, he_init_layer_, rectifier_slope

__all__ = ['PlainNet', 'PLAIN_NET_NAME', 'create_plain_net', 'is_plain_net_name']

# Model names for the CLIs: 'plain30' is the 30-layer plain ReLU net.
PLAIN_NET_NAME = re.compile(r'plain(\d+)$')


class PlainNet(nn.Module):
    """A plain rectifier conv net: ``depth - num_fc`` 3x3 convs in ``num_stages`` stages, then ``num_fc`` fc layers."""

    def __init__(
            self,
            depth: int = 30,
            num_classes: int = 10,
            in_chans: int = 1,
            img_size: int = 16,
            width: int = 16,
            num_stages: int = 3,
            num_fc: int = 3,
            fc_dim: int = 64,
            act: str = 'relu',
            padding_mode: str = 'zeros',
    ) -> None:
        """
        Args:
            depth: Number of conv + fc layers.
            num_classes: Classifier outputs.
            in_chans: Input image channels.
            img_size: Input side; fixes fc1's input (the last map is flattened, keeping the net plain).
            width: Channels of the first stage; each later stage doubles them.
            num_stages: Resolution stages, a 2x2 max pool between two stages.
            num_fc: Fully connected layers including the classifier.
            fc_dim: Width of the hidden fc layers.
            act: Rectifier: 'relu', 'prelu' or 'prelu_shared'.
            padding_mode: Conv padding ('zeros' or 'circular'; circular keeps every position's fan at k^2 c).
        """
        super().__init__()
        num_convs = depth - num_fc
        if num_fc < 1 or num_convs < num_stages or num_stages < 1:
            raise ValueError(f'depth {depth} is too small for {num_stages} stages and {num_fc} fc layers: '
                             f'use depth >= {num_stages + max(num_fc, 1)}')
        last_size = img_size // 2 ** (num_stages - 1)
        if last_size < 1:
            raise ValueError(f'img_size {img_size} is too small for {num_stages} stages: use at least '
                             f'{2 ** (num_stages - 1)} px')
        self.depth = depth
        self.num_classes = num_classes
        self.pretrained_cfg = {'input_size': (in_chans, img_size, img_size)}  # timm's convention for the input

        per_stage = [num_convs // num_stages + (i < num_convs % num_stages) for i in range(num_stages)]
        blocks: List[nn.Module] = []
        chs = in_chans
        for i, n in enumerate(per_stage):
            if i > 0:
                blocks.append(nn.MaxPool2d(2, 2))
            out_chs = width * 2 ** i
            for _ in range(n):
                blocks += [nn.Conv2d(chs, out_chs, 3, padding=1, padding_mode=padding_mode),
                           create_rectifier(act, out_chs)]
                chs = out_chs
        self.features = nn.Sequential(*blocks)
        self.flatten = nn.Flatten(1)
        head: List[nn.Module] = []
        features = chs * last_size * last_size
        for _ in range(num_fc - 1):
            head += [nn.Linear(features, fc_dim), create_rectifier(act, fc_dim)]
            features = fc_dim
        head.append(nn.Linear(features, num_classes))
        self.head = nn.Sequential(*head)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """He init (forward case) for the rectifier after each layer (ReLU's for the classifier), zero biases."""
        layers = [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        rectifiers = [m for m in self.modules() if isinstance(m, (nn.ReLU, nn.PReLU))]
        for layer, rectifier in zip(layers, rectifiers + [None]):
            he_init_layer_(layer, slope=rectifier_slope(rectifier) if rectifier is not None else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flatten(self.features(x)))


def is_plain_net_name(name: str) -> bool:
    return PLAIN_NET_NAME.match(name) is not None


def create_plain_net(name: str, **kwargs: Any) -> PlainNet:
    """``PlainNet(depth=N, **kwargs)`` for a name 'plainN' (e.g. 'plain30')."""
    match = PLAIN_NET_NAME.match(name)
    if match is None:
        raise ModelSourceError(f'{name!r} is not a plain net name: use plainN, e.g. plain30', param='model')
    try:
        return PlainNet(depth=int(match.group(1)), **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f'cannot build {name}: {e}', param='model_kwargs') from e
