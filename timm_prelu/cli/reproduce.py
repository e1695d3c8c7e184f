"""`timm-prelu reproduce depth`: the paper's depth experiment (Figures 2-3) at CPU scale: plain 22- and 30-layer
ReLU nets trained from scratch with He and with Xavier init; writes the loss curves (PNG, CSV) and a summary."""
import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..init.depth import DepthConfig
    defaults = DepthConfig()
    p = subparsers.add_parser(
        'reproduce', help="reproduce the paper's depth experiment (He vs Xavier init, 22 / 30 layers)",
        description='Train plain ReLU nets (no batch norm) of each depth from scratch on scikit-learn digits, once '
                    'with He init and once with Xavier init, with the same data, batches and SGD; write '
                    'depth_experiment.png (loss vs iteration), losses.csv and summary.md to --out.')
    p.add_argument('experiment', choices=['depth'], help='the experiment to run')
    p.add_argument('--out', default='output/depth_experiment', help='output folder (default: %(default)s)')
    p.add_argument('--overwrite', action='store_true',
                   help='replace --out if an earlier run wrote it (never a folder timm-prelu did not write)')
    p.add_argument('--steps', type=int, default=defaults.steps, help='SGD iterations per run (default: %(default)s)')
    p.add_argument('--seed', type=int, default=0, help='seed of the weights, the data split and the batches')
    p.add_argument('--depths', type=int, nargs='+', default=[22, 30], help='depths (conv + fc layers) to train')
    p.add_argument('--lr', type=float, default=defaults.lr, help='learning rate of every run (default: %(default)s)')
    p.add_argument('--width', type=int, default=defaults.width,
                   help='channels of the first stage; doubled at each of the 2 pools (default: %(default)s)')
    p.add_argument('--mode', choices=('fan_in', 'fan_out'), default=defaults.init_mode,
                   help="n of both init rules: k^2 c ('fan_in', He's forward case) or k^2 d ('fan_out', the "
                        "backward case) (default: %(default)s)")
    p.add_argument('--threads', type=int, default=1,
                   help='torch threads; these convs are tiny, more threads mostly add overhead (default: 1)')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch
    from ..init.depth import DepthConfig, format_summary, run_depth_experiment, write_depth_experiment
    from ..errors import UserError
    from ._args import check_output
    check_output(args.out, '--out', overwrite=args.overwrite)
    if args.threads < 1:
        raise UserError(f'--threads must be at least 1, got {args.threads}')
    if any(d < 6 for d in args.depths):
        raise UserError(f'--depths must be at least 6 (3 stages of convs and 3 fc layers), got {args.depths}')
    from ..outputs import finished_output_dir
    config = DepthConfig(steps=args.steps, lr=args.lr, width=args.width, init_mode=args.mode)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with finished_output_dir(args.out, overwrite=args.overwrite, kind='reproduce-depth') as work:
            runs = run_depth_experiment(args.depths, ('he', 'xavier'), config, seed=args.seed)
            names = {key: path.name for key, path in write_depth_experiment(runs, work, config, args.seed).items()}
    finally:
        torch.set_num_threads(threads)
    print(format_summary(runs, config, args.seed))
    out = Path(args.out)
    print(f'\nplot: {out / names["plot"]}\nlosses: {out / names["losses"]}\nsummary: {out / names["summary"]}')
    return 0
