"""Rectifier-aware initialisation of any network (He et al., ICCV 2015, section 2.2) and the Xavier rule it replaces.

``he_init_(model)`` draws every conv and linear weight from N(0, 2 / ((1 + a^2) n)) and zeroes the biases, where
``a`` is the negative slope of the rectifier in that layer's variance equation; ``xavier_init_(model)`` draws
Var[w] = 2 / (n_in + n_out) (Glorot & Bengio), the rule the paper shows stalling deep rectifier nets. Both return an
:class:`InitReport`: per layer the fan, the rectifier and slope used, the std drawn, and the layers that could not
be matched to a rectifier, with the reason.

Which rectifier. The forward case (``mode='fan_in'``, n = k^2 c) rests on E[x_l^2] = 1/2 (1 + a^2) Var[y_{l-1}]:
``a`` belongs to the rectifier that produced the layer's *input*. The backward case (``mode='fan_out'``,
n = k^2 d) rests on f'(y_l): the rectifier *after* the layer. In a net with one kind of rectifier both give the same
slope except at the ends: the first layer (fed by the image) and the classifier (followed by nothing). There the
paper keeps the 1/2 factor "for simplicity"; we then take ``a`` from the rectifier on the layer's other side.
``strict_first_layer=True`` applies the exact rule instead, n Var[w] = 1, to the layers where the pass starts
(the ones fed by the input for 'fan_in', the ones producing the output for 'fan_out').

Channel-wise PReLU: averaged over channels the factor is 1/2 (1 + mean(a_i^2)), so ``a`` is the root mean square
of the slopes (equal to the mean at the usual init, all 0.25).

How rectifiers are found. One forward pass of a sample batch (eval mode, no grad) is recorded as a torch.fx graph:
torch function calls and tensor methods through a ``TorchFunctionMode``, leaf module calls through hooks, linked by
the tensors they read. Unlike symbolic tracing this follows shape-dependent code (timm's ConvMlp, input checks),
functional rectifiers (F.relu) and in-place ones. From each layer the graph is walked through operations that do not
change which rectifier acts on the signal: dropout, pooling, normalisation, reshapes, padding and concatenation.
A walk ending anywhere else (a residual add, GELU, another layer) leaves the layer unmatched; ``unmatched`` says
what those layers get, and the report lists them with the reason.
"""
import math
import operator
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..errors import ConfigError, InputSizeError, ModelSourceError
from ..layers.he_init import fan, he_std
from ..layers.spp import SpatialPyramidPool

__all__ = [
    'RectifierLink', 'LayerRectifiers', 'LayerInit', 'InitReport', 'INIT_RULES',
    'find_rectifiers', 'default_input', 'he_init_', 'xavier_init_', 'init_weights_', 'xavier_std', 'layer_fans',
]

INIT_RULES = ('he', 'xavier')
UNMATCHED_POLICIES = ('relu', 'linear', 'skip', 'error')
# Transposed convs are not included: the derivation's n = k^2 c does not describe them.
LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
RECTIFIER_TYPES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU)

_TRANSPARENT_MODULES = (
    nn.modules.dropout._DropoutNd, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
    nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd,
    SpatialPyramidPool,
)
_TRANSPARENT_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute, torch.transpose, torch.mean,
    torch.cat, torch.concat, torch.stack, operator.getitem,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.pad, F.batch_norm, F.group_norm, F.layer_norm,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
}
_TRANSPARENT_METHODS = {
    'view', 'reshape', 'flatten', 'permute', 'transpose', 'contiguous', 'squeeze', 'unsqueeze', 'mean',
    'float', 'half', 'to', 'type_as', 'clone', 'detach', 'narrow', 'chunk', 'split',
}
_MULTI_INPUT_FUNCTIONS = {torch.cat, torch.concat, torch.stack}
# Uses of a tensor that read only its shape, dtype or device, not its values: not on the signal path.
_SHAPE_ONLY_FUNCTIONS = {torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.rand_like,
                         torch.randn_like}
_SHAPE_ONLY_METHODS = {'new_zeros', 'new_ones', 'new_empty', 'new_full'}


