"""`timm-prelu reproduce depth|ablation`: CPU-scale analogues of the paper's experiments.

depth: an analogue of its depth experiment (Figures 2-3): plain 22- and 30-layer ReLU nets of 3x3 convs trained
from scratch with He and with Xavier init; writes the loss curves (PNG, CSV) and a summary.
ablation: its small-model comparison (Tables 1-2) on a CPU analogue of model E of He & Sun 2014: ReLU vs
channel-shared vs channel-wise PReLU over paired seeds, on patches of real photos (or digits); writes the errors
(mean +- sd), the paired differences with their intervals and verdicts, the final training loss, the learned slopes
per layer and a plot.
"""
import argparse

# Defaults that differ by experiment; None on the command line means "the experiment's own".
OUT_DEFAULTS = {'depth': 'output/depth_experiment', 'ablation': 'output/ablation'}
DEPTH_ONLY = ('seed', 'depths', 'mode')
ABLATION_ONLY = ('seeds', 'quick', 'data')


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..init.depth import DepthConfig
    defaults = DepthConfig()
    p = subparsers.add_parser(
        'reproduce', help="CPU analogues of the paper's depth experiment (He vs Xavier init, 22 / 30 layers) and "
                          "of its small-model ablation (ReLU vs channel-shared vs channel-wise PReLU)",
        description='depth: train plain ReLU nets of 3x3 convs (no batch norm, not the paper\'s nets) of each '
                    'depth from scratch on scikit-learn digits, once with He init and once with Xavier init, with '
                    'the same data, batches and SGD; write depth_experiment.png (loss vs iteration), losses.csv '
                    'and summary.md to --out. '
                    'ablation: train a CPU analogue of the paper\'s 14-layer small model (model E of He & Sun 2014, '
                    'narrow) with ReLU, channel-shared and channel-wise PReLU on the same data, batches and step '
                    'schedule for each of --seeds (paired seeds), on --data: photos (which of the photos '
                    'scikit-image and scikit-learn ship a patch comes from; train and test patches from disjoint '
                    'parts of each photo) or digits; write ablation.png, summary.md (10-view top-1 / top-5 error and '
                    'final training loss, mean +- sd; paired differences with 95% t-intervals and verdicts; slopes '
                    'per layer) and runs.csv to --out.')
    p.add_argument('experiment', choices=['depth', 'ablation'], help='the experiment to run')
    p.add_argument('--out', default=None,
                   help='output folder (default: output/depth_experiment, output/ablation)')
    p.add_argument('--overwrite', action='store_true',
                   help='replace --out if an earlier run wrote it (never a folder timm-prelu did not write)')
    p.add_argument('--steps', type=int, default=None,
                   help=f'SGD iterations per run (default: depth {defaults.steps}, ablation {_ablation().steps} on '
                        f'photos, {_ablation(data="digits").steps} on digits)')
    p.add_argument('--seed', type=int, default=None, help='depth: seed of the weights, the data split and the batches '
                                                          '(default: 0)')
    p.add_argument('--depths', type=int, nargs='+', default=None,
                   help='depth: depths (conv + fc layers) to train (default: 22 30)')
    p.add_argument('--lr', type=float, default=None,
                   help=f'learning rate of every run (default: depth {defaults.lr}, ablation {_ablation().lr})')
    p.add_argument('--width', type=int, default=None,
                   help=f'channels of the first stage; doubled at each of the 2 pools (default: depth '
                        f'{defaults.width}, ablation {_ablation().width})')
    p.add_argument('--data', choices=('photos', 'digits'), default=None,
                   help='ablation: photos, which of the photos scikit-image and scikit-learn ship a patch comes from '
                        '(train and test patches from disjoint squares of each photo), or digits, scikit-learn\'s '
                        '8x8 digits, which every variant nearly solves (default: photos)')
    p.add_argument('--seeds', type=int, nargs='+', default=None,
                   help='ablation: paired seeds, each the data, initial weights, batches and crops shared by the '
                        f'three variants (default: {_seeds(_ablation())} on photos, '
                        f'{_seeds(_ablation(data="digits"))} on digits)')
    p.add_argument('--quick', action='store_true',
                   help=f'ablation: a short run of a narrower model ({_ablation(quick=True).steps} iterations, '
                        f'seeds {_seeds(_ablation(quick=True))} on photos), what CI runs')
    p.add_argument('--mode', choices=('fan_in', 'fan_out'), default=None,
                   help="depth: n of both init rules: k^2 c ('fan_in', He's forward case) or k^2 d ('fan_out', the "
                        f"backward case) (default: {defaults.init_mode})")
    p.add_argument('--threads', type=int, default=1,
                   help='torch threads; these convs are tiny, more threads mostly add overhead (default: 1)')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    wrong = [name for name in (ABLATION_ONLY if args.experiment == 'depth' else DEPTH_ONLY)
             if getattr(args, name) not in (None, False)]
    if wrong:
        raise UserError(f'--{wrong[0]} is not an option of the {args.experiment} experiment')
    if args.out is None:
        args.out = OUT_DEFAULTS[args.experiment]
    if args.experiment == 'ablation':
        return run_ablation(args)
    from ..init.depth import DepthConfig
    defaults = DepthConfig()
    for name, value in (('steps', defaults.steps), ('lr', defaults.lr), ('width', defaults.width), ('seed', 0),
                        ('depths', [22, 30]), ('mode', defaults.init_mode)):
        if getattr(args, name) is None:
            setattr(args, name, value)
    return run_depth(args)


