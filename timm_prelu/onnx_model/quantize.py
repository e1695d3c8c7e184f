"""int8 graphs for CPU serving: ONNX Runtime static quantization, calibrated on images the user names.

The exported float32 graph is quantized in QDQ format (QuantizeLinear / DequantizeLinear pairs that ONNX Runtime
fuses into integer kernels): int8 weights, one scale per output channel; int8 activations, one scale per tensor from
the min / max seen on the calibration images, preprocessed as timm evaluates (the model's pretrained_cfg: resize,
centre crop, mean / std). ONNX Runtime then runs the convolutions as QLinearConv and fc1-fc3 as QGemm (fc1, the largest
weight, reads a quarter of the bytes). On CPUs without an int8 dot product (VNNI) weights use 7 bits, ONNX Runtime's
advice against saturation there.

PReLUs: ONNX Runtime has no integer PReLU kernel and fuses no QDQ pattern around PRelu, so a channel-wise PReLU runs
in float between a DequantizeLinear and a QuantizeLinear. A PReLU whose slopes are one value (channel-shared, or all
channels equal) is rewritten as LeakyRelu with that alpha: the same function, exactly, which ONNX Runtime runs as
QLinearLeakyRelu without leaving int8. The SPP's window masks stay float (they are index arithmetic).

Example::

    export_int8('prelu_model_a', 'a.int8.onnx', calibrate='calib/', calibrate_count=64,
                model_kwargs=dict(width_mult=0.125, fc_dim=64))
"""
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from ..errors import ConfigError, DatasetError, OnnxModelError
from ..inference.folders import IMAGE_EXTENSIONS
from ..inference.precision import cpu_isa, native_int8
from .runtime import METADATA_KEY, PRETRAINED_CFG_KEY, read_metadata

__all__ = ['export_int8', 'quantize_onnx', 'quantize_graph', 'find_calibration_images', 'CalibrationImages', 'prelu_as_leaky_relu',
           'DEFAULT_CALIBRATION_COUNT', 'MAX_CALIBRATION_ENTRIES']

DEFAULT_CALIBRATION_COUNT = 64
MAX_CALIBRATION_ENTRIES = 200_000  # files and folders looked at in a calibration folder
MAX_CALIBRATION_DEPTH = 8