@dataclass(frozen=True)
class RectifierLink:
    """What sits on one side of a layer: a rectifier (``kind='rectifier'``), the model 'input' or 'output', or
    'unknown' (``reason`` says what the walk ran into)."""
    kind: str
    name: str = ''
    slope: Optional[float] = None
    reason: str = ''


@dataclass(frozen=True)
class LayerRectifiers:
    """The rectifier feeding a layer's input (``before``) and the one acting on its output (``after``)."""
    before: RectifierLink
    after: RectifierLink


@dataclass
class LayerInit:
    """How one layer was initialised. ``matched`` is False when the rule needed a rectifier it could not find."""
    name: str
    kind: str
    fan: int
    std: Optional[float]  # None: left as it was ('skip')
    slope: Optional[float] = None
    rectifier: str = ''
    matched: bool = True
    note: str = ''


@dataclass
class InitReport:
    """Per layer (in execution order): fan, rectifier and slope used, std drawn; ``unmatched`` lists the guesses."""
    rule: str
    variant: str  # 'fan_in' / 'fan_out' for He, 'normal' / 'uniform' for Xavier
    layers: List[LayerInit] = field(default_factory=list)

    @property
    def unmatched(self) -> List[LayerInit]:
        return [layer for layer in self.layers if not layer.matched]

    def format_table(self) -> str:
        """A Markdown table of the layers."""
        lines = [f'{self.rule} init ({self.variant}): {len(self.layers)} layers, {len(self.unmatched)} unmatched', '',
                 '| layer | type | n | rectifier | a | std | note |', '|---|---|---|---|---|---|---|']
        for layer in self.layers:
            slope = '' if layer.slope is None else f'{layer.slope:.3g}'
            std = 'unchanged' if layer.std is None else f'{layer.std:.4g}'
            flag = '' if layer.matched else 'UNMATCHED: '
            lines.append(f'| {layer.name} | {layer.kind} | {layer.fan} | {layer.rectifier} | {slope} | {std} | '
                         f'{flag}{layer.note} |')
        return '\n'.join(lines)

    def __str__(self) -> str:
        return self.format_table()


def layer_fans(layer: nn.Module) -> Tuple[int, int]:
    """(fan_in, fan_out) = (k^2 c, k^2 d) of a conv or linear layer; a grouped conv counts its own group only."""
    groups = getattr(layer, 'groups', 1)
    return fan(layer.weight, 'fan_in'), fan(layer.weight, 'fan_out') // groups


def xavier_std(fan_in: int, fan_out: int) -> float:
    """Glorot & Bengio's std: Var[w] = 2 / (n_in + n_out), derived for linear (symmetric) activations."""
    return math.sqrt(2.0 / (fan_in + fan_out))


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().float().pow(2).mean().sqrt())


def _module_slope(module: nn.Module) -> Optional[float]:
    """Negative slope ``a`` of a rectifier module, None if it is not one."""
    if isinstance(module, nn.PReLU):
        return _rms(module.weight)
    if isinstance(module, nn.LeakyReLU):
        return float(module.negative_slope)
    if isinstance(module, nn.RReLU):
        return (module.lower + module.upper) / 2  # its slope at eval time
    if isinstance(module, (nn.ReLU, nn.ReLU6)):
        return 0.0
    return None


def _function_slope(node: torch.fx.Node, root: nn.Module) -> Optional[float]:
    """Negative slope of a functional rectifier call (F.relu, x.relu_(), F.leaky_relu, F.prelu), else None."""
    if node.op == 'call_method':
        return 0.0 if node.target in ('relu', 'relu_') else None
    if node.op != 'call_function':
        return None
    target = node.target
    if target in (F.relu, F.relu_, torch.relu, torch.relu_, F.relu6):
        return 0.0
    if target in (F.leaky_relu, F.leaky_relu_):
        slope = node.args[1] if len(node.args) > 1 else node.kwargs.get('negative_slope', 0.01)
        return float(slope) if isinstance(slope, (int, float)) else None
    if target is F.prelu:
        weight = node.args[1] if len(node.args) > 1 else node.kwargs.get('weight')
        if isinstance(weight, torch.fx.Node) and weight.op == 'get_attr':
            return _rms(_get_attr(root, weight.target))
    return None


def _get_attr(root: nn.Module, target: str) -> torch.Tensor:
    obj = root
    for part in target.split('.'):
        obj = getattr(obj, part)
    return obj


