"""Benchmarks of the PReLU-nets: rectifier cost, inference paths, efficiency, dense views, scaling.

``run_benchmarks`` (the `timm-prelu bench` command) runs the sections in one process and writes BENCHMARKS.md,
a CSV per table, PNG plots and results.json. The sections are plain functions usable on their own.
"""
from .activation_cost import activation_cost
from .dense_vs_crops import dense_vs_crops
from .eval_scaling import eval_scaling
from .inference_paths import PATHS, ModelSpec, efficiency_rows, inference_paths
from .machine import describe_machine
from .matmul_peak import matmul_peak
from .memory import peak_memory_mib
from .report import SECTIONS, TABLES, write_report
from .runner import profile_settings, run_benchmarks
from .scaling import fit_power_law, scaling
from .timer import Stats, interleaved
from .train_throughput import train_throughput

__all__ = [
    'run_benchmarks', 'profile_settings', 'SECTIONS', 'TABLES', 'write_report', 'activation_cost', 'inference_paths',
    'ModelSpec', 'PATHS', 'efficiency_rows', 'dense_vs_crops', 'eval_scaling', 'scaling', 'fit_power_law',
    'matmul_peak',
    'describe_machine', 'peak_memory_mib', 'Stats', 'interleaved', 'train_throughput',
]
