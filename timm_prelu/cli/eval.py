"""`timm-prelu eval`: ImageFolder evaluation in the layout of the paper's Tables 4, 5 and 6 (top-1 / top-5 error)."""
import argparse

from ._args import check_output
from .predict import add_predictor_args, build_predictor


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        'eval', help="evaluate on an ImageFolder: the paper's Table 4 (error per scale), 5 (10-view), 6 (multi-scale)",
        description='Score every image of an ImageFolder at each scale and view mode; print and write the error '
                    'table (Markdown, CSV, PNG) and the per-image predictions. Unreadable files are skipped and '
                    'counted.',
        epilog='example: timm-prelu eval --data /data/imagenet/val --onnx c.onnx --scales 256 384 480 '
               '--views dense --out eval-c')
    p.add_argument('--data', required=True, metavar='FOLDER', help='ImageFolder root: <class>/<image>')
    add_predictor_args(p)
    p.add_argument('--out', default=None, metavar='DIR', help='write table.md/.csv/.png, predictions.npz/.csv here')
    p.add_argument('--overwrite', action='store_true',
                   help='replace --out if an earlier eval wrote it (never a folder timm-prelu did not write)')
    p.add_argument('--limit', type=int, default=None, metavar='N', help='evaluate only the first N images')
    p.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bar')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference.evaluation import evaluate_folder
    from ..inference.images import DEFAULT_MAX_IMAGE_PIXELS
    if args.out is not None:
        check_output(args.out, '--out', overwrite=args.overwrite,
                     inputs=[args.data, args.onnx, args.checkpoint, _existing(args.model)])
    predictor = build_predictor(args)
    result = evaluate_folder(predictor, args.data, out=args.out, limit=args.limit, progress=args.progress,
                             overwrite=args.overwrite,
                             max_image_pixels=args.max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS,
                             title=f'{args.onnx or args.model}: top-1 / top-5 error')
    print(result.markdown())
    for note in result.notes:
        print(f'note: {note}')
    for path, why in result.skipped[:10]:
        print(f'skipped {path}: {why}')
    print(result.summary())
    if args.out:
        print(f'wrote {", ".join(str(p) for p in result.files.values())}')
    return 0


def _existing(source):
    """A model source that is a path on disk, else None."""
    from pathlib import Path
    return source if source and Path(source).exists() else None
