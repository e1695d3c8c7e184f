"""Stopping a long command (a `kill`, `timeout`, a scheduler's cancel, Ctrl-C) stops its whole process tree.

Real process trees: `timm-prelu train` (torchrun -> train.py) and `timm-prelu demo`, signalled while train.py runs.
Every descendant recorded before the signal must be gone afterwards, and nothing unfinished may be left behind.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from conftest import train_py_args

# As a terminal or a scheduler finds them: a job started in the background by a non-interactive shell (as CI may
# run the suite) inherits SIGINT ignored, and Python then leaves it ignored; restore the usual dispositions.
CLI = ('import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); '
       'signal.signal(signal.SIGTERM, signal.SIG_DFL); '
       'sys.argv = ["timm-prelu", *sys.argv[1:]]; runpy.run_module("timm_prelu", run_name="__main__")')


def _stat(pid: int) -> Tuple[int, str, int]:
    """(parent pid, state, start time) from /proc/PID/stat."""
    with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return int(fields[1]), fields[0], int(fields[19])


def _descendants(root: int) -> Dict[int, int]:
    """Every live process below ``root``: pid -> start time (a reused pid has another start time)."""
    parents = {}
    for entry in Path('/proc').iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = _stat(int(entry.name))
            except (OSError, IndexError):
                continue  # gone meanwhile
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, state, start) in parents.items():
            if ppid == parent and pid not in found and state != 'Z':
                found[pid] = start
                frontier.append(pid)
    return found


def _alive(pid: int, start: int) -> bool:
    """Running (not a zombie: a dead process waiting to be reaped holds nothing) and not a reused pid."""
    try:
        _, state, started = _stat(pid)
    except OSError:
        return False
    return started == start and state != 'Z'


def _depth(root: int, pid: int) -> int:
    depth = 0
    while pid != root and pid > 1:
        try:
            pid = _stat(pid)[0]
        except OSError:
            return -1
        depth += 1
    return depth if pid == root else -1


def _signal_when_training(proc: subprocess.Popen, ready, signum: int, timeout_s: float = 240) -> Dict[int, int]:
    """Wait until train.py runs under ``proc`` (a grandchild: torchrun's worker) and ``ready()``, then signal
    ``proc`` alone, as `kill PID` does; returns the descendants seen just before."""
    deadline = time.time() + timeout_s
    tree: Dict[int, int] = {}
    while time.time() < deadline and proc.poll() is None:
        tree = _descendants(proc.pid)
        if any(_depth(proc.pid, pid) >= 2 for pid in tree) and ready():
            break
        time.sleep(0.5)
    assert proc.poll() is None, 'the command ended before it could be signalled'
    assert any(_depth(proc.pid, pid) >= 2 for pid in tree), f'no train.py worker under torchrun: {tree}'
    tree = _descendants(proc.pid)
    proc.send_signal(signum)
    return tree


def _partials(out: Path) -> List[Path]:
    """The unfinished work folders of ``out`` (``<out>.partial-XXXXXX``)."""
    return sorted(out.parent.glob(f'{out.name}.partial*'))


def _assert_no_orphans(tree: Dict[int, int]) -> None:
    left = [pid for pid, start in tree.items() if _alive(pid, start)]
    assert not left, f'processes left running: {left}'


@pytest.mark.parametrize('signum, code', [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_train_stops_torchrun_and_its_workers(signum, code, digits_folder, train_script, tmp_path):
    log = tmp_path / 'log.txt'
    flags = train_py_args(digits_folder, tmp_path, epochs=100, experiment='stopped')
    with open(log, 'w') as out:
        proc = subprocess.Popen([sys.executable, '-c', CLI, 'train', '--timm-script', str(train_script), '--',
                                 *flags], stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        # the experiment folder appears once train.py has built its model and data and starts epoch 0
        tree = _signal_when_training(proc, lambda: (tmp_path / 'stopped').is_dir(), signum)
        assert proc.wait(timeout=60) == code, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    _assert_no_orphans(tree)
    text = log.read_text()
    assert ('interrupted' if signum == signal.SIGINT else 'terminated by SIGTERM') in text.splitlines()[-1]


def test_demo_sigterm_stops_training_and_leaves_no_partial_output(tmp_path):
    out = tmp_path / 'run'
    proc = subprocess.Popen([sys.executable, '-c', CLI, 'demo', '--quick', '--out', str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        tree = _signal_when_training(proc, lambda: any((p / 'train').is_dir() for p in _partials(out)),
                                     signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == 'timm-prelu demo: terminated by SIGTERM'
    _assert_no_orphans(tree)
    assert not out.exists() and not _partials(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_reproduce_sigterm_leaves_no_partial_output(tmp_path):
    # no child process here: SIGTERM must unwind the main process like Ctrl-C, so the unfinished folder goes
    out = tmp_path / 'depth'
    proc = subprocess.Popen([sys.executable, '-c', CLI, 'reproduce', 'depth', '--out', str(out), '--steps', '5000'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while not _partials(out) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert _partials(out) and proc.poll() is None, 'the experiment never started'
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == 'timm-prelu reproduce: terminated by SIGTERM'
    assert list(tmp_path.iterdir()) == []


def test_a_timed_out_child_is_stopped_with_its_own_children(tmp_path):
    from timm_prelu.processes import run_captured
    pid_file = tmp_path / 'grandchild.pid'
    with pytest.raises(subprocess.TimeoutExpired):
        # the shell starts a grandchild and waits: stopping only the shell would leave `sleep` running
        run_captured(['bash', '-c', f'sleep 300 & echo $! > {pid_file}; wait'], timeout_s=3)
    pid = int(pid_file.read_text())
    assert not os.path.exists(f'/proc/{pid}') or _stat(pid)[1] == 'Z'
