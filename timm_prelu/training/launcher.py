"""Training with timm's own ``train.py``: find the script, the paper's recipes, and the torchrun command.

Nothing here forks timm: the command runs the user's unmodified ``train.py`` with
``--device-modules timm_prelu`` (which registers the PReLU-nets before the model is built) and, optionally,
one of the paper's recipes as its ``--config``. Every other ``train.py`` flag passes through unchanged.
"""
import argparse
import importlib.util
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import yaml

from ..errors import UserError
from .train_script import TRAIN_SCRIPT_ENV, find_train_script  # re-exported: its home is train_script.py

__all__ = [
    'TRAIN_SCRIPT_ENV', 'RECIPES_DIR', 'find_train_script', 'list_recipes', 'find_recipe', 'load_recipe',
    'train_option_names', 'parse_train_args', 'global_batch_size', 'build_train_command', 'launch_training',
]

RECIPES_DIR = Path(__file__).resolve().parent / 'recipes'
PLUGIN_MODULE = 'timm_prelu'

PathLike = Union[str, os.PathLike]


def list_recipes() -> List[str]:
    """Names of the bundled recipes (one per paper model)."""
    return sorted(p.stem for p in RECIPES_DIR.glob('*.yaml'))


def find_recipe(name_or_path: PathLike) -> Path:
    """A recipe YAML from a bundled name (``prelu_model_c``) or a path to a YAML file."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    bundled = RECIPES_DIR / f'{path.stem if path.suffix in (".yaml", ".yml") else path.name}.yaml'
    if not path.parent.parts and bundled.is_file():
        return bundled
    raise UserError(f'recipe {str(name_or_path)!r} not found: use one of {", ".join(list_recipes())} '
                    f'or the path of a train.py YAML config')


def load_recipe(name_or_path: PathLike) -> Dict[str, Any]:
    """The recipe as ``train.py --config`` reads it: a mapping of argparse dest names to values."""
    path = find_recipe(name_or_path)
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f'recipe {path} is not valid YAML ({e}): fix the file') from e
    if not isinstance(recipe, dict):
        raise UserError(f'recipe {path} must be a YAML mapping of train.py options (e.g. `opt: momentum`)')
    return recipe


def _load_train_module(script: Path):
    spec = importlib.util.spec_from_file_location('_timm_train_script', script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the parsers; main() only runs under __main__
    return module


def train_option_names(script: Optional[PathLike] = None) -> Set[str]:
    """The option names ``train.py`` knows, spelt as its ``--config`` YAML keys (argparse dest names)."""
    return {action.dest for action in _load_train_module(find_train_script(script)).parser._actions}


def parse_train_args(argv: Sequence[str], script: Optional[PathLike] = None) -> argparse.Namespace:
    """Parse ``argv`` (``--config`` included) with ``train.py``'s own parsers, exactly as the script does.

    The script is loaded fresh on every call because its ``--config`` handling changes the parser's defaults.

    Raises:
        UserError: ``train.py`` rejects the flags (its own message is printed above).
    """
    script = find_train_script(script)
    saved_argv = sys.argv
    sys.argv = [str(script), *argv]  # the script's parsers read sys.argv (and name themselves after it)
    try:
        args, _ = _load_train_module(script)._parse_args()
    except SystemExit as e:
        if e.code:
            raise UserError("timm's train.py rejected the flags (its message is above): fix them") from None
        raise
    finally:
        sys.argv = saved_argv
    return args


def global_batch_size(args: argparse.Namespace, world_size: int) -> int:
    """Images per optimizer step over all processes, as train.py counts it for the lr."""
    return args.batch_size * world_size * max(1, args.grad_accum_steps)


def _lr_batch_ratio(args: argparse.Namespace, world_size: int) -> float:
    """train.py's factor from ``lr_base`` to the lr: global batch / ``lr_base_size``, linear or sqrt."""
    ratio = global_batch_size(args, world_size) / args.lr_base_size
    scale = args.lr_base_scale or ('sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear')
    return math.sqrt(ratio) if scale == 'sqrt' else ratio


def _passes_flag(train_args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + '=') for a in train_args)


def _with_plugin_module(train_args: Sequence[str]) -> List[str]:
    """``train_args`` with ``--device-modules`` importing timm_prelu (added to the user's own list if any)."""
    args = list(train_args)
    for i, a in enumerate(args):
        if a == '--device-modules':
            if PLUGIN_MODULE not in args[i + 1:]:
                args.insert(i + 1, PLUGIN_MODULE)
            return args
        if a.startswith('--device-modules='):
            modules = a.split('=', 1)[1]
            args[i:i + 1] = ['--device-modules', PLUGIN_MODULE, modules]
            return args
    # Last, so that this nargs='+' option cannot swallow a positional the user put first.
    return args + ['--device-modules', PLUGIN_MODULE]


