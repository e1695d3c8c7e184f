"""The paper's result tables (He et al. 2015, Tables 4-6; its test protocol is in section 3, "Implementation
Details") in its layout and numbering, with its own figures where the setup matches.

* **Table 4**: one model's top-1 / top-5 error at each test scale s, one view mode per row. The paper's rows are
  model A, ReLU vs PReLU, dense multi-view with flips, at s = 256, 384, 480.
* **Table 5**: single-model 10-view testing (four corner crops, the centre crop and their flips). The paper's rows:
  A ReLU, A PReLU, B PReLU, C PReLU, 224 px crops.
* **Table 6**: single-model multi-scale combination (the paper: A ReLU, A PReLU, B PReLU, C PReLU).

The paper's figures are printed beside a row only for the same network (name, activation, full width), a
1000-class model on a 1000-class folder, and the paper's view protocol at the paper's scale: dense views with flips
and the 14 x 14 window of a 224 px input (Tables 4 and 6), or 10 views of 224 px crops at s = 256 (Table 5).
Whatever the paper does not specify is marked as this project's choice.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = [
    'MULTI_SCALE', 'PAPER_TABLE4', 'PAPER_TABLE5', 'PAPER_TABLE6', 'PAPER_SCALES', 'EvalSetup', 'paper_table',
    'table4_markdown', 'table5_markdown', 'table6_markdown', 'tables_markdown', 'twin_table4_markdown',
]

MULTI_SCALE = 'multi-scale'
PAPER_DATA = 'ImageNet 2012 val'
PAPER_SCALES = (256, 384, 480)  # the scales of the paper's Table 4
PAPER_WINDOW = (14, 14)  # a 224 px crop on the 16 px stride feature map
# Table 4: model A, dense multi-view with flips at each scale s: (top-1, top-5) error %.
PAPER_TABLE4: Dict[Tuple[str, str], Dict[int, Tuple[float, float]]] = {
    ('prelu_model_a', 'relu'): {256: (26.25, 8.25), 384: (24.77, 7.26), 480: (25.46, 7.63)},
    ('prelu_model_a', 'prelu'): {256: (25.81, 8.08), 384: (24.20, 7.03), 480: (24.83, 7.39)},
}
# Table 5: single-model 10-view testing, 224 px crops: (top-1, top-5) error %.
PAPER_TABLE5: Dict[Tuple[str, str], Tuple[float, float]] = {
    ('prelu_model_a', 'relu'): (26.48, 8.59),
    ('prelu_model_a', 'prelu'): (25.59, 8.23),
    ('prelu_model_b', 'prelu'): (25.53, 8.13),
    ('prelu_model_c', 'prelu'): (24.27, 7.38),
}
PAPER_TEN_VIEW_SCALE = 256  # the shorter side of the paper's 10-view test (given with its Table 2)
PAPER_CROP = (224, 224)
# Table 6: single-model multi-scale combination, dense views with flips (scale set not given by the paper).
PAPER_TABLE6: Dict[Tuple[str, str], Tuple[float, float]] = {
    ('prelu_model_a', 'relu'): (24.02, 6.51),
    ('prelu_model_a', 'prelu'): (22.97, 6.28),
    ('prelu_model_b', 'prelu'): (22.85, 6.27),
    ('prelu_model_c', 'prelu'): (21.59, 5.71),
}
# The paper's networks at full size: stem width, last conv width, fc width, SPP levels.
_PAPER_NETWORKS = {
    'prelu_model_a': (96, 512, 4096, (7, 3, 2, 1)),
    'prelu_model_b': (96, 512, 4096, (7, 3, 2, 1)),
    'prelu_model_c': (96, 896, 4096, (7, 3, 2, 1)),
}
_ACT_NAMES = {'relu': 'ReLU', 'prelu': 'PReLU', 'prelu_shared': 'PReLU channel-shared'}
_CHOICE = "this project's choice"


def paper_table(view: str, scale: str) -> str:
    """Which of the paper's tables a (view mode, scale) row belongs to."""
    if scale == MULTI_SCALE:
        return 'Table 6'
    return 'Table 5' if view == 'ten_crop' else 'Table 4'


