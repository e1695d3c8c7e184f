"""Training with timm's own ``train.py``: find the script, the paper's recipes, and the torchrun command.

Nothing here forks timm: the command runs the user's unmodified ``train.py`` with
``--device-modules timm_prelu`` (which registers the PReLU-nets before the model is built) and, optionally,
one of the paper's recipes as its ``--config``. Every other ``train.py`` flag passes through unchanged.
"""
import argparse
import importlib.util
import itertools
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import yaml

from ..errors import ConfigError, DatasetError
from .train_script import TRAIN_SCRIPT_ENV, find_train_script  # re-exported: its home is train_script.py

__all__ = [
    'TRAIN_SCRIPT_ENV', 'RECIPES_DIR', 'find_train_script', 'list_recipes', 'find_recipe', 'load_recipe',
    'train_option_names', 'parse_train_args', 'global_batch_size', 'build_train_command', 'check_environment',
    'launch_training',
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
    raise ConfigError(f'recipe {str(name_or_path)!r} not found: use one of {", ".join(list_recipes())} '
                      f'or the path of a train.py YAML config', param='recipe')


def load_recipe(name_or_path: PathLike) -> Dict[str, Any]:
    """The recipe as ``train.py --config`` reads it: a mapping of argparse dest names to values."""
    path = find_recipe(name_or_path)
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f'recipe {path} is not valid YAML ({e}): fix the file', param='recipe') from e
    if not isinstance(recipe, dict):
        raise ConfigError(f'recipe {path} must be a YAML mapping of train.py options (e.g. `opt: momentum`)',
                          param='recipe')
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
        ConfigError: ``train.py`` rejects the flags (its own message is printed above).
    """
    script = find_train_script(script)
    saved_argv = sys.argv
    sys.argv = [str(script), *argv]  # the script's parsers read sys.argv (and name themselves after it)
    try:
        args, _ = _load_train_module(script)._parse_args()
    except SystemExit as e:
        if e.code:
            raise ConfigError("timm's train.py rejected its flags (its message is above): fix them",
                              param='train_args') from e
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
) -> Tuple[List[str], str, argparse.Namespace]:
    """The command, a one-line account of its global batch and learning rates, and train.py's parsed args."""
    if nproc_per_node < 1:
        raise ConfigError(f'nproc_per_node must be at least 1, got {nproc_per_node}', param='nproc_per_node')
    if nnodes < 1:
        raise ConfigError(f'nnodes must be at least 1, got {nnodes}', param='nnodes')
    if nnodes > 1 and not master_addr:
        raise ConfigError(f'a run on {nnodes} nodes needs master_addr (the host name of node 0)',
                          param='master_addr')
    if not 0 <= node_rank < nnodes:
        raise ConfigError(f'node_rank {node_rank} must be in 0..{nnodes - 1} for {nnodes} node(s)',
                          param='node_rank')
    train_script = find_train_script(script)
    train_args = list(train_args)
    config: List[str] = []
    if recipe is not None:
        if _passes_flag(train_args, '--config') or _passes_flag(train_args, '-c'):
            raise ConfigError("give the YAML config once: a recipe or train.py's --config, not both", param='recipe')
        recipe_path = find_recipe(recipe)
        recipe_options = load_recipe(recipe_path)
        unknown = sorted(set(recipe_options) - train_option_names(train_script))
        if unknown:
            raise ConfigError(f'recipe {recipe_path} has keys that train.py does not know and would silently '
                              f'ignore: {", ".join(unknown)}; use its argparse dest names (e.g. weight_decay)',
                              param='recipe')
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

    # Only local rank 0's output reaches the console: the ranks run the same code, so an error would otherwise
    # print once per process; torchrun's own summary still names the first rank that failed.
    torchrun = [python, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc_per_node}',
                '--local_ranks_filter=0']
    if nnodes == 1:
        torchrun.append('--standalone')  # local rendezvous on a free port
    else:
        torchrun += [f'--nnodes={nnodes}', f'--node_rank={node_rank}', f'--master_addr={master_addr}',
                     f'--master_port={master_port}']
    summary = (f'{args.model}: global batch {global_batch_size(args, world_size)} on {world_size} process(es), '
               f'lr {lr:.6g}, min lr {min_lr:.6g}')
    return [*torchrun, str(train_script), *config, *train_args], summary, args


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