def _plan(
        train_args: Sequence[str],
        recipe: Optional[PathLike],
        script: Optional[PathLike],
        nproc_per_node: int,
        nnodes: int,
        node_rank: int,
        master_addr: Optional[str],
        master_port: int,
        python: str,
) -> Tuple[List[str], str]:
    """The command and a one-line account of its global batch and learning rates."""
    if nproc_per_node < 1 or nnodes < 1:
        raise UserError(f'--nproc-per-node ({nproc_per_node}) and --nnodes ({nnodes}) must be at least 1')
    if nnodes > 1 and not master_addr:
        raise UserError(f'a run on {nnodes} nodes needs --master-addr (the host name of node 0)')
    if not 0 <= node_rank < nnodes:
        raise UserError(f'--node-rank {node_rank} must be in 0..{nnodes - 1} for {nnodes} node(s)')
    train_script = find_train_script(script)
    train_args = list(train_args)
    config: List[str] = []
    if recipe is not None:
        if _passes_flag(train_args, '--config') or _passes_flag(train_args, '-c'):
            raise UserError('give the YAML config once: --recipe (name or path) or a train.py --config, not both')
        recipe_path = find_recipe(recipe)
        recipe_options = load_recipe(recipe_path)
        unknown = sorted(set(recipe_options) - train_option_names(train_script))
        if unknown:
            raise UserError(f'recipe {recipe_path} has keys that train.py does not know and would silently '
                            f'ignore: {", ".join(unknown)}; use its argparse dest names (e.g. weight_decay)')
        config = ['--config', str(recipe_path)]
    train_args = _with_plugin_module(train_args)

    world_size = nproc_per_node * nnodes
    args = parse_train_args(config + train_args, train_script)
    ratio = _lr_batch_ratio(args, world_size)
    lr = args.lr or args.lr_base * ratio
    min_lr = args.min_lr
    if config and 'min_lr' in recipe_options and not args.lr and not _passes_flag(train_args, '--min-lr'):
        # the recipe states min_lr for its lr_base_size batch: scale it like the lr
        min_lr = args.min_lr * ratio
        train_args += ['--min-lr', f'{min_lr:.6g}']

    torchrun = [python, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc_per_node}']
    if nnodes == 1:
        torchrun.append('--standalone')  # local rendezvous on a free port
    else:
        torchrun += [f'--nnodes={nnodes}', f'--node_rank={node_rank}', f'--master_addr={master_addr}',
                     f'--master_port={master_port}']
    summary = (f'{args.model}: global batch {global_batch_size(args, world_size)} on {world_size} process(es), '
               f'lr {lr:.6g}, min lr {min_lr:.6g}')
    return [*torchrun, str(train_script), *config, *train_args], summary


def build_train_command(
        train_args: Sequence[str] = (),
        recipe: Optional[PathLike] = None,
        script: Optional[PathLike] = None,
        nproc_per_node: int = 1,
        nnodes: int = 1,
        node_rank: int = 0,
        master_addr: Optional[str] = None,
        master_port: int = 29500,
        python: str = sys.executable,
) -> List[str]:
    """``torchrun ... train.py [--config RECIPE] TRAIN_ARGS --device-modules timm_prelu`` as an argv list.

    The flags are checked with train.py's own parser first, so a typo fails here, not in every process.
    With a recipe, its ``min_lr`` (stated for the recipe's ``lr_base_size`` batch) is scaled like the lr to the
    real global batch, keeping the paper's 1e-2 -> 1e-4 span, unless ``--lr`` or ``--min-lr`` is given.

    Args:
        train_args: Any ``train.py`` flags; they override the recipe.
        recipe: Bundled recipe name (``prelu_model_c``) or a YAML path; None for train.py's own defaults.
        script: ``train.py`` or a timm checkout; see ``find_train_script``.
        nproc_per_node: Processes (GPUs) per node.
        nnodes: Number of nodes; above 1, ``master_addr`` is required and the command runs on every node.
        node_rank: This node's rank (0 .. nnodes - 1).
        master_addr: Host of node 0 (static rendezvous) for multi-node runs.
        master_port: Port on ``master_addr``.
        python: The interpreter that runs torchrun.
    """
    return _plan(train_args, recipe, script, nproc_per_node, nnodes, node_rank, master_addr, master_port,
                 python)[0]


def launch_training(
        train_args: Sequence[str] = (),
        recipe: Optional[PathLike] = None,
        script: Optional[PathLike] = None,
        nproc_per_node: int = 1,
        nnodes: int = 1,
        node_rank: int = 0,
        master_addr: Optional[str] = None,
        master_port: int = 29500,
        dry_run: bool = False,
) -> int:
    """Build the command (see ``build_train_command``), print it, and run it; returns its exit status."""
    command, summary = _plan(train_args, recipe, script, nproc_per_node, nnodes, node_rank, master_addr,
                             master_port, sys.executable)
    print(shlex.join(command), flush=True)
    print(summary, flush=True)
    if dry_run:
        return 0
    return subprocess.call(command)