def run_depth(args: argparse.Namespace) -> int:
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


def _ablation(quick: bool = False, data: str = 'photos'):
    from ..init.ablation import AblationConfig
    return AblationConfig.quick(data) if quick else AblationConfig.default(data)


def _seeds(config) -> str:
    seeds = list(config.seeds)
    return f'{seeds[0]}-{seeds[-1]}' if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)) else \
        ' '.join(map(str, seeds))


def run_ablation(args: argparse.Namespace) -> int:
    import time
    from dataclasses import replace
    from pathlib import Path

    import torch
    from ..errors import UserError
    from ..init.ablation import run_ablation as run_experiment
    from ..init.ablation_report import format_summary, machine_line, write_ablation
    from ..outputs import finished_output_dir
    from ._args import check_output
    check_output(args.out, '--out', overwrite=args.overwrite)
    if args.threads < 1:
        raise UserError(f'--threads must be at least 1, got {args.threads}')
    given = {k: v for k, v in (('steps', args.steps), ('lr', args.lr), ('width', args.width)) if v is not None}
    if args.seeds is not None:
        if len(set(args.seeds)) < 2:
            raise UserError(f'--seeds needs at least 2 different seeds for a spread, got {args.seeds}')
        given['seeds'] = tuple(dict.fromkeys(args.seeds))
    if given.get('width', 1) < 1 or given.get('lr', 1) <= 0:
        raise UserError(f'--width must be at least 1 and --lr positive, got {args.width} and {args.lr}')
    config = replace(_ablation(args.quick, args.data or 'photos'), **given)
    if config.steps < 50:
        raise UserError(f'--steps {config.steps} is too few to train: use at least 50')
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with finished_output_dir(args.out, overwrite=args.overwrite, kind='reproduce-ablation') as work:
            start = time.monotonic()
            runs = run_experiment(config)
            machine = machine_line(time.monotonic() - start, args.threads)
            written = write_ablation(runs, work, config, machine)
            names = {key: path.name for key, path in written.items()}
    finally:
        torch.set_num_threads(threads)
    print(format_summary(runs, config, machine))
    out = Path(args.out)
    print(f'\nplot: {out / names["plot"]}\nruns: {out / names["runs"]}\nsummary: {out / names["summary"]}')
    return 0