def _check_devices(args: argparse.Namespace, nproc_per_node: int) -> None:
    device = str(args.device)
    if not device.startswith('cuda'):
        return  # cpu (gloo) or another accelerator train.py handles itself
    import torch
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(
            f"train.py's --device is {device!r} (cuda is its default), but PyTorch sees no CUDA device here: run on a "
            f"machine with NVIDIA GPUs and a CUDA build of PyTorch, or pass train.py's --device cpu to train "
            f"{nproc_per_node} CPU process(es) with the gloo backend", param='train_args')
    if nproc_per_node > count:
        raise ConfigError(f'nproc_per_node={nproc_per_node} processes need one CUDA device each, but this machine '
                          f'has {count}: use nproc_per_node={count} or fewer', param='nproc_per_node')


def _has_subfolder(folder: Path, max_entries: int = 10000) -> bool:
    with os.scandir(folder) as entries:
        return any(entry.is_dir() for entry in itertools.islice(entries, max_entries))


def _check_data(args: argparse.Namespace) -> None:
    """The folder train.py's default (folder) dataset reads, and its train / val splits as timm finds them."""
    if '/' in (args.dataset or ''):
        return  # tfds/, hfds/, wds/, torch/ ...: read or downloaded by their own libraries
    from timm.data.dataset_factory import _search_split  # timm's own split lookup, so the check agrees with it
    data_dir = args.data_dir or args.data
    if not data_dir:
        raise DatasetError("train.py was given no data folder: pass its --data-dir (an ImageFolder root with "
                           "train/ and val/ class folders)", param='train_args')
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise DatasetError(f"train.py's data folder {root} does not exist (resolved from {Path.cwd()}): pass "
                           f"the ImageFolder root that holds the train/ and val/ class folders", param='train_args')
    if root.is_file():
        return  # a tar of images: timm reads it as one split
    for split in (args.train_split, args.val_split):
        if not split:
            continue
        folder = Path(_search_split(str(root), split))
        if folder == root:  # timm would read the whole folder as this split, other splits' images included
            raise DatasetError(f"train.py's data folder {root} has no folder for its {split!r} split: the layout "
                               f"is <data folder>/{split}/<class>/<image> (timm also takes its synonyms: "
                               f"training for train; val, valid or eval for validation)", param='train_args')
        if not folder.is_dir() or not _has_subfolder(folder):
            raise DatasetError(f"train.py's {split!r} split {folder} has no class folders: the layout is "
                               f"<data folder>/{split}/<class>/<image>", param='train_args')


def check_environment(args: argparse.Namespace, nproc_per_node: int) -> None:
    """Before any process starts: enough CUDA devices for ``nproc_per_node``, and the data folder is there.

    ``args`` are train.py's parsed flags (``parse_train_args``).

    Raises:
        ConfigError: too few (or no) CUDA devices for the processes asked for on a CUDA device.
        DatasetError: no data folder, a missing one, or a split with no class folders.
    """
    _check_devices(args, nproc_per_node)
    _check_data(args)


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
    """Build the command (see ``build_train_command``), check this machine can run it (see
    ``check_environment``; skipped for ``dry_run``), print it, and run it; returns its exit status.

    The run is one process group: leaving early (Ctrl-C, or SIGTERM under ``processes.terminate_raises``)
    stops torchrun and every worker.
    """
    from ..processes import run_child
    command, summary, args = _plan(train_args, recipe, script, nproc_per_node, nnodes, node_rank, master_addr,
                                   master_port, sys.executable)
    if not dry_run:
        check_environment(args, nproc_per_node)
    print(shlex.join(command), flush=True)
    print(summary, flush=True)
    if dry_run:
        return 0
    return run_child(command)
