"""Old module paths keep importing: each is an alias of its new home, with a warning naming it."""
import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    'timm_prelu.variance_probe': 'timm_prelu.init.probe',
    'timm_prelu.plain_net': 'timm_prelu.init.plain_net',
    'timm_prelu.depth_experiment': 'timm_prelu.init.depth',
    'timm_prelu.slopes': 'timm_prelu.init.slopes',
    'timm_prelu.checkpoints': 'timm_prelu.sources.checkpoints',
    'timm_prelu.onnx_export': 'timm_prelu.onnx_model.export',
    'timm_prelu.onnx_runtime': 'timm_prelu.onnx_model.runtime',
    'timm_prelu.evaluation': 'timm_prelu.inference.evaluation',
    'timm_prelu.images': 'timm_prelu.inference.images',
    'timm_prelu.datasets': 'timm_prelu.demo.datasets',
    'timm_prelu.stage_timer': 'timm_prelu.demo.stage_timer',
    'timm_prelu.complexity': 'timm_prelu.models.complexity',
    'timm_prelu.output_dir': 'timm_prelu.outputs',
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        target = importlib.import_module(self.new)
        module.__doc__ = target.__doc__
        module.__all__ = list(getattr(target, '__all__', ()))
        module.__getattr__ = lambda name: getattr(target, name)


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves ``timm_prelu.<old>`` to the module that now holds its code."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        warnings.warn(f'{fullname} moved to {new}; import it from there', FutureWarning, stacklevel=3)
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