@dataclass(frozen=True)
class EvalSetup:
    """What an evaluation ran: enough to say which paper figures, if any, describe the same setup."""
    architecture: Optional[str]
    act: Optional[str]
    paper_network: bool  # one of the paper's networks at full size
    num_classes: int
    data_classes: int
    scales: Tuple[int, ...]
    flip: bool
    window: Tuple[int, int]
    crop_size: Tuple[int, int]

    @classmethod
    def from_predictor(cls, predictor: Any, data_classes: int) -> 'EvalSetup':
        arch, act, paper_network = _model_identity(predictor.backend)
        return cls(arch, act, paper_network, int(predictor.backend.num_classes), int(data_classes),
                   tuple(predictor.scales), bool(predictor.flip), tuple(predictor.window), tuple(predictor.crop_size))

    @property
    def model(self) -> str:
        name = self.architecture or 'model'
        return f'{name} ({_ACT_NAMES.get(self.act, self.act)})' if self.act else name

    def paper_key(self) -> Optional[Tuple[str, str]]:
        """(architecture, act) when the paper reports this network on this kind of data, else None."""
        if self.why_no_paper_figures() is None:
            return self.architecture, self.act
        return None

    def why_no_paper_figures(self) -> Optional[str]:
        if not self.paper_network:
            return 'the model is not one of the paper\'s networks at full size (or its activation is not recorded)'
        if self.num_classes != 1000 or self.data_classes != 1000:
            return f'the paper evaluates 1000 ImageNet classes; here {self.data_classes}'
        return None

    def reference(self, view: str, scale: str) -> Optional[Tuple[float, float]]:
        """The paper's (top-1, top-5) error % for this row's setup, or None."""
        key = self.paper_key()
        if key is None:
            return None
        if view == 'ten_crop':
            if scale == MULTI_SCALE or int(scale) != PAPER_TEN_VIEW_SCALE or self.crop_size != PAPER_CROP:
                return None
            return PAPER_TABLE5.get(key)
        if view != 'dense' or not self.flip or self.window != PAPER_WINDOW:
            return None
        if scale == MULTI_SCALE:
            return PAPER_TABLE6.get(key)
        return PAPER_TABLE4.get(key, {}).get(int(scale))


def _model_identity(backend: Any) -> Tuple[Optional[str], Optional[str], bool]:
    """(architecture, act, is the paper's network at full size) of a Torch or ONNX backend."""
    from .predictor import TorchBackend
    if isinstance(backend, TorchBackend):
        model = backend.model
        arch = backend.pretrained_cfg.get('architecture')
        act = getattr(model, 'act', None)
        stem = getattr(getattr(getattr(model, 'stem', None), 'conv', None), 'out_channels', None)
        size = (stem, getattr(model, 'num_features', None), getattr(model, 'fc_dim', None),
                tuple(getattr(model, 'spp_levels', ())))
    else:
        graph = next(g for g in (backend.model, backend.backbone, backend.head) if g is not None)
        arch = graph.info.get('model_name')
        kwargs = graph.info.get('model_kwargs')
        if kwargs is None:  # exported from a model object: its kwargs were not recorded
            return arch, None, False
        act = kwargs.get('act', 'prelu')
        size = (round(96 * float(kwargs.get('width_mult', 1.0))), graph.info.get('num_features'),
                kwargs.get('fc_dim', 4096), tuple(kwargs.get('spp_levels', (7, 3, 2, 1))))
    arch = arch.split('.')[0] if arch else None
    return arch, act, act is not None and _PAPER_NETWORKS.get(arch) == size


# ---------------------------------------------------------------------------------------------------------------
# Markdown


def _views(view: str, flip: bool) -> str:
    if view == 'ten_crop':
        return '10-view'
    return f'{view} + flips' if flip else view


def _err(value: Optional[float]) -> str:
    return f'{value:.2f}' if value is not None else '-'


def _markdown_rows(header: List[str], rows: List[List[str]]) -> List[str]:
    return ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)] + ['| ' + ' | '.join(r) + ' |' for r in rows]


def _with_reference(rows: List[Dict[str, object]], setup: Optional[EvalSetup], lead) -> Tuple[List[str], List[str]]:
    """Table lines with the paper's columns when some row has a reference; and the note on paper figures."""
    refs = [setup.reference(str(r['view']), str(r['scale'])) if setup else None for r in rows]
    header = lead(None) + ['top-1', 'top-5']
    body = [lead(r) + [_err(r['top1_err']), _err(r['top5_err'])] for r in rows]
    if any(refs):
        header += ['paper top-1', 'paper top-5']
        body = [b + [_err(ref[0] if ref else None), _err(ref[1] if ref else None)] for b, ref in zip(body, refs)]
        note = f'Paper figures: its own results on {PAPER_DATA} (50,000 images), for reference.'
    elif setup is not None and setup.why_no_paper_figures():
        note = f'Paper figures: none comparable: {setup.why_no_paper_figures()}.'
    else:
        note = 'Paper figures: none for this view protocol.'
    return _markdown_rows(header, body), [note]


def _averaging_note(what: str) -> str:
    return (f'Averaging: softmax scores, equal weight per {what}: {_CHOICE} (the paper says the scores are '
            f'averaged, not how).')


