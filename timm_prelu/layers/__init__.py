from .activations import ACTIVATIONS, PReLU, create_rectifier, rectifier_slope
from .he_init import fan, he_init_layer_, he_normal_, he_std
from .spp import SPP_BINS, SpatialPyramidPool, spatial_pyramid_pool, spp_bin_bounds, spp_bin_mask, spp_num_bins
