"""`timm-prelu models`: the registered PReLU-nets with their complexity beside the paper's Table 3."""
import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser('models', help='list the PReLU-nets with depth, params and GMACs vs the paper')
    p.add_argument('--img-size', type=int, default=224, help='input side for the multiply-add count (default 224)')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import timm_prelu  # noqa: F401  (registers the models)
    from ..models.complexity import complexity_table, format_markdown_table
    from ..errors import UserError
    try:
        rows = complexity_table(img_size=args.img_size)
    except ValueError as e:  # e.g. an image side below the networks' minimum
        raise UserError(str(e)) from None
    print(format_markdown_table(rows))
    return 0
