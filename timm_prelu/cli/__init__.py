"""`timm-prelu`: one subcommand per module of this package.

Each module defines ``register(subparsers)`` that adds its parser and sets ``func`` to a function taking the
parsed args. Modules are found by name, so adding a subcommand is adding a file.
"""
import argparse
import importlib
import pkgutil
import sys
from typing import List, Optional

from ..errors import UserError
from ..formatting import printable
from ..processes import Terminated, signal_exit_code, terminate_raises

__all__ = ['main', 'build_parser']


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='timm-prelu', description='PReLU-nets (He et al., ICCV 2015) for timm: models, init, training, '
                                       'hub publishing, ONNX export and multi-scale inference.')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith('_'):
            continue
        module = importlib.import_module(f'{__name__}.{info.name}')
        module.register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with terminate_raises():  # SIGTERM unwinds like Ctrl-C: children stopped, unfinished outputs removed
            return args.func(args) or 0
    except UserError as e:
        from ._args import flag_for
        flag = flag_for(e.param)
        # messages may quote file names and fields of downloaded files: escaped, they cannot rewrite the terminal
        print(f'timm-prelu {args.command}: error: {f"{flag}: " if flag else ""}{printable(str(e))}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'timm-prelu {args.command}: interrupted', file=sys.stderr)
        return 130
    except Terminated as e:
        print(f'timm-prelu {args.command}: {e}', file=sys.stderr)
        return signal_exit_code(e.signum)


if __name__ == '__main__':
    sys.exit(main())
