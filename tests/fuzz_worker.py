"""Worker for test_fuzz.py: loads corrupted copies of one file kind, one case after another, in one process.

``python fuzz_worker.py KIND ORIGINAL CASES RESULTS START MEMORY_BYTES``: CASES is a JSON list of byte edits
(``['flip', pos, bit]``, ``['truncate', length]``, ``['insert', pos, hex bytes]``); each corrupted copy is written
into the current folder and read the way a user's command would read it, then scored by the predictor. One JSON
line per case goes to RESULTS: ``{"start": i}`` before, ``{"i": i, "outcome": ...}`` after, so the parent can tell
which case a crash or a hang happened in and resume after it. Outcomes: ``error`` (a TimmPreluError: the clean
refusal), ``same`` (a result equal to the original file's), ``changed`` (a valid file whose edited bytes changed the
result, e.g. a weight: still a finite result), ``other`` (anything else: a foreign exception, a NaN, a hang).
"""
import json
import resource
import signal
import sys
import traceback
from pathlib import Path

import numpy as np

PER_CASE_SECONDS = 20


class CaseTimeout(BaseException):  # not an Exception: library code that catches Exception must not swallow it
    pass


def _expire(*_):
    raise CaseTimeout()


def corrupt(data: bytes, edit: list) -> bytes:
    op = edit[0]
    if op == 'flip':
        pos, bit = edit[1], edit[2]
        return data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1:]
    if op == 'truncate':
        return data[:edit[1]]
    if op == 'insert':
        return data[:edit[1]] + bytes.fromhex(edit[2]) + data[edit[1]:]
    raise ValueError(op)


def make_runner(kind: str):
    """A function path -> result array for this kind of file, run as the CLI / API would."""
    import torch
    from PIL import Image
    import timm
    import timm_prelu  # noqa: F401
    from timm_prelu.inference.images import load_image
    from timm_prelu.inference.predictor import MultiScalePredictor, OnnxBackend, TorchBackend
    from timm_prelu.sources.checkpoints import create_model_from_checkpoint, read_checkpoint
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))

    def score(backend, img=image):
        predictor = MultiScalePredictor(backend, scales=(32,), views='full', flip=False)
        return predictor.predict(img)

    if kind == 'checkpoint':
        return lambda p: score(TorchBackend(create_model_from_checkpoint(read_checkpoint(p)), 'cpu'))
    if kind == 'safetensors':
        kwargs = {'width_mult': 0.125, 'fc_dim': 64}
        return lambda p: score(TorchBackend(create_model_from_checkpoint(
            read_checkpoint(p), model_name='prelu_model_a', model_kwargs=kwargs), 'cpu'))
    if kind == 'onnx':
        return lambda p: score(OnnxBackend(p, providers='cpu', threads=1))
    if kind == 'png':
        torch.manual_seed(0)
        backend = TorchBackend(timm.create_model('prelu_model_a', width_mult=0.125, fc_dim=64, num_classes=10), 'cpu')

        def run_png(p):
            img = load_image(p, min_size=1).image
            return np.concatenate([np.asarray(img, dtype=np.float64).ravel(), score(backend, img)])
        return run_png
    raise ValueError(kind)


def main() -> None:
    kind, original, cases, results, start, memory = sys.argv[1:7]
    resource.setrlimit(resource.RLIMIT_AS, (int(memory), int(memory)))
    from timm_prelu.errors import TimmPreluError
    run = make_runner(kind)
    data = Path(original).read_bytes()
    reference = run(original)
    edits = json.loads(Path(cases).read_text())
    signal.signal(signal.SIGALRM, _expire)
    suffix = ''.join(Path(original).suffixes)
    with open(results, 'a') as out:
        def record(**row):
            out.write(json.dumps(row) + '\n')
            out.flush()

        for i in range(int(start), len(edits)):
            record(start=i)
            path = Path(f'case{i}{suffix}')
            path.write_bytes(corrupt(data, edits[i]))
            signal.alarm(PER_CASE_SECONDS)
            try:
                result = run(str(path))
                if not np.isfinite(result).all():
                    outcome, detail = 'other', 'non-finite result'
                elif result.shape == reference.shape and np.allclose(result, reference, rtol=0, atol=1e-6):
                    outcome, detail = 'same', ''
                else:
                    outcome, detail = 'changed', ''
            except TimmPreluError as e:
                text = str(e)
                outcome, detail = ('error', f'{type(e).__name__}: {text[:160]}') if '\n' not in text.strip() else \
                    ('other', f'multi-line {type(e).__name__}: {text[:300]}')
            except CaseTimeout:
                outcome, detail = 'other', f'no answer within {PER_CASE_SECONDS} s'
            except BaseException as e:  # noqa: B036 - everything else is what the test is looking for
                tb = traceback.extract_tb(e.__traceback__)[-1]
                outcome, detail = 'other', f'{type(e).__name__}: {str(e)[:200]} at {tb.filename}:{tb.lineno}'
            finally:
                signal.alarm(0)
            path.unlink()
            record(i=i, outcome=outcome, detail=detail, edit=edits[i][:2])


if __name__ == '__main__':
    main()
