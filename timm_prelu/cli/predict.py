"""`timm-prelu predict`: classify images at several scales with dense / full / centre views (ONNX or PyTorch)."""
import argparse
from pathlib import Path
from typing import List

from ..errors import UserError
from ..formatting import printable
from ._args import add_model_source_args, resolve_from_args


def add_predictor_args(p: argparse.ArgumentParser) -> None:
    """Backend and protocol flags, shared with `eval`."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--onnx', metavar='FILE.onnx',
                     help='an exported model graph (dense views also need its --split graphs beside it)')
    src.add_argument('--model', metavar='NAME|hf-hub:ID|CHECKPOINT',
                     help='a PyTorch model: timm name, hub id, hub folder or checkpoint')
    p.add_argument('--checkpoint', metavar='FILE', help='weights for --model NAME (train.py .pth.tar / .safetensors)')
    add_model_source_args(p)
    p.add_argument('--provider', default='auto', choices=('auto', 'cpu', 'cuda'),
                   help='ONNX Runtime provider (auto: CUDA with IO binding if installed, else CPU)')
    p.add_argument('--threads', type=int, default=None, metavar='N',
                   help="CPU threads per ONNX Runtime session (default: onnxruntime's choice)")
    p.add_argument('--device', default=None, help='PyTorch device for --model (default: cuda if available, else cpu)')
    p.add_argument('--precision', default='fp32', choices=('fp32', 'bf16'),
                   help='--model: bf16 runs bfloat16 weights, channels-last (fast on CPUs with AVX512-BF16 / AMX); '
                        'an --onnx file runs in the precision it was exported in (export-onnx --int8)')
    p.add_argument('--scales', type=int, nargs='+', default=[256, 384, 480], metavar='S',
                   help="shorter-side sizes (default 256 384 480: the scales of the paper's Table 4; combining "
                        "these three is this project's choice, the paper does not list its multi-scale set)")
    p.add_argument('--views', nargs='+', choices=('full', 'center', 'dense', 'ten_crop'), default=None,
                   help='view modes (default: dense when available, else full); ten_crop: the paper\'s 10-view '
                        'test, 4 corner + centre crops and their flips (use with --scales 256)')
    p.add_argument('--crop-size', type=int, default=None, metavar='PX',
                   help='side of the center and ten_crop crops (default: the input size, 224 for the paper\'s '
                        'models)')
    p.add_argument('--flip', action=argparse.BooleanOptionalAction, default=True,
                   help='also score the horizontally flipped image (default: on)')
    p.add_argument('--window', type=int, default=None, metavar='CELLS',
                   help='dense window on the feature map (default: input size / 16, i.e. 14 for 224)')
    p.add_argument('--input-size', type=int, default=None, metavar='PX',
                   help='training image size (default: the model\'s pretrained_cfg)')
    p.add_argument('--max-image-pixels', type=int, default=None, metavar='N',
                   help='skip images with more pixels than this (default: 89.5 M, as PIL)')


def build_predictor(args: argparse.Namespace):
    """The MultiScalePredictor the flags describe; prints which backend and provider it uses."""
    from ..inference.predictor import MultiScalePredictor, OnnxBackend, TorchBackend
    if args.onnx:
        if args.checkpoint or args.model_kwargs or args.num_classes or args.pretrained or args.use_ema:
            raise UserError('--checkpoint / --model-kwargs / --num-classes / --pretrained / --use-ema describe a '
                            'PyTorch model: drop them with --onnx (the ONNX file carries its own configuration)')
        device_id = getattr(args, 'cuda_device_id', 0)  # set by `eval` under torchrun: the process's GPU
        if args.precision != 'fp32':
            raise UserError('an ONNX file runs in the precision it was exported in: drop --precision, or export '
                            'an int8 graph with `timm-prelu export-onnx --int8`', param='precision')
        resolved = resolve_from_args(args, args.onnx, allow_onnx=True,
                                     onnx_options={'providers': args.provider, 'threads': args.threads,
                                                   'device_id': device_id})
        backend = OnnxBackend(resolved.model, providers=args.provider, threads=args.threads, device_id=device_id)
    else:
        import torch
        spec, name = (args.checkpoint, args.model) if args.checkpoint else (args.model, None)
        resolved = resolve_from_args(args, spec, model_name=name)
        device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
        if args.precision == 'bf16':
            from ..inference.precision import TorchBf16Backend
            backend = TorchBf16Backend(resolved.model, device=device)
        else:
            backend = TorchBackend(resolved.model, device=device)
    views = args.views
    if views is None:
        views = ['dense'] if backend.supports_dense else ['full']
        if not backend.supports_dense:
            print('note: no backbone/head graphs beside the ONNX file (export with --split): using full views')
    predictor = MultiScalePredictor(backend, scales=args.scales, views=views, flip=args.flip, window=args.window,
                                    input_size=args.input_size, crop_size=args.crop_size)
    print(f'predictor: {predictor.describe()}')
    scale_note = far_scale_note(predictor.scales, predictor.input_size)
    if scale_note:
        print(f'note: {scale_note}')
    for note in backend.notes:
        print(f'note: {note}')
    return predictor


FAR_SCALE_RATIO = 4  # the paper tests 224-trained nets at 256..480: up to about 2x


def far_scale_note(scales, input_size) -> str:
    """A note when test scales are over ``FAR_SCALE_RATIO`` times the training input size ('' when none are)."""
    size = max(input_size)
    far = [s for s in scales if s > FAR_SCALE_RATIO * size]
    if not far:
        return ''
    near = ' '.join(str(round(size * s / 224)) for s in (256, 384, 480))
    return (f'scales {" ".join(map(str, far))} are over {FAR_SCALE_RATIO}x the model\'s training input size '
            f'({size} px): objects will look far larger than in training, so expect a high error; the paper\'s '
            f'256 384 480 for 224 px are --scales {near} here (going on as asked)')


def _expand(paths: List[str]) -> List[Path]:
    """Files as given; folders become the files inside them (recursively, sorted)."""
    out: List[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(f for f in p.rglob('*') if f.is_file() and not f.name.startswith('.')) if p.is_dir() else [p])
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        'predict', help='classify images with multi-scale, multi-view testing (ONNX Runtime or PyTorch)',
        description='Resize each image\'s shorter side to every --scales, score the views (dense: every window of '
                    'the feature map, convolutions run once per scale), optionally the flipped image too, and '
                    'average the softmax scores over views and scales.',
        epilog='example: timm-prelu predict cat.jpg dog.png --onnx c.onnx --scales 256 384 480 --views dense')
    p.add_argument('images', nargs='+', metavar='IMAGE', help='image files or folders of images')
    add_predictor_args(p)
    p.add_argument('--topk', type=int, default=5, metavar='K', help='classes to print per image (default 5)')
    p.add_argument('--json', action='store_true',
                   help='print one JSON document on stdout: every class probability of every image, with its label '
                        '(the other messages go to stderr)')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import json
    import sys
    from ..inference.images import DEFAULT_MAX_IMAGE_PIXELS, ImageError, load_image
    stdout = sys.stdout
    # with --json, stdout carries the document alone: every other line goes to stderr
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        predictor = build_predictor(args)
        max_pixels = args.max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS
        images, skipped = [], []
        for path in _expand(args.images):
            try:
                loaded = load_image(path, max_pixels=max_pixels)
                probs = predictor.predict(loaded.image)
            except ImageError as e:
                print(f'skipped: {printable(str(e))}')
                skipped.append({'path': str(path), 'error': str(e)})
                continue
            ranked = predictor.topk(probs, len(probs))
            images.append({'path': str(path), 'notes': list(loaded.notes),
                           'classes': [{'index': i, 'label': label, 'probability': p} for i, label, p in
                                       sorted(ranked)]})
            if not args.json:
                best = '  '.join(f'{label if label is not None else i} ({p:.3f})' for i, label, p in
                                 ranked[:args.topk])
                print(printable(f'{path}: {best}'))
                for note in loaded.notes:
                    print(f'  note: {note}')
        print(f'{len(images)} image(s) predicted, {len(skipped)} skipped')
    if not images:
        raise UserError('no image could be read: check the paths (see the messages above)')
    if args.json:
        # json escapes control characters and non-ASCII, so a label cannot rewrite the terminal
        json.dump({'predictor': predictor.describe(), 'images': images, 'skipped': skipped}, stdout, indent=1)
        stdout.write('\n')
    return 0
