"""`timm-prelu slopes SOURCE`: learned PReLU slopes per layer, by depth (the paper's Table 1)."""
import argparse

from ._args import add_model_source_args, check_output, describe_labels, resolve_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        'slopes', help='per-layer PReLU slope mean / min / max of a checkpoint or model',
        description='Print the mean, min and max PReLU slope of every layer, by depth, of a train.py checkpoint, '
                    'a .safetensors file, a hub model or a timm model; optionally plot them.')
    p.add_argument('source', metavar='SOURCE',
                   help='a train.py checkpoint (e.g. output/train/RUN/model_best.pth.tar), a .safetensors file, '
                        'hf-hub:ORG/NAME[@REV], a hub-layout folder, or a timm model name (e.g. prelu_model_a)')
    p.add_argument('--model', default=None,
                   help='architecture of the weights, when the file does not record it (e.g. a bare .safetensors)')
    add_model_source_args(p)
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
    resolved = resolve_from_args(args, args.source, model_name=args.model)
    rows = load_slopes(resolved.model)
    print(f'{resolved.model_name} from {resolved.provenance.kind}: {describe_labels(resolved.label_names)}')
    print(format_slopes(rows))
    if args.plot:
        print(f'plot: {plot_slopes(rows, args.plot, title=f"PReLU slopes: {args.source}")}')
    return 0
