"""Section 7: `timm-prelu eval` throughput at 1 and 2 processes (images/s) on the same folder, in the same run.

Each configuration is a fresh launch (one plain process, or ``torchrun --standalone --nproc-per-node N`` with
gloo), alternated in rounds so a busy moment hits both; each process gets ``cores // processes`` threads. Timed
inside the launch: from a barrier after the model is built and warmed up to the end of ``evaluate_folder``'s
gather on rank 0 (image decoding, scoring and collecting included; interpreter start-up, model build and the
process group set-up excluded). The model is built from a fixed seed, so every launch scores the same weights
and the tables must agree.

Run as a module, this file is the worker the launches start.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ['eval_scaling']


def _make_folder(root: Path, images: int, img_size: int) -> Path:
    """``images`` digits upsampled to ``img_size`` px as an ImageFolder (classes in turn, so each has some)."""
    from PIL import Image
    from ..demo.datasets import digits_images
    pixels, labels, names = digits_images(img_size)
    for i in range(images):
        folder = root / names[labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i]).save(folder / f'{i:05d}.png')
    return root


def _launch(processes: int, worker_args: List[str], threads: int, result: Path) -> Dict:
    import timm_prelu
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    for var in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        env.pop(var, None)  # a bench started under torchrun must not make its own launches join that group
    package_root = str(Path(timm_prelu.__file__).resolve().parents[1])  # this copy of timm_prelu, in every process
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [package_root, env.get('PYTHONPATH')]))
    module = ['-m', __name__, *worker_args, '--threads', str(threads), '--result', str(result)]
    launcher = [] if processes == 1 else ['-m', 'torch.distributed.run', '--standalone',
                                          '--nproc-per-node', str(processes)]
    proc = subprocess.run([sys.executable, *launcher, *module], capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not result.is_file():
        raise RuntimeError(f'the {processes}-process eval launch failed (exit {proc.returncode}):\n'
                           f'{proc.stdout[-2000:]}{proc.stderr[-2000:]}')
    return json.loads(result.read_text())


def eval_scaling(
        workdir: Path,
        model_name: str = 'prelu_model_a',
        model_kwargs: Optional[Dict] = None,
        images: int = 16,
        img_size: int = 224,
        scales: Sequence[int] = (224,),
        views: Sequence[str] = ('full',),
        processes: Sequence[int] = (1, 2),
        repeats: int = 2,
        progress: Optional[Callable[[str], None]] = None,
) -> Tuple[List[Dict], List[str]]:
    """Eval throughput at each number of processes; returns one row per configuration and notes.

    Rows: processes, threads per process, the images each rank took, median seconds, images/s, speed-up over
    the first configuration and whether its error table equals that configuration's.
    """
    from ..inference.distributed import cpu_threads_per_process
    data = _make_folder(Path(workdir) / 'eval-folder', images, img_size)
    worker_args = ['--data', str(data), '--model', model_name, '--model-kwargs', json.dumps(model_kwargs or {}),
                   '--scales', *map(str, scales), '--views', *views]
    runs: Dict[int, List[Dict]] = {n: [] for n in processes}
    for r in range(repeats):
        order = list(processes) if r % 2 == 0 else list(reversed(processes))  # rotated rounds
        for n in order:
            if progress is not None:
                progress(f'eval throughput, {n} process(es), round {r + 1}')
            runs[n].append(_launch(n, worker_args, cpu_threads_per_process(n), Path(workdir) / f'eval-{n}-{r}.json'))
    rows = []
    base = runs[processes[0]][0]
    base_ips = None
    for n in processes:
        seconds = statistics.median(x['seconds'] for x in runs[n])
        ips = runs[n][0]['images'] / seconds
        base_ips = base_ips or ips
        first = runs[n][0]
        rows.append(dict(processes=n, threads=first['threads'], per_rank=', '.join(map(str, first['per_rank'])),
                         n=len(runs[n]), median_s=seconds, images=first['images'], images_per_s=ips,
                         speedup=ips / base_ips, same_table=all(x['rows'] == base['rows'] for x in runs[n])))
    notes = [f'{images} digits upsampled to {img_size} px; scales {", ".join(map(str, scales))}, views '
             f'{", ".join(views)} with flips; eager PyTorch on the CPU.']
    return rows, notes


def _worker(argv: Optional[List[str]] = None) -> None:
    """One launch: build the seeded model, warm up, time ``evaluate_folder`` across the process group."""
    p = argparse.ArgumentParser()
    p.add_argument('--data', required=True)
    p.add_argument('--model', required=True)
    p.add_argument('--model-kwargs', default='{}')
    p.add_argument('--scales', type=int, nargs='+', required=True)
    p.add_argument('--views', nargs='+', required=True)
    p.add_argument('--threads', type=int, required=True)
    p.add_argument('--result', required=True)
    args = p.parse_args(argv)
    import timm
    import torch
    import timm_prelu  # noqa: F401  (registers the models)
    from ..inference.distributed import process_group
    from ..inference.evaluation import evaluate_folder
    from ..inference.folders import walk_imagefolder
    from ..inference.images import load_image
    from ..inference.predictor import MultiScalePredictor, TorchBackend
    torch.set_num_threads(args.threads)
    with process_group() as ranks:
        torch.manual_seed(0)
        model = timm.create_model(args.model, num_classes=10, **json.loads(args.model_kwargs))
        predictor = MultiScalePredictor(TorchBackend(model, device='cpu'), scales=args.scales, views=args.views)
        predictor.scores(load_image(walk_imagefolder(args.data, limit=1).samples[0][0]).image)  # warm-up
        ranks.barrier()
        t0 = time.perf_counter()
        result = evaluate_folder(predictor, args.data, progress=False, ranks=ranks)
        seconds = time.perf_counter() - t0
        if ranks.is_main:
            Path(args.result).write_text(json.dumps(dict(
                seconds=seconds, images=result.num_images, threads=torch.get_num_threads(),
                per_rank=result.images_per_rank, world_size=ranks.world_size,
                rows=[{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()} for r in result.rows])))


if __name__ == '__main__':
    _worker()
