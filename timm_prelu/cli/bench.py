"""`timm-prelu bench`: PReLU's cost, the inference paths, efficiency, dense views and scaling -> BENCHMARKS.md."""
import argparse
import shlex
import sys

# kept equal to timm_prelu.benchmark.SECTIONS by a test
# kept equal to timm_prelu.benchmark.SECTIONS by a test
SECTIONS = ('activation', 'paths', 'dense', 'protocol', 'ort_gap', 'scaling', 'eval', 'precision', 'train')


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        'bench', help='benchmark PReLU vs ReLU, inference paths, efficiency, dense views, scaling',
        description='Runs every section in one process and writes BENCHMARKS.md, a CSV per table, PNG plots and '
                    'results.json into --out. The full run takes 9-20 minutes on 2 CPU cores.')
    p.add_argument('--device', default='cpu', choices=('cpu', 'cuda'), help='device to benchmark (default: cpu)')
    p.add_argument('--quick', action='store_true',
                   help='narrow networks, small inputs, few repeats: checks that everything runs (about a minute)')
    p.add_argument('--out', default='docs/benchmarks/results', help='output folder (default: docs/benchmarks/results)')
    p.add_argument('--sections', nargs='+', choices=SECTIONS, default=list(SECTIONS), metavar='SECTION',
                   help=f'sections to run (default: all): {", ".join(SECTIONS)}; "paths" includes the efficiency '
                        f'table; "eval": eval throughput at 1 and 2 processes; "train" (upstream train.py '
                        f'throughput) needs --device cuda')
    p.add_argument('--threads', type=int, default=None, help='PyTorch / ONNX Runtime threads (default: PyTorch\'s)')
    p.add_argument('--overwrite', action='store_true',
                   help='replace an earlier report in --out (never a folder timm-prelu did not write)')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..benchmark import run_benchmarks
    from ._args import check_output
    check_output(args.out, '--out', overwrite=args.overwrite)
    command = 'timm-prelu ' + ' '.join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ['bench'] \
        else 'timm-prelu bench'
    path = run_benchmarks(args.out, device=args.device, quick=args.quick, sections=args.sections,
                          threads=args.threads, overwrite=args.overwrite, command=command)
    print(f'wrote {path}')
    return 0
