"""`timm-prelu slopes CHECKPOINT_OR_MODEL`: learned PReLU slopes per layer, by depth (the paper's Table 1)."""
import argparse

from ._args import check_output, parse_model_kwargs


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        'slopes', help='per-layer PReLU slope mean / min / max of a checkpoint or model',
        description='Print the mean, min and max PReLU slope of every layer, by depth, of a train.py checkpoint, '
                    'a .safetensors file or a timm model; optionally plot them.')
    p.add_argument('source', metavar='CHECKPOINT_OR_MODEL',
                   help='a train.py checkpoint (e.g. output/train/RUN/model_best.pth.tar), a .safetensors file, '
                        'or a timm model name (e.g. prelu_model_a)')
    p.add_argument('--model', default=None,
                   help='architecture of the weights, when the file does not record it (e.g. a bare .safetensors)')
    p.add_argument('--model-kwargs', nargs='*', default=[], metavar='KEY=VALUE',
                   help='model arguments, e.g. width_mult=0.125 fc_dim=64 (override what the checkpoint records)')
    p.add_argument('--ema', action='store_true', help="read the checkpoint's EMA weights (train.py --model-ema)")
    p.add_argument('--pretrained', action='store_true', help='for a model name: download its pretrained weights')
    p.add_argument('--plot', metavar='PNG', default=None, help='also plot the slopes by depth to this PNG')
    p.add_argument('--overwrite', action='store_true',
                   help='replace the --plot file if timm-prelu wrote it (never a file it did not write)')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path
    from ..init.slopes import format_slopes, load_slopes, plot_slopes
    if args.plot:
        check_output(args.plot, '--plot', kind='file', overwrite=args.overwrite,
                     inputs=[args.source if Path(args.source).exists() else None])
    rows = load_slopes(args.source, model_name=args.model, model_kwargs=parse_model_kwargs(args.model_kwargs) or None,
                       use_ema=args.ema, pretrained=args.pretrained)
    print(format_slopes(rows))
    if args.plot:
        print(f'plot: {plot_slopes(rows, args.plot, title=f"PReLU slopes: {args.source}")}')
    return 0