def table4_markdown(rows: List[Dict[str, object]], setup: Optional[EvalSetup] = None) -> str:
    """The paper's Table 4 layout: error at each test scale, one view mode per row (single model)."""
    rows = [r for r in rows if paper_table(str(r['view']), str(r['scale'])) == 'Table 4']
    if not rows:
        return ''
    flip = setup.flip if setup else True
    lines, notes = _with_reference(
        rows, setup, lambda r: ['scale s', 'views'] if r is None else [str(r['scale']), _views(str(r['view']), flip)])
    title = '### Paper Table 4 layout: top-1 / top-5 error (%) at each test scale' + (
        f', {setup.model}' if setup else '')
    views = list(dict.fromkeys(str(r['view']) for r in rows))
    scales = list(dict.fromkeys(int(r['scale']) for r in rows))
    if 'dense' in views:
        w = setup.window if setup else PAPER_WINDOW
        notes.append(f'dense: every {w[0]}x{w[1]} window of the last feature map, convolutions once per scale '
                     f'(the paper\'s multi-view test).')
    extra = [v for v in views if v != 'dense']
    if extra:
        notes.append(f'{", ".join(extra)}: {"view modes" if len(extra) > 1 else "a view mode"} the paper\'s Table 4 '
                     f'does not use ({_CHOICE}).')
    other = [s for s in scales if s not in PAPER_SCALES]
    if other:
        notes.append(f'Scales {", ".join(map(str, other))}: {_CHOICE} (the paper\'s Table 4: 256, 384, 480).')
    if not flip:
        notes.append('Flips off: the paper also scores the horizontally flipped image.')
    notes.append(_averaging_note('view (window, flip)'))
    return '\n'.join([title, ''] + lines + [''] + notes) + '\n'


def table5_markdown(rows: List[Dict[str, object]], setup: Optional[EvalSetup] = None) -> str:
    """The paper's Table 5 layout: single-model 10-view testing."""
    rows = [r for r in rows if paper_table(str(r['view']), str(r['scale'])) == 'Table 5']
    if not rows:
        return ''
    model = setup.model if setup else 'model'
    crop = setup.crop_size if setup else PAPER_CROP
    lines, paper_note = _with_reference(
        rows, setup, lambda r: ['model', 'scale s', 'crop'] if r is None else [model, str(r['scale']),
                                                                           f'{crop[0]}x{crop[1]}'])
    notes = ['10 views: the four corner crops and the centre crop, and their horizontal flips (the paper\'s).']
    notes += paper_note
    if 'paper top-1' in lines[0]:
        notes.append(f'Paper figures beside the s = {PAPER_TEN_VIEW_SCALE} rows only: a reading, '
                     f'{PAPER_TEN_VIEW_SCALE} being the scale the paper gives for its 10-view test (with Table 2).')
    other = [str(r['scale']) for r in rows if int(r['scale']) != PAPER_TEN_VIEW_SCALE]
    if other:
        notes.append(f'Scales {", ".join(other)}: {_CHOICE} (the paper\'s 10-view test, in its Table 2, uses '
                     f's = {PAPER_TEN_VIEW_SCALE}).')
    if crop != PAPER_CROP:
        notes.append(f'Crop {crop[0]}x{crop[1]}: the paper\'s crops are 224x224 (its training size).')
    notes.append(_averaging_note('view'))
    return '\n'.join(['### Paper Table 5 layout: single-model 10-view testing, top-1 / top-5 error (%)', '']
                     + lines + [''] + notes) + '\n'


def table6_markdown(rows: List[Dict[str, object]], setup: Optional[EvalSetup] = None) -> str:
    """The paper's Table 6 layout: single-model multi-scale combination, one view mode per row."""
    rows = [r for r in rows if paper_table(str(r['view']), str(r['scale'])) == 'Table 6']
    if not rows:
        return ''
    flip = setup.flip if setup else True
    scales = ', '.join(map(str, setup.scales)) if setup else ''
    model = setup.model if setup else 'model'
    lines, notes = _with_reference(
        rows, setup, lambda r: ['model', 'views', 'scales'] if r is None else [model, _views(str(r['view']), flip),
                                                                               scales])
    notes += [f'Scales {scales or "(as evaluated)"}: {_CHOICE}; the paper combines scales "as in SPP-net" without '
              f'listing them (its Table 4 reports 256, 384, 480), so its figures are for reference, not a like-for-like '
              f'comparison.',
              f'Combination: the per-scale scores averaged with equal weight per scale: {_CHOICE}.']
    return '\n'.join(['### Paper Table 6 layout: single-model multi-scale combination, top-1 / top-5 error (%)', '']
                     + lines + [''] + notes) + '\n'


def tables_markdown(rows: List[Dict[str, object]], setup: Optional[EvalSetup] = None) -> str:
    """Every paper table an evaluation's rows fill: Table 4, Table 5, Table 6, in that order."""
    parts = [f(rows, setup) for f in (table4_markdown, table5_markdown, table6_markdown)]
    return '\n'.join(p for p in parts if p)


def twin_table4_markdown(results: Dict[str, List[Dict[str, object]]], view: str,
                         acts: Sequence[str] = ('relu', 'prelu')) -> str:
    """The paper's Table 4 exactly as it is laid out: a row per scale (and the multi-scale row), the ReLU and
    PReLU twins' top-1 / top-5 error side by side. ``results`` maps act to evaluation rows."""
    by = {a: {str(r['scale']): r for r in results[a] if r['view'] == view} for a in acts}
    header = ['scale s'] + [f'{_ACT_NAMES.get(a, a)} top-{k}' for a in acts for k in (1, 5)]
    body = [[s] + [_err(by[a][s][k]) for a in acts for k in ('top1_err', 'top5_err')] for s in by[acts[-1]]]
    return '\n'.join(_markdown_rows(header, body))
