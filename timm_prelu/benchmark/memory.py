"""Peak memory of one call: the working memory it needs beyond what was resident before it.

CPU: the process's resident-set high-water mark (Linux ``VmHWM``), reset just before the call by writing ``5`` to
``/proc/self/clear_refs``, minus the resident set at that moment. Freed heap memory is first handed back to the
OS (``malloc_trim``) so the call has to fault its buffers in again instead of silently reusing pages that were
already resident. This counts everything the call touches (PyTorch tensors, oneDNN scratch space, ONNX Runtime's
arena), which ``tracemalloc`` (Python objects only) and PyTorch's profiler (PyTorch tensors only) would miss.
CUDA: ``torch.cuda.max_memory_allocated`` over the call for PyTorch; for ONNX Runtime, whose CUDA arena PyTorch
does not see, the drop in the device's free memory across the call.
"""
import ctypes
import gc
import sys
from typing import Any, Callable, Optional

__all__ = ['peak_memory_mib', 'cpu_peak_supported', 'MEMORY_METHOD']

MEMORY_METHOD = {
    'cpu': 'RSS high-water mark during the call minus RSS before it (Linux /proc, high-water mark reset first)',
    'cuda': 'torch.cuda.max_memory_allocated during the call minus memory allocated before it '
            '(ONNX Runtime: drop in free device memory)',
}


def _status_kib(key: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_high_water_mark() -> bool:
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: freed pages may stay resident, the peak reads low
        pass


def cpu_peak_supported() -> bool:
    """Whether this OS lets us reset and read the resident-set high-water mark (Linux >= 4.0)."""
    if not sys.platform.startswith('linux'):
        return False
    try:
        _status_kib('VmHWM')
    except (OSError, KeyError):
        return False
    return _reset_high_water_mark()


def _cpu_peak(fn: Callable[[], Any]) -> Optional[float]:
    if not cpu_peak_supported():
        return None
    gc.collect()
    _malloc_trim()
    before = _status_kib('VmRSS')
    _reset_high_water_mark()
    fn()
    return max(0, _status_kib('VmHWM') - before) / 1024


def _cuda_peak(fn: Callable[[], Any], torch_allocations: bool) -> float:
    import torch
    torch.cuda.synchronize()
    if torch_allocations:
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    free_before, _ = torch.cuda.mem_get_info()
    fn()
    torch.cuda.synchronize()
    free_after, _ = torch.cuda.mem_get_info()
    return max(0, free_before - free_after) / 2 ** 20


def peak_memory_mib(fn: Callable[[], Any], device: str = 'cpu', torch_allocations: bool = True) -> Optional[float]:
    """MiB of memory that one call of ``fn`` needs beyond what was in use before it (None: cannot measure here).

    Args:
        fn: The call, e.g. one forward pass.
        device: 'cpu' or 'cuda'.
        torch_allocations: On CUDA, whether ``fn`` allocates through PyTorch (False for ONNX Runtime).
    """
    if str(device).startswith('cuda'):
        return _cuda_peak(fn, torch_allocations)
    return _cpu_peak(fn)
