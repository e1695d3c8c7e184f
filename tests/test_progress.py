"""Progress: a live bar on a terminal, a few plain lines in a log file or CI."""
import io
import subprocess
import sys

from tqdm import tqdm

from timm_prelu.progress import LineProgress, progress

from conftest import TINY_KWARGS, TINY_MODEL


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_terminal_gets_a_tqdm_bar():
    out = _Terminal()
    with progress(total=50, desc='train', unit='epoch', file=out) as bar:
        assert isinstance(bar, tqdm)
        for _ in range(50):
            bar.update(1)
    assert '\r' in out.getvalue() and '50/50' in out.getvalue()


def test_log_gets_a_line_per_tenth_and_no_carriage_returns():
    out = io.StringIO()
    items = list(progress(range(1000), desc='eval', unit='img', file=out))
    assert items == list(range(1000))
    text = out.getvalue()
    assert '\r' not in text
    lines = text.splitlines()
    assert len(lines) == 10, lines  # 10%, 20%, ..., 100%
    assert lines[0].startswith('eval: 10% 100/1000 img, ')
    assert lines[-1].startswith('eval: 100% 1000/1000 img, ')


def test_log_line_every_30_s_when_the_work_is_slow():
    out, clock = io.StringIO(), _Clock()
    bar = LineProgress(total=1000, desc='depth experiment', file=out, clock=clock)
    for _ in range(50):  # 5% of the work over 100 s: no tenth crossed, so a line per 30 s
        clock.now += 2
        bar.update(1)
    bar.set_postfix_str('plain30 he: loss 2.1')
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split(', ')[1] for line in lines] == ['30 s', '60 s', '90 s', '100 s']
    assert lines[-1] == 'depth experiment: 5% 50/1000 it, 100 s, plain30 he: loss 2.1'


def test_unknown_total_and_postfix_fields():
    out, clock = io.StringIO(), _Clock()
    with LineProgress(desc='bench', unit='step', file=out, clock=clock) as bar:
        bar.update(3)
        bar.set_postfix(top1_err='12.5%', skipped=0)
    assert out.getvalue() == 'bench: 3 step, 0 s, top1_err=12.5%, skipped=0\n'


def test_disabled_prints_nothing():
    out = io.StringIO()
    assert list(progress([1, 2, 3], disable=True, file=out)) == [1, 2, 3]
    assert out.getvalue() == ''


def test_eval_into_a_log_writes_plain_progress_lines(digits_folder):
    # a real command whose stderr is a pipe, as a log file or CI is: a handful of whole lines, no redraws
    proc = subprocess.run(
        [sys.executable, '-m', 'timm_prelu', 'eval', '--data', str(digits_folder / 'val'), '--model', TINY_MODEL,
         '--model-kwargs', *[f'{k}={v}' for k, v in TINY_KWARGS.items()], '--num-classes', '10',
         '--device', 'cpu', '--scales', '32', '--views', 'full', '--no-flip'],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '\r' not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith('eval: ')]
    assert 1 <= len(lines) <= 11, proc.stderr
    assert lines[-1].startswith('eval: 100% 90/90 img')
