"""`timm-prelu eval`: ImageFolder evaluation in the layout of the paper's Tables 4, 5 and 6 (top-1 / top-5 error)."""
import argparse

from ..formatting import printable
from ._args import check_output
from .predict import add_predictor_args, build_predictor


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        'eval', help="evaluate on an ImageFolder: the paper's Table 4 (error per scale), 5 (10-view), 6 (multi-scale)",
        description='Score every image of an ImageFolder at each scale and view mode; print and write the error '
                    'table (Markdown, CSV, PNG) and the per-image predictions. Unreadable files are skipped and '
                    'counted.',
        epilog='example: timm-prelu eval --data /data/imagenet/val --onnx c.onnx --scales 256 384 480 '
               '--views dense --out eval-c. Under torchrun (e.g. torchrun --nproc-per-node 8 -m timm_prelu eval '
               '...) each process scores every Nth image (gloo on CPU, nccl on GPU, one GPU per process) and rank 0 '
               'writes the same files as one process would.')
    p.add_argument('--data', required=True, metavar='FOLDER', help='ImageFolder root: <class>/<image>')
    add_predictor_args(p)
    p.add_argument('--out', default=None, metavar='DIR', help='write table.md/.csv/.png, predictions.npz/.csv here')
    p.add_argument('--overwrite', action='store_true',
                   help='replace --out if an earlier eval wrote it (never a folder timm-prelu did not write)')
    p.add_argument('--limit', type=int, default=None, metavar='N', help='evaluate only the first N images')
    p.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bar')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference.distributed import process_group, torchrun_env
    from ..inference.evaluation import evaluate_folder
    from ..inference.images import DEFAULT_MAX_IMAGE_PIXELS
    with process_group(cuda=torchrun_env() is not None and _uses_cuda(args)) as ranks:
        if ranks.distributed:
            _place_on_rank(args, ranks)

        def prepare():
            if args.out is not None and ranks.is_main:
                check_output(args.out, '--out', overwrite=args.overwrite,
                             inputs=[args.data, args.onnx, args.checkpoint, _existing(args.model)])
            with _quiet(not ranks.is_main):  # one copy of the predictor's description, from rank 0
                return build_predictor(args)

        predictor = ranks.gather(prepare, 'checking the output folder and loading the model',
                                 share=False)[ranks.rank]
        result = evaluate_folder(predictor, args.data, out=args.out, limit=args.limit, progress=args.progress,
                                 overwrite=args.overwrite,
                                 max_image_pixels=args.max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS,
                                 title=f'{args.onnx or args.model}: top-1 / top-5 error', ranks=ranks)
        if not ranks.is_main:
            return 0
        print(result.markdown())
        for note in result.notes:
            print(f'note: {note}')
        for path, why in result.skipped[:10]:
            print(printable(f'skipped {path}: {why}'))
        if ranks.distributed:
            print(result.ranks_summary())
        print(result.summary())
        if args.out:
            print(f'wrote {", ".join(str(p) for p in result.files.values())}')
    return 0


def _uses_cuda(args: argparse.Namespace) -> bool:
    """Whether this run scores on a GPU (then the process group uses nccl, and each process its own GPU)."""
    import torch
    if not torch.cuda.is_available():
        return False  # nccl needs PyTorch's CUDA; an ONNX Runtime CUDA session alone gathers over gloo
    if args.onnx:
        if args.provider == 'cpu':
            return False
        from ..errors import OnnxModelError
        from ..onnx_model.runtime import CUDA, select_providers
        try:
            return CUDA in select_providers(args.provider)
        except OnnxModelError:
            return False  # loading the model reports it, on every rank
    return (args.device or 'cuda').startswith('cuda')


def _place_on_rank(args: argparse.Namespace, ranks) -> None:
    """Each process on its own GPU (cuda:LOCAL_RANK) or its share of the CPU cores."""
    from ..inference.distributed import cpu_threads_per_process
    if args.device in (None, 'cuda') and ranks.backend == 'nccl':
        args.device = f'cuda:{ranks.local_rank}'
    args.cuda_device_id = ranks.local_rank
    if args.threads is None:  # ONNX Runtime would start one thread per core in every process
        args.threads = cpu_threads_per_process(ranks.local_world_size)


def _quiet(quiet: bool):
    import contextlib
    import io
    return contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()


def _existing(source):
    """A model source that is a path on disk, else None."""
    from pathlib import Path
    return source if source and Path(source).exists() else None