def find_calibration_images(folder: Union[str, os.PathLike], count: int,
                            max_entries: int = MAX_CALIBRATION_ENTRIES,
                            max_depth: int = MAX_CALIBRATION_DEPTH) -> List[Path]:
    """Up to ``count`` image files (.png / .jpg / .jpeg) in ``folder`` or its sub-folders (an ImageFolder or a
    flat folder), in sorted order, taken evenly across the sub-folders' sorted listing. Symlinked folders are not
    followed; the walk looks at no more than ``max_entries`` entries and ``max_depth`` levels.

    Raises:
        DatasetError: the folder is missing, not a folder, or holds no image file.
        ConfigError: ``count`` is not positive.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f'the calibration image count must be a positive integer, got {count!r}',
                          param='calibrate_count')
    root = Path(folder)
    if not root.is_dir():
        what = 'is a file, not a folder' if root.exists() else 'no such folder'
        raise DatasetError(f'{root}: {what}: pass a folder of calibration images (.png / .jpg, or an ImageFolder)',
                           param='calibrate')
    found: List[Path] = []
    entries = 0
    stack = [(root, 0)]
    while stack:
        path, depth = stack.pop()
        try:
            with os.scandir(path) as it:
                listing = sorted((e for e in it if not e.name.startswith('.')), key=lambda e: e.name)
        except OSError:
            continue  # an unreadable sub-folder: its images are not used
        entries += len(listing)
        if entries > max_entries:
            break  # enough looked at: calibrate on what was found
        subdirs = []
        for e in listing:
            if e.is_dir(follow_symlinks=False):
                if depth < max_depth:
                    subdirs.append((Path(e.path), depth + 1))
            elif e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(e.path))
        stack.extend(reversed(subdirs))
    if not found:
        raise DatasetError(f'{root}: no image files (.png, .jpg, .jpeg) found in it or its sub-folders: pass a folder '
                           f'of images like the ones the model will see', param='calibrate')
    if len(found) > count:  # spread over the classes of an ImageFolder, not the first class only
        found = [found[i] for i in np.linspace(0, len(found) - 1, count).round().astype(int)]
    return found


def _eval_transform(pretrained_cfg: Dict[str, Any]):
    """timm's evaluation transform for the model's pretrained_cfg (resize, centre crop, to tensor, normalise)."""
    from timm.data import create_transform, resolve_data_config
    return create_transform(**resolve_data_config(pretrained_cfg=dict(pretrained_cfg)), is_training=False)


class CalibrationImages:
    """ONNX Runtime ``CalibrationDataReader`` over image files, one image per batch, preprocessed by timm's
    evaluation transform for the model; ``features`` (an ``OnnxModel`` backbone) turns each into its feature map,
    for calibrating a head graph. Files that cannot be read are skipped and listed in ``skipped``."""

    def __init__(self, paths: Sequence[Path], pretrained_cfg: Dict[str, Any], input_name: str,
                 features: Any = None) -> None:
        self.paths = list(paths)
        self.transform = _eval_transform(pretrained_cfg)
        self.input_name = input_name
        self.features = features
        self.used = 0
        self.skipped: List[str] = []
        self._it: Optional[Iterator[Dict[str, np.ndarray]]] = None

    def _batches(self) -> Iterator[Dict[str, np.ndarray]]:
        from ..inference.images import ImageError, load_image
        from ..progress import progress
        with progress(total=len(self.paths), desc='calibrate', unit='image') as bar:
            for path in self.paths:
                bar.update(1)
                try:
                    image = load_image(path).image
                except ImageError as e:
                    self.skipped.append(f'{path}: {e}')
                    continue
                x = self.transform(image).numpy()[None].astype(np.float32)
                if self.features is not None:
                    x = self.features.run(x)
                self.used += 1
                yield {self.input_name: x}

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self._it is None:
            self._it = self._batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def _constant(model: Any, name: str) -> Optional[np.ndarray]:
    from onnx import numpy_helper
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == 'Constant' and node.output[0] == name and node.attribute:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def prelu_as_leaky_relu(model: Any) -> int:
    """Rewrite, in place, each PRelu whose slope is a constant holding one value as LeakyRelu(alpha=that value).

    The two are the same function and the float32 alpha is the slope bit for bit; ONNX Runtime quantizes LeakyRelu
    (QLinearLeakyRelu) but not PRelu. Returns how many nodes were rewritten."""
    from onnx import helper
    rewritten = 0
    for node in model.graph.node:
        if node.op_type != 'PRelu' or node.domain not in ('', 'ai.onnx'):
            continue
        slope = _constant(model, node.input[1])
        if slope is None or slope.size == 0 or not np.all(slope == slope.flat[0]):
            continue
        alpha = np.float32(slope.flat[0])
        node.op_type = 'LeakyRelu'
        del node.input[1]
        node.attribute.append(helper.make_attribute('alpha', float(alpha)))
        rewritten += 1
    return rewritten


def _unreadable(calibrate: Any, paths: Sequence[Path], reader: CalibrationImages) -> DatasetError:
    return DatasetError(f'{calibrate}: none of the {len(paths)} calibration files could be read as an image '
                        f'({reader.skipped[0] if reader.skipped else "no image"}): pass a folder of .png / .jpg '
                        f'images', param='calibrate')


def _one_import_per_domain(model: Any) -> None:
    """Drop repeated opset imports (a composed graph lists the default domain twice; the quantizer wants one)."""
    seen = {}
    for imp in model.opset_import:
        domain = '' if imp.domain == 'ai.onnx' else imp.domain
        seen[domain] = max(seen.get(domain, 0), imp.version)
    del model.opset_import[:]
    for domain, version in seen.items():
        model.opset_import.add(domain=domain, version=version)


def _quantize(src: Path, dst: Path, reader: CalibrationImages, reduce_range: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    quant_logger = logging.getLogger()
    level = quant_logger.level
    quant_logger.setLevel(logging.ERROR)  # the quantizer's advice to pre-process: shape inference adds nothing here
    try:
        with np.errstate(divide='ignore', invalid='ignore'):  # constant-zero tensors (SPP masks) have no range
            quantize_static(
                str(src), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range,
                calibrate_method=CalibrationMethod.MinMax)  # keeps per-tensor min / max only: small memory
    finally:
        quant_logger.setLevel(level)


def quantize_graph(src: Union[str, os.PathLike], dst: Union[str, os.PathLike], calibrate: Union[str, os.PathLike],
                   calibrate_count: int = DEFAULT_CALIBRATION_COUNT, *, features_from: Optional[os.PathLike] = None,
                   images: Optional[Sequence[Path]] = None) -> Dict[str, Any]:
    """Quantize one float32 timm-prelu graph ``src`` into ``dst`` (written directly: callers write to a temp path).

    Args:
        src: A float32 graph from ``export_onnx``.
        dst: Where to write the int8 graph.
        calibrate: Folder of calibration images.
        calibrate_count: Most calibration images used.
        features_from: For a head graph: the float32 backbone graph whose feature maps calibrate it.
        images: The calibration files, if already listed.

    Returns:
        The quantization facts written into the metadata.
    """
    import onnx
    import onnxruntime
    from .runtime import OnnxModel
    info = read_metadata(src)
    if info.get('dtype') != 'float32':
        raise OnnxModelError(f'{src} holds {info.get("dtype")} weights: quantize a float32 export', param='path')
    if info.get('graph_forms', 'plain') != 'plain':
        # PReLUs as Mul / Relu / Add and fc layers as 1x1 convs: the quantizer leaves most convs in float there
        raise OnnxModelError(f'{src} was exported in ONNX Runtime\'s float32 graph forms, which do not quantize: '
                             f'export it with ort_forms=False first, or quantize with export_int8', param='path')
    paths = list(images) if images is not None else find_calibration_images(calibrate, calibrate_count)
    proto = onnx.load(str(src))
    _one_import_per_domain(proto)
    leaky = prelu_as_leaky_relu(proto)
    isa = cpu_isa()
    reduce_range = not native_int8(isa)
    features = OnnxModel(features_from, providers='cpu') if features_from is not None else None
    reader = CalibrationImages(paths, info['pretrained_cfg'], proto.graph.input[0].name, features=features)
    with tempfile.TemporaryDirectory(prefix='timm-prelu-int8-') as tmp:
        rewritten = Path(tmp) / 'float.onnx'
        onnx.save(proto, str(rewritten))
        del proto
        try:
            _quantize(rewritten, Path(dst), reader, reduce_range)
        except Exception as e:  # the quantizer raises plain exceptions for graphs it cannot handle
            if reader.used == 0:
                raise _unreadable(calibrate, paths, reader) from e
            raise OnnxModelError(f'ONNX Runtime could not quantize {src} ({type(e).__name__}: '
                                 f'{str(e).splitlines()[0][:300] if str(e) else ""}): re-export it with this version '
                                 f'of timm-prelu, or report the error', param='path') from e
    if reader.used == 0:
        raise _unreadable(calibrate, paths, reader)
    facts = {
        'precision': 'int8', 'calibration_count': reader.used, 'calibration_skipped': len(reader.skipped),
        'quantization': {
            'format': 'QDQ', 'weights': 'int8, per output channel' + (', 7-bit range' if reduce_range else ''),
            'activations': 'int8, per tensor, min/max calibration',
            'calibration_preprocess': 'timm eval transform of the pretrained_cfg',
            'prelu_as_leaky_relu': leaky, 'cpu_int8_dot_product': native_int8(isa),
            'onnxruntime': onnxruntime.__version__},
    }
    quantized = onnx.load(str(dst))
    meta = {p.key: p.value for p in quantized.metadata_props}
    info = json.loads(meta[METADATA_KEY])
    info.update(facts)
    info['dtype'] = 'int8'
    onnx.helper.set_model_props(quantized, {METADATA_KEY: json.dumps(info), PRETRAINED_CFG_KEY: meta[PRETRAINED_CFG_KEY]})
    quantized.doc_string = (quantized.doc_string or '') + ' int8 (QDQ, ONNX Runtime static quantization)'
    onnx.save(quantized, str(dst))
    del quantized
    onnx.checker.check_model(str(dst))
    return facts


def _check_one_readable(calibrate: Any, paths: Sequence[Path]) -> None:
    from ..inference.images import ImageError, load_image
    problems = []
    for path in paths:
        try:
            load_image(path)
            return
        except ImageError as e:
            problems.append(str(e))
    raise DatasetError(f'{calibrate}: none of the {len(paths)} calibration files could be read as an image '
                       f'({problems[0]}): pass a folder of .png / .jpg images', param='calibrate')


def _check_runs(path: Path) -> None:
    """The int8 graph loads in ONNX Runtime and gives finite scores of the right shape."""
    from .runtime import OnnxModel
    model = OnnxModel(path, providers='cpu')
    if model.graph == 'head':
        x = np.zeros((1, model.info['num_features'], 2, 2), np.float32)
    else:
        side = max(model.info['min_input_size'], 2 * model.info['feature_stride'])
        x = np.zeros((1, model.info['in_chans'], side, side), np.float32)
    if not np.isfinite(model.run(x)).all():
        raise OnnxModelError(f'the int8 graph {path.name} gives non-finite outputs: report this with your '
                             f'onnxruntime version')


def quantize_onnx(src: Union[str, os.PathLike], path: Union[str, os.PathLike], calibrate: Union[str, os.PathLike],
                  calibrate_count: int = DEFAULT_CALIBRATION_COUNT, overwrite: bool = False) -> Path:
    """Quantize an existing float32 model graph from ``export_onnx`` into ``path``, atomically (one graph; for the
    split graphs use :func:`export_int8` with ``split=True``). Returns ``path``."""
    from ..outputs import finished_output_file
    from .export import check_export_destination
    check_export_destination(path, overwrite=overwrite, inputs=[src, calibrate])
    images = find_calibration_images(calibrate, calibrate_count)
    _check_one_readable(calibrate, images)
    with finished_output_file(path, overwrite, inputs=[src, calibrate], param='path') as tmp:
        quantize_graph(src, tmp, calibrate, calibrate_count, images=images)
        _check_runs(tmp)
    return Path(path)


def export_int8(model_or_name: Any, path: Union[str, os.PathLike], calibrate: Union[str, os.PathLike],
                calibrate_count: int = DEFAULT_CALIBRATION_COUNT, split: bool = False, overwrite: bool = False,
                **export_kwargs: Any):
    """Export a PReLU-net and quantize it to int8, atomically: the int8 graph (and with ``split`` its int8 backbone
    and head, the head calibrated on the float backbone's feature maps), or nothing.

    Args:
        model_or_name: What :func:`timm_prelu.onnx_model.export.export_onnx` takes.
        path: The int8 model graph's file.
        calibrate: Folder of calibration images (an ImageFolder or a flat folder; walked with bounds).
        calibrate_count: Most calibration images used (taken evenly through the sorted listing).
        split: Also write int8 backbone and head graphs for dense views.
        overwrite: Replace files timm-prelu wrote earlier (never others).
        **export_kwargs: Further ``export_onnx`` arguments (``model_kwargs``, ``label_names``, ``opset``, ...).

    Returns:
        ``OnnxExport`` with the paths written.
    """
    from ..outputs import finished_output_files
    from .export import OnnxExport, check_export_destination, export_onnx, split_paths
    if export_kwargs.get('fp16'):
        raise ConfigError('int8 quantization starts from the float32 graph: drop fp16', param='fp16')
    source = model_or_name if isinstance(model_or_name, (str, os.PathLike)) and os.path.exists(model_or_name) \
        else None
    targets = check_export_destination(path, split=split, overwrite=overwrite, inputs=[source, calibrate])
    images = find_calibration_images(calibrate, calibrate_count)  # before the export: a bad folder fails fast
    _check_one_readable(calibrate, images)
    with tempfile.TemporaryDirectory(prefix='timm-prelu-export-') as tmp:
        float_path = Path(tmp) / Path(path).name  # same file names: the split graphs' names in the metadata hold
        export_kwargs['ort_forms'] = False  # the plain PRelu / Gemm graph is the one that quantizes (see above)
        exported = export_onnx(model_or_name, float_path, split=split, **export_kwargs)
        with finished_output_files(targets, overwrite, inputs=[source, calibrate], param='path') as temps:
            if export_kwargs.get('progress'):
                export_kwargs['progress'](f'quantizing to int8, calibrated on {len(images)} image(s)')
            quantize_graph(exported.model, temps[0], calibrate, calibrate_count, images=images)
            if split:
                backbone, head = split_paths(float_path)
                quantize_graph(backbone, temps[1], calibrate, calibrate_count, images=images)
                quantize_graph(head, temps[2], calibrate, calibrate_count, images=images, features_from=backbone)
            for tmp_path in temps:
                _check_runs(tmp_path)
    backbone_path, head_path = split_paths(path)
    # the parity measured is the float graphs' (the int8 graphs differ from PyTorch by their quantization)
    return OnnxExport(Path(path), backbone_path if split else None, head_path if split else None, exported.parity)