class _ExecutionTracer(TorchFunctionMode):
    """Records one forward pass as a torch.fx graph: every torch function and tensor method called outside the
    leaf modules, and every outermost leaf module call (layers, rectifiers, modules without children), linked by
    which tensor each call read. In-place ops (ReLU(inplace=True)) make the caller the tensor's new producer."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.graph = torch.fx.Graph()
        self.producer: Dict[int, torch.fx.Node] = {}
        self.alive: List[torch.Tensor] = []  # keeps every mapped tensor alive, so no id is reused
        self.params = {id(p): name for name, p in model.named_parameters()}
        self.leaf_depth = 0

    def _arg(self, a):
        if not isinstance(a, torch.Tensor):
            return a if isinstance(a, (int, float, bool, str, type(None), slice, torch.dtype, torch.device)) else None
        if id(a) in self.producer:
            return self.producer[id(a)]
        if id(a) in self.params:
            node = self.graph.get_attr(self.params[id(a)])
            self._produce(a, node)
            return node
        return None  # a constant made inside forward

    def _produce(self, out, node: torch.fx.Node) -> None:
        for t in _tensors(out):
            self.producer[id(t)] = node
            self.alive.append(t)

    def _record(self, op: str, target, args, kwargs, out) -> None:
        if not _tensors(out):
            return  # shape / size queries carry no signal
        args = torch.fx.node.map_aggregate(args, self._arg)
        kwargs = torch.fx.node.map_aggregate(kwargs, self._arg)
        self._produce(out, self.graph.create_node(op, target, tuple(args), dict(kwargs)))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.leaf_depth == 0:
            if getattr(func, '__objclass__', None) in (torch._C.TensorBase, torch.Tensor):
                self._record('call_method', func.__name__, args, kwargs, out)
            else:
                self._record('call_function', func, args, kwargs, out)
        return out

    def _pre_hook(self, module, args, kwargs):
        self.leaf_depth += 1

    def _make_post_hook(self, name: str):
        def hook(module, args, kwargs, out):
            self.leaf_depth -= 1
            if self.leaf_depth == 0:
                self._record('call_module', name, args, kwargs, out)
        return hook

    def run(self, example_input: torch.Tensor) -> torch.fx.Graph:
        handles = []
        for name, m in self.model.named_modules():
            if name and (isinstance(m, LAYER_TYPES + RECTIFIER_TYPES) or not any(True for _ in m.children())):
                handles.append(m.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
                handles.append(m.register_forward_hook(self._make_post_hook(name), with_kwargs=True))
        self._produce(example_input, self.graph.placeholder('x'))
        was_training = self.model.training
        try:
            self.model.eval()
            with torch.no_grad(), self:
                out = self.model(example_input)
            self.graph.output(torch.fx.node.map_aggregate(out, self._arg))
        finally:
            self.model.train(was_training)
            for h in handles:
                h.remove()
        return self.graph


def _tensors(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def default_input(model: nn.Module) -> torch.Tensor:
    """A batch of one random image of the model's configured input size (timm's ``pretrained_cfg``), else sized
    from the first layer: (1, in_features) for a Linear, 32 px per spatial dimension for a conv."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else None
    cfg = getattr(model, 'pretrained_cfg', None) or getattr(model, 'default_cfg', None) or {}
    if cfg.get('input_size'):
        return torch.randn(1, *cfg['input_size'], device=device)
    first = next((m for m in model.modules() if isinstance(m, LAYER_TYPES)), None)
    if isinstance(first, nn.Linear):
        return torch.randn(1, first.in_features, device=device)
    if isinstance(first, nn.modules.conv._ConvNd):
        spatial = len(first.kernel_size)
        return torch.randn(1, first.in_channels, *([32] * spatial), device=device)
    raise ModelSourceError(f'{type(model).__name__} has no conv or linear layer to initialise', param='model')


