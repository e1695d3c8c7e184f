"""Seeded byte-level fuzzing of the files users receive from others: a train.py checkpoint, a .safetensors file,
an exported ONNX graph and a PNG.

Each corrupted copy (a bit flip, a truncation, or inserted bytes; a quarter of them in the first and a quarter in
the last KiB, where headers, zip directories and ONNX metadata live) is read and scored as a user's command would,
in a worker process per file kind, under a memory limit and a time limit per case. Every case must end in a
TimmPreluError of one line, or a finite result (the original's, or the one the changed bytes describe: a flipped
weight is still a weight). Nothing outside the test's temporary folder may change.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import narrow_a_export

CASES_PER_KIND = 60
SEED = 1234
MEMORY_LIMIT = 5 << 30  # address space per worker: importing torch, timm and onnxruntime maps 3-4 GiB
WORKER_SECONDS = 300  # a whole worker; a hang inside C code that the per-case alarm cannot stop ends here
WORKER = Path(__file__).with_name('fuzz_worker.py')
REPO = Path(__file__).resolve().parents[1]
KINDS = ('checkpoint', 'safetensors', 'onnx', 'png')


def make_originals(folder: Path, onnx_file: Path) -> dict:
    import timm
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from skimage import data as skdata
    import timm_prelu  # noqa: F401
    torch.manual_seed(0)
    kwargs = {'width_mult': 0.125, 'fc_dim': 64}
    model = timm.create_model('prelu_model_a', num_classes=10, **kwargs)
    args = argparse.Namespace(model='prelu_model_a', model_kwargs=dict(kwargs), num_classes=10, in_chans=None,
                              img_size=32, data_dir='data', class_map='', lr=0.01, epochs=2)
    files = {'checkpoint': folder / 'model_best.pth.tar', 'safetensors': folder / 'model.safetensors',
             'onnx': folder / 'model.onnx', 'png': folder / 'image.png'}
    torch.save({'epoch': 1, 'arch': 'prelu_model_a', 'state_dict': model.state_dict(), 'args': args,
                'metric': 50.0, 'version': 2}, files['checkpoint'])
    save_file(model.state_dict(), files['safetensors'])
    files['onnx'].write_bytes(onnx_file.read_bytes())
    Image.fromarray(skdata.astronaut()[::12, ::12]).save(files['png'])  # 43 x 43 RGB
    return files


def make_edits(size: int, rng: np.random.Generator, n: int) -> list:
    edits = []
    for k in range(n):
        region = rng.random()
        if region < 0.25:
            pos = int(rng.integers(0, min(size, 1024)))
        elif region < 0.5:
            pos = int(rng.integers(max(0, size - 1024), size))
        else:
            pos = int(rng.integers(0, size))
        op = k % 3
        if op == 0:
            edits.append(['flip', pos, int(rng.integers(0, 8))])
        elif op == 1:
            edits.append(['truncate', pos])
        else:
            inserted = rng.integers(0, 256, int(rng.integers(1, 65)), dtype=np.uint8).tobytes()
            edits.append(['insert', pos, inserted.hex()])
    return edits


def run_kind(kind: str, original: Path, edits: list, work: Path) -> list:
    """All cases of one kind; a worker that crashes or hangs is restarted after the case it was in."""
    work.mkdir()
    cases, results = work / 'cases.json', work / 'results.jsonl'
    cases.write_text(json.dumps(edits))
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join(
        [str(REPO)] + ([os.environ['PYTHONPATH']] if os.environ.get('PYTHONPATH') else [])))
    outcomes: dict = {}
    start = 0
    while start < len(edits):
        try:
            proc = subprocess.run([sys.executable, str(WORKER), kind, str(original), str(cases), str(results),
                                   str(start), str(MEMORY_LIMIT)], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=WORKER_SECONDS)
            ended = f'exit code {proc.returncode}: {proc.stderr.strip()[-300:]}'
        except subprocess.TimeoutExpired:
            ended = f'no answer within {WORKER_SECONDS} s'
        rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
        started = [r['start'] for r in rows if 'start' in r]
        outcomes.update({r['i']: r for r in rows if 'i' in r})
        assert started, f'{kind}: the worker failed before its first case ({ended})'
        if len(outcomes) == len(edits):
            break
        crashed = max(started)
        assert crashed not in outcomes, f'{kind}: the worker stopped between cases ({ended})'
        outcomes[crashed] = {'i': crashed, 'outcome': 'other', 'detail': f'process ended: {ended}',
                             'edit': edits[crashed][:2]}
        start = crashed + 1
    return [outcomes[i] for i in range(len(edits))]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _snapshot(folder: Path, recursive: bool) -> set:
    entries = set()
    walk = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for dirpath, dirnames, filenames in walk:
        dirnames[:] = [d for d in dirnames if d not in ('.git', '__pycache__', '.pytest_cache')]
        for name in filenames + dirnames:
            p = Path(dirpath, name)
            st = p.lstat()
            entries.add((str(p), p.is_dir() or st.st_size, 0 if p.is_dir() else st.st_mtime_ns) if recursive
                        else str(p))
    return entries


@pytest.fixture(scope='module')
def onnx_file(tmp_path_factory):
    return narrow_a_export(tmp_path_factory)[1]


def test_corrupted_files_end_in_a_clean_error_or_a_result(onnx_file, tmp_path):
    before = _snapshot(Path.cwd(), recursive=True), _snapshot(Path.home(), recursive=False)
    originals = make_originals(tmp_path, onnx_file)
    rng = np.random.default_rng(SEED)
    edits = {kind: make_edits(originals[kind].stat().st_size, rng, CASES_PER_KIND) for kind in KINDS}
    started, cpu = time.monotonic(), _children_cpu()
    with ThreadPoolExecutor(max_workers=2) as pool:  # two worker processes at a time
        done = dict(zip(KINDS, pool.map(lambda k: run_kind(k, originals[k], edits[k], tmp_path / f'work-{k}'), KINDS)))
    seconds, cpu = time.monotonic() - started, _children_cpu() - cpu
    table, failures = {}, []
    for kind, rows in done.items():
        table[kind] = Counter(r['outcome'] for r in rows)
        failures += [f'{kind} {r["edit"]}: {r["detail"]}' for r in rows if r['outcome'] == 'other']
    lines = [f'{"input":<12} {"cases":>5} {"clean error":>11} {"same result":>11} {"changed result":>14} {"other":>5}']
    lines += [f'{k:<12} {sum(c.values()):>5} {c["error"]:>11} {c["same"]:>11} {c["changed"]:>14} {c["other"]:>5}'
              for k, c in table.items()]
    for kind, rows in done.items():
        types = Counter(r['detail'].split(':')[0] for r in rows if r['outcome'] == 'error')
        lines.append(f'{kind} errors: ' + ', '.join(f'{t} {n}' for t, n in types.most_common()))
    print('\n'.join(lines) + f'\n{len(KINDS) * CASES_PER_KIND} cases in {seconds:.0f} s ({cpu:.0f} s of CPU)')
    assert sum(sum(c.values()) for c in table.values()) >= 200
    assert not failures, '\n'.join(failures[:20])
    assert all(c['error'] > 0 for c in table.values())  # the corruptions did reach the readers
    after = _snapshot(Path.cwd(), recursive=True), _snapshot(Path.home(), recursive=False)
    assert before[0] == after[0], f'changed in the working directory: {sorted(before[0] ^ after[0])[:10]}'
    assert before[1] == after[1], f'changed in the home folder: {sorted(before[1] ^ after[1])[:10]}'
