"""Child processes that stop with the command that started them.

Each child (torchrun, train.py) starts in its own session, so its whole tree is one process group that can be
stopped at once: SIGTERM to the group, a few seconds' grace, then SIGKILL. Stopping happens whenever the parent
leaves the ``child_process`` block for any reason (finished, failed, Ctrl-C, SIGTERM), so no child outlives it.

A SIGTERM becomes a ``Terminated`` exception in the main thread (``terminate_raises``), so ``finally`` blocks and
context managers run (the complete-or-absent output writers remove their unfinished folders) just as for Ctrl-C.
"""
import contextlib
import os
import signal
import subprocess
import time
from typing import Iterator, Optional, Sequence

__all__ = ['Terminated', 'terminate_raises', 'child_process', 'run_child', 'run_captured', 'stop_process_group',
           'signal_exit_code', 'describe_exit']

GRACE_S = 5.0  # from SIGTERM to SIGKILL: time for torchrun to stop its workers and for train.py to exit


class Terminated(BaseException):
    """The process received SIGTERM. A BaseException, like KeyboardInterrupt, so ``except Exception`` passes it."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(f'terminated by {signal.Signals(signum).name}')
        self.signum = signum


def signal_exit_code(signum: int) -> int:
    """The shell's exit status for a process stopped by ``signum``: 128 + signum (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


def _raise_terminated(signum, frame) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated`` in the main thread; the previous handler comes back after.

    A SIGTERM that the process inherited as ignored stays ignored (as Python does for SIGINT).
    """
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, so a second Ctrl-C cannot cut a cleanup short."""
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a pid reused by someone else's group: not ours any more
        return False
    return True


def stop_process_group(proc: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """Stop ``proc`` and every process of its group: SIGTERM, up to ``grace_s`` seconds, then SIGKILL.

    ``proc`` must lead its own group (started with ``start_new_session=True``). Returns once ``proc`` is reaped
    and the group is empty (or, if the leader's orphaned children are not reaped promptly, after the grace time).
    """
    pgid = proc.pid
    with _signals_deferred():
        if proc.poll() is None or _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and (proc.poll() is None or _group_alive(pgid)):
                time.sleep(0.05)
            if proc.poll() is None or _group_alive(pgid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def child_process(command: Sequence[str], **popen_kwargs) -> Iterator[subprocess.Popen]:
    """``subprocess.Popen(command)`` in its own process group, stopped with all its descendants on leaving.

    Leaving normally after ``proc.wait()`` costs nothing; leaving early (an exception, Ctrl-C, ``Terminated``)
    stops the group first, then lets the exception go on.
    """
    proc = subprocess.Popen(list(command), start_new_session=True, **popen_kwargs)
    try:
        yield proc
    finally:
        stop_process_group(proc)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def run_child(command: Sequence[str], **popen_kwargs) -> int:
    """Run ``command`` to the end in its own process group (see ``child_process``); returns its exit status."""
    with child_process(command, **popen_kwargs) as proc:
        return proc.wait()


def run_captured(command: Sequence[str], timeout_s: Optional[float] = None,
                 **popen_kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)`` in its own process group:
    on a timeout or an interruption the whole group is stopped, not only the direct child."""
    with child_process(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen_kwargs) as proc:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    return subprocess.CompletedProcess(list(command), proc.returncode, stdout, stderr)


def describe_exit(code: int) -> str:
    """``exit 1`` or, for a child killed by a signal (negative status), ``killed by SIGKILL``."""
    if code < 0:
        try:
            return f'killed by {signal.Signals(-code).name}'
        except ValueError:
            return f'killed by signal {-code}'
    return f'exit {code}'
