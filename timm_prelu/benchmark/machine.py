"""The machine a benchmark ran on: CPU model, cores, threads, GPU, library versions, load."""
import os
import platform
from importlib import metadata
from typing import Dict, List, Optional, Tuple

from ..inference.precision import cpu_isa

__all__ = ['describe_machine', 'machine_rows', 'model_label', 'LIBRARIES']

LIBRARIES = ('torch', 'torchvision', 'timm', 'timm-prelu', 'onnx', 'onnxruntime', 'onnxruntime-gpu', 'numpy')


def model_label(name: str, kwargs: Optional[Dict] = None) -> str:
    """'prelu_model_a' -> 'model A' (plus the non-default kwargs, e.g. a narrow width)."""
    label = f'model {name[-1].upper()}' if name.startswith('prelu_model_') else name
    return label + (' (' + ', '.join(f'{k}={v}' for k, v in kwargs.items()) + ')' if kwargs else '')


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.lower().startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _physical_cores() -> int:
    """Distinct (physical id, core id) pairs on Linux; the logical count elsewhere."""
    try:
        cores, phys = set(), '0'
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('physical id'):
                    phys = line.split(':', 1)[1].strip()
                elif line.startswith('core id'):
                    cores.add((phys, line.split(':', 1)[1].strip()))
        if cores:
            return len(cores)
    except OSError:
        pass
    return os.cpu_count() or 1


def _versions() -> Dict[str, str]:
    out = {'python': platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def describe_machine(device: str = 'cpu') -> Dict:
    """What a reader needs to compare our figures with theirs."""
    import torch
    info = {
        'cpu': _cpu_model(),
        'logical_cores': os.cpu_count(),
        'physical_cores': _physical_cores(),
        'cores_available': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(),
        'torch_threads': torch.get_num_threads(),
        'os': f'{platform.system()} {platform.release()}',
        'device': device,
        'gpu': 'none',
        'versions': _versions(),
        'isa': [flag for flag, has in cpu_isa().items() if has],
    }
    if hasattr(os, 'getloadavg'):
        info['load_average_at_start'] = [round(v, 2) for v in os.getloadavg()]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info['gpu'] = f'{props.name} ({props.total_memory / 2 ** 30:.0f} GiB)'
        info['cuda'] = torch.version.cuda
    try:
        import onnxruntime as ort
        info['onnxruntime_providers'] = list(ort.get_available_providers())
    except ImportError:
        pass
    return info


def machine_rows(info: Dict) -> List[Tuple[str, str]]:
    """(label, value) pairs for the report's machine table."""
    rows = [
        ('CPU', info['cpu']),
        ('cores', f"{info['physical_cores']} physical, {info['logical_cores']} logical, "
                  f"{info['cores_available']} available to this process"),
        ('PyTorch threads', str(info['torch_threads'])),
        ('GPU', info['gpu'] + (f" (CUDA {info['cuda']})" if info.get('cuda') else '')),
        ('device benchmarked', info['device']),
        ('OS', info['os']),
    ]
    if 'isa' in info:
        rows.append(('ISA flags (vector, int8 / bf16 dot products)', ', '.join(info['isa']) or 'none of the listed'))
    if 'load_average_at_start' in info:
        rows.append(('load average (1/5/15 min) at start', ' / '.join(map(str, info['load_average_at_start']))))
    if 'load_average_at_end' in info:
        rows.append(('load average (1/5/15 min) at end, this run included',
                     ' / '.join(map(str, info['load_average_at_end']))))
    if 'onnxruntime_providers' in info:
        rows.append(('ONNX Runtime providers', ', '.join(info['onnxruntime_providers'])))
    rows.append(('versions', ', '.join(f'{k} {v}' for k, v in info['versions'].items())))
    return rows
