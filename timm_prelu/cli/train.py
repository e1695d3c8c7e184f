"""`timm-prelu train`: run timm's own train.py (via torchrun) with a paper recipe; other flags pass through."""
import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        'train', help="train with timm's train.py and the paper's recipe (torchrun, one or many GPUs)",
        description="Runs `torchrun --nproc_per_node=N train.py [--config RECIPE] TRAIN_FLAGS --device-modules "
                    "timm_prelu`. Put train.py's own flags after `--`; they override the recipe.",
        epilog='example: timm-prelu train --recipe prelu_model_c --nproc-per-node 8 -- '
               '--data-dir /data/imagenet -b 16')
    p.add_argument('--recipe', metavar='NAME|PATH',
                   help='bundled recipe (prelu_model_a, prelu_model_b, prelu_model_c) or a train.py YAML config')
    p.add_argument('--nproc-per-node', type=int, default=1, metavar='N',
                   help="processes per node: one per GPU, checked against the GPUs present (with train.py's "
                        "--device cpu: CPU processes, gloo backend)")
    p.add_argument('--nnodes', type=int, default=1, metavar='N', help='number of nodes (default 1)')
    p.add_argument('--node-rank', type=int, default=0, metavar='R', help="this node's rank, for --nnodes > 1")
    p.add_argument('--master-addr', metavar='HOST', help='host of node 0, for --nnodes > 1')
    p.add_argument('--master-port', type=int, default=29500, metavar='PORT', help='port on --master-addr')
    p.add_argument('--timm-script', metavar='PATH',
                   help="timm's train.py or a pytorch-image-models checkout (default: $TIMM_TRAIN_SCRIPT, "
                        "then ./pytorch-image-models/train.py, then the copy for the installed timm version in "
                        "the user cache, ~/.cache/timm-prelu/, downloaded there on first use)")
    p.add_argument('--dry-run', action='store_true', help='print the command without running it')
    p.add_argument('train_args', nargs=argparse.REMAINDER, metavar='-- TRAIN_FLAGS',
                   help="train.py's flags, e.g. -- --data-dir /data/imagenet -b 32")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from ..processes import describe_exit, signal_exit_code
    from ..training.launcher import launch_training
    train_args = args.train_args[1:] if args.train_args[:1] == ['--'] else args.train_args
    code = launch_training(
        train_args, recipe=args.recipe, script=args.timm_script, nproc_per_node=args.nproc_per_node,
        nnodes=args.nnodes, node_rank=args.node_rank, master_addr=args.master_addr,
        master_port=args.master_port, dry_run=args.dry_run)
    if code:
        print(f'timm-prelu train: training failed ({describe_exit(code)}): the first failing process and its '
              f'error are above', file=sys.stderr)
    return signal_exit_code(-code) if code < 0 else code
