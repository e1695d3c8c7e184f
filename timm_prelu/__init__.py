"""timm-prelu: the PReLU-nets of He et al., "Delving Deep into Rectifiers" (ICCV 2015), as timm models.

Importing the package registers ``prelu_model_a``, ``prelu_model_b`` and ``prelu_model_c`` in timm's registry
(``timm.create_model('prelu_model_c')``); timm's ``train.py --device-modules timm_prelu`` does that import.
``timm_prelu.init`` initialises any network the paper's way (``he_init_``, ``xavier_init_``).
"""
from . import _moved, init
from .layers import SpatialPyramidPool, he_normal_, he_std, spatial_pyramid_pool
from .models import HUB_ORG, PReLUNet

__all__ = ['init', 'SpatialPyramidPool', 'spatial_pyramid_pool', 'he_normal_', 'he_std', 'HUB_ORG', 'PReLUNet']

__version__ = '0.1.0'

_moved.install()
