"""`timm-prelu demo`: the whole lifecycle on real images, on a CPU, in minutes (see timm_prelu.demo)."""
import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        'demo', help='data -> train.py (ReLU vs PReLU) -> hub folder -> timm load -> ONNX multi-scale eval -> report')
    p.add_argument('--out', default='demo-run', help='output folder (default: ./demo-run)')
    p.add_argument('--overwrite', action='store_true',
                   help='replace an earlier demo folder at --out (never a folder timm-prelu did not write)')
    p.add_argument('--quick', action='store_true', help='16 epochs, two test scales (what CI runs)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--epochs', type=int, default=None, help='training epochs (default: 40, quick: 16)')
    p.add_argument('--timm-script', default=None,
                   help="upstream timm train.py or a pytorch-image-models checkout (default: $TIMM_TRAIN_SCRIPT)")
    p.add_argument('--repo-id', default=None, help='also upload the PReLU model to this hub repo (needs a token)')
    p.add_argument('--providers', default='auto', help="ONNX Runtime providers: auto, cpu or cuda (default: auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path
    from ..demo.pipeline import DemoConfig, run_demo
    from ._args import check_output
    check_output(args.out, '--out', overwrite=args.overwrite)
    kwargs = dict(out=Path(args.out), overwrite=args.overwrite, seed=args.seed, timm_script=args.timm_script,
                  repo_id=args.repo_id, providers=args.providers)
    if args.epochs is not None:
        kwargs['epochs'] = args.epochs
    cfg = DemoConfig.quick(**kwargs) if args.quick else DemoConfig(**kwargs)
    run_demo(cfg)
    return 0
