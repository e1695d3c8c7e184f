"""Reduced precision on the CPU: what the processor supports, and bfloat16 inference through PyTorch / oneDNN.

bfloat16 is fast only where the CPU computes it natively: AVX512-BF16 (Intel Cooper Lake and later Xeons, AMD Zen 4
and later) or AMX-BF16 (Intel Sapphire Rapids and later). Elsewhere PyTorch emulates it, which is slower than float32.
:class:`TorchBf16Backend` runs a PReLU-net with its weights in bfloat16 and channels-last activations, the layout
oneDNN's bf16 convolutions want; inputs stay float32 and scores come back float32.

Example::

    backend = TorchBf16Backend(model)      # backend.notes says when this CPU has no native bf16
    predictor = MultiScalePredictor(backend, scales=(256,), views=('full',))
"""
import functools
from typing import Any, Dict, FrozenSet, Optional

import numpy as np

from .predictor import TorchBackend

__all__ = ['cpu_isa', 'native_bf16', 'native_int8', 'bf16_note', 'TorchBf16Backend', 'PRECISIONS']

PRECISIONS = ('fp32', 'bf16')
# /proc/cpuinfo flags that decide the reduced-precision paths (Linux spelling)
ISA_FLAGS = ('avx2', 'avx512f', 'avx512_vnni', 'avx_vnni', 'avx512_bf16', 'amx_tile', 'amx_bf16', 'amx_int8')


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> FrozenSet[str]:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    return frozenset(line.split(':', 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_isa() -> Dict[str, bool]:
    """The reduced-precision instruction sets of this CPU (``/proc/cpuinfo`` flags; all False where unreadable)."""
    flags = _cpu_flags()
    return {f: f in flags for f in ISA_FLAGS}


def native_bf16(isa: Optional[Dict[str, bool]] = None) -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16)."""
    isa = cpu_isa() if isa is None else isa
    return bool(isa.get('avx512_bf16') or isa.get('amx_bf16'))


def native_int8(isa: Optional[Dict[str, bool]] = None) -> bool:
    """Whether the CPU has an int8 dot-product instruction (AVX512-VNNI, AVX-VNNI or AMX-INT8)."""
    isa = cpu_isa() if isa is None else isa
    return bool(isa.get('avx512_vnni') or isa.get('avx_vnni') or isa.get('amx_int8'))


def bf16_note(isa: Optional[Dict[str, bool]] = None) -> str:
    """'' on a CPU with native bf16, else why bf16 will be slow here."""
    if native_bf16(isa):
        return ''
    return ('this CPU has neither AVX512-BF16 nor AMX-BF16: bfloat16 is emulated and runs slower than float32; '
            'use float32 here, or int8 through ONNX Runtime')


class TorchBf16Backend(TorchBackend):
    """:class:`TorchBackend` with bfloat16 weights and channels-last bfloat16 activations (float32 in and out)."""

    def __init__(self, model: Any, device: Optional[str] = None) -> None:
        import copy
        import torch
        super().__init__(copy.deepcopy(model), device=device)  # the caller's model stays float32
        self.model = self.model.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
        note = bf16_note() if self.device.type == 'cpu' else ''
        if note:
            self.notes.append(note)

    def describe(self) -> str:
        return f'PyTorch {self.torch.__version__} ({self.device}, bfloat16, channels-last)'

    def _tensor(self, x: np.ndarray):
        t = self.torch.from_numpy(np.ascontiguousarray(x)).to(self.device, dtype=self.torch.bfloat16)
        return t.contiguous(memory_format=self.torch.channels_last)