class _Walker:
    """Walks the recorded graph from a layer to the rectifiers on either side of it."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.modules = dict(model.named_modules())

    def describe(self, node: torch.fx.Node) -> str:
        if node.op == 'call_module':
            return f'{node.target} ({type(self.modules[node.target]).__name__})'
        if node.op == 'call_function':
            return getattr(node.target, '__name__', str(node.target))
        if node.op == 'call_method':
            return f'.{node.target}()'
        return node.op

    def rectifier(self, node: torch.fx.Node) -> Optional[RectifierLink]:
        if node.op == 'call_module':
            slope = _module_slope(self.modules[node.target])
            return None if slope is None else RectifierLink('rectifier', str(node.target), slope)
        slope = _function_slope(node, self.model)
        return None if slope is None else RectifierLink('rectifier', self.describe(node), slope)

    def is_transparent(self, node: torch.fx.Node) -> bool:
        if node.op == 'call_module':
            return isinstance(self.modules[node.target], _TRANSPARENT_MODULES)
        if node.op == 'call_function':
            return node.target in _TRANSPARENT_FUNCTIONS
        if node.op == 'call_method':
            return node.target in _TRANSPARENT_METHODS
        return False

    @staticmethod
    def is_shape_only_use(node: torch.fx.Node) -> bool:
        return ((node.op == 'call_method' and node.target in _SHAPE_ONLY_METHODS)
                or (node.op == 'call_function' and node.target in _SHAPE_ONLY_FUNCTIONS))

    @staticmethod
    def signal_inputs(node: torch.fx.Node) -> List[torch.fx.Node]:
        """The inputs whose values flow through ``node`` (not shapes or parameters)."""
        if not node.args:
            first = next(iter(node.kwargs.values()), None)
            return [first] if isinstance(first, torch.fx.Node) else []
        first = node.args[0]
        if node.op == 'call_function' and node.target in _MULTI_INPUT_FUNCTIONS and isinstance(first, (list, tuple)):
            return [a for a in first if isinstance(a, torch.fx.Node)]
        return [first] if isinstance(first, torch.fx.Node) else []

    def after(self, node: torch.fx.Node) -> RectifierLink:
        ends = []
        stack, seen = [node], set()
        while stack:
            current = stack.pop()
            for user in current.users:
                if user in seen or self.is_shape_only_use(user):
                    continue
                seen.add(user)
                link = self.rectifier(user)
                if link is not None:
                    ends.append(link)
                elif user.op == 'output':
                    ends.append(RectifierLink('output', reason='model output'))
                elif self.is_transparent(user):
                    if current in self.signal_inputs(user):
                        stack.append(user)
                else:
                    ends.append(RectifierLink('unknown', reason=f'output reaches {self.describe(user)}'))
        return _merge(ends, 'output is never used')

    def before(self, node: torch.fx.Node) -> RectifierLink:
        ends = []
        stack, seen = list(self.signal_inputs(node)), set()
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            link = self.rectifier(current)
            if link is not None:
                ends.append(link)
            elif current.op == 'placeholder':
                ends.append(RectifierLink('input', reason='model input'))
            elif self.is_transparent(current):
                stack.extend(self.signal_inputs(current))
            else:
                ends.append(RectifierLink('unknown', reason=f'input comes from {self.describe(current)}'))
        return _merge(ends, 'no input found')


def _merge(ends: List[RectifierLink], nothing: str) -> RectifierLink:
    """One link for all paths: they must agree (same kind, same slope)."""
    if not ends:
        return RectifierLink('unknown', reason=nothing)
    unknown = [e for e in ends if e.kind == 'unknown']
    if unknown:
        return RectifierLink('unknown', reason='; '.join(sorted({e.reason for e in unknown})))
    kinds = {e.kind for e in ends}
    if len(kinds) > 1:
        return RectifierLink('unknown', reason='some paths reach a rectifier, others ' + ' / '.join(
            sorted({e.reason for e in ends if e.kind != 'rectifier'})))
    if kinds == {'rectifier'}:
        slopes = [e.slope for e in ends]
        names = ', '.join(sorted({e.name for e in ends}))
        if max(slopes) - min(slopes) > 1e-6:
            return RectifierLink('unknown', reason=f'branches reach rectifiers of different slopes ({names})')
        return RectifierLink('rectifier', names, slopes[0])
    return ends[0]


def find_rectifiers(model: nn.Module, example_input: Optional[torch.Tensor] = None) -> Dict[str, LayerRectifiers]:
    """Each conv / linear layer (by module name, in execution order) with the rectifiers on both sides of it.

    One forward pass of ``example_input`` (default: :func:`default_input`) in eval mode is recorded; layers it
    does not call link to 'unknown'.
    """
    layers = [name for name, m in model.named_modules() if isinstance(m, LAYER_TYPES)]
    if example_input is None:
        example_input = default_input(model)
    try:
        graph = _ExecutionTracer(model).run(example_input)
    except Exception as e:  # any model error: the input does not fit
        raise InputSizeError(f'{type(model).__name__} failed on an input of shape {tuple(example_input.shape)} '
                        f'({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ""}): pass '
                        f'example_input, a batch the model accepts', param='example_input') from e
    walker = _Walker(model)
    found: Dict[str, List[LayerRectifiers]] = {}
    for node in graph.nodes:
        if node.op == 'call_module' and isinstance(walker.modules[node.target], LAYER_TYPES):
            found.setdefault(str(node.target), []).append(LayerRectifiers(walker.before(node), walker.after(node)))
    result: Dict[str, LayerRectifiers] = {}
    for name, calls in found.items():  # a layer called more than once (shared weights) must agree with itself
        if len(set(calls)) == 1:
            result[name] = calls[0]
        else:
            mixed = RectifierLink('unknown', reason='layer is called several times with different rectifiers')
            result[name] = LayerRectifiers(mixed, mixed)
    unused = RectifierLink('unknown', reason='layer is not called in forward')
    for name in layers:
        result.setdefault(name, LayerRectifiers(unused, unused))
    return result


def _he_slope(links: LayerRectifiers, mode: str, strict_first_layer: bool) -> Tuple[Optional[float], str, str]:
    """(a, where it came from, note) for the He rule; a is None when no rectifier could be determined."""
    own, other = (links.before, links.after) if mode == 'fan_in' else (links.after, links.before)
    end = 'input' if mode == 'fan_in' else 'output'
    if own.kind == 'rectifier':
        return own.slope, own.name, ''
    if own.kind == end:
        if strict_first_layer:
            return 1.0, own.reason, f'strict rule n Var[w] = 1 ({own.reason})'
        if other.kind == 'rectifier':
            return other.slope, other.name, f'{own.reason}: 1/2 factor kept as in the paper, a from {other.name}'
        return 0.0, own.reason, f'{own.reason}: 1/2 factor kept as in the paper (ReLU a = 0)'
    return None, '', own.reason or f'no rectifier on the {end} side'


@torch.no_grad()
def _fill_(layer: nn.Module, std: float, distribution: str, generator: Optional[torch.Generator]) -> None:
    if distribution == 'normal':
        layer.weight.normal_(0.0, std, generator=generator)
    else:
        bound = math.sqrt(3.0) * std  # U(-b, b) has variance b^2 / 3
        layer.weight.uniform_(-bound, bound, generator=generator)
    if getattr(layer, 'bias', None) is not None:
        layer.bias.zero_()


def _check_materialised(model: nn.Module) -> None:
    lazy = [n for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)
            and isinstance(m.weight, nn.parameter.UninitializedParameter)]
    if lazy:
        raise ModelSourceError(f'layers {", ".join(lazy[:5])} are lazy and not built yet: run one forward pass first')


def he_init_(
        model: nn.Module,
        mode: str = 'fan_in',
        strict_first_layer: bool = False,
        unmatched: str = 'relu',
        example_input: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
) -> InitReport:
    """He-initialise every conv and linear layer of ``model`` in place: N(0, 2 / ((1 + a^2) n)), biases 0.

    Args:
        model: Any module; it is traced with torch.fx to find the rectifier of each layer.
        mode: 'fan_in' (forward case, n = k^2 c, a of the rectifier feeding the layer) or 'fan_out' (backward case,
            n = k^2 d, a of the rectifier after the layer).
        strict_first_layer: Use n Var[w] = 1 where the pass starts (the paper keeps the 1/2 factor there).
        unmatched: What layers without a determinable rectifier get: 'relu' (a = 0, the paper's default),
            'linear' (a = 1, gain 1), 'skip' (left unchanged) or 'error' (raise). A warning names them.
        example_input: A batch the model accepts, run once to see which rectifier follows which layer
            (default: one random image of the model's configured input size, see :func:`default_input`).
        generator: Random generator for reproducible weights.
    """
    if mode not in ('fan_in', 'fan_out'):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    if unmatched not in UNMATCHED_POLICIES:
        raise ValueError(f'unmatched must be one of {UNMATCHED_POLICIES}, got {unmatched!r}')
    _check_materialised(model)
    links = find_rectifiers(model, example_input)
    plan = []
    modules = dict(model.named_modules())
    for name in links:
        layer = modules[name]
        slope, source, note = _he_slope(links[name], mode, strict_first_layer)
        plan.append((name, layer, slope, source, note))
    missing = [f'{name} ({note})' for name, _, slope, _, note in plan if slope is None]
    if missing and unmatched == 'error':
        raise ConfigError(f'no rectifier found for {len(missing)} layers: {"; ".join(missing[:5])}. '
                        f"Pass unmatched='relu', 'linear' or 'skip' to initialise them anyway")
    if missing:
        warnings.warn(f'he_init_: no rectifier found for {len(missing)} layers, '
                      f'{"left unchanged" if unmatched == "skip" else f"initialised as {unmatched}"}: '
                      f'{"; ".join(missing[:3])}{" ..." if len(missing) > 3 else ""} (see the report)')
    report = InitReport('he', mode)
    for name, layer, slope, source, note in plan:
        n = layer_fans(layer)[0 if mode == 'fan_in' else 1]
        matched = slope is not None
        if not matched:
            slope = {'relu': 0.0, 'linear': 1.0}.get(unmatched)
            source = {'relu': 'assumed ReLU', 'linear': 'assumed linear'}.get(unmatched, '')
        std = None if slope is None else he_std(n, slope)
        if std is not None:
            _fill_(layer, std, 'normal', generator)
        report.layers.append(LayerInit(name, type(layer).__name__, n, std, slope, source, matched, note))
    return report


def xavier_init_(
        model: nn.Module,
        mode: str = 'avg',
        distribution: str = 'normal',
        generator: Optional[torch.Generator] = None,
) -> InitReport:
    """Xavier initialisation of every conv and linear layer (biases 0); it assumes linear activations.

    Args:
        model: Any module (layers in registration order; no forward pass needed).
        mode: 'avg': Glorot & Bengio's Var[w] = 2 / (n_in + n_out). 'fan_in': n Var[w] = 1, the form the paper
            compares against (section 2.2; Caffe's "xavier"), 1/sqrt(2) of He's std at every layer; 'fan_out' the
            same with n = k^2 d. For a conv with as many inputs as outputs all three agree.
        distribution: 'normal' or 'uniform' (Glorot's original; U(-b, b) with the same variance).
        generator: Random generator for reproducible weights.
    """
    if mode not in ('avg', 'fan_in', 'fan_out'):
        raise ValueError(f"mode must be 'avg', 'fan_in' or 'fan_out', got {mode!r}")
    if distribution not in ('normal', 'uniform'):
        raise ValueError(f"distribution must be 'normal' or 'uniform', got {distribution!r}")
    _check_materialised(model)
    report = InitReport('xavier', f'{mode}, {distribution}')
    for name, layer in model.named_modules():
        if not isinstance(layer, LAYER_TYPES):
            continue
        fan_in, fan_out = layer_fans(layer)
        n = {'avg': (fan_in + fan_out) / 2, 'fan_in': fan_in, 'fan_out': fan_out}[mode]
        std = xavier_std(fan_in, fan_out) if mode == 'avg' else math.sqrt(1.0 / n)
        _fill_(layer, std, distribution, generator)
        report.layers.append(LayerInit(name, type(layer).__name__, round(n), std, note='ignores rectifiers'))
    return report


def init_weights_(model: nn.Module, rule: str = 'he', **kwargs) -> InitReport:
    """Initialise ``model`` with ``rule`` ('he' or 'xavier'); ``kwargs`` go to :func:`he_init_` or
    :func:`xavier_init_`."""
    if rule == 'he':
        return he_init_(model, **kwargs)
    if rule == 'xavier':
        return xavier_init_(model, **kwargs)
    raise ValueError(f'unknown init rule {rule!r}: choose one of {INIT_RULES}')
