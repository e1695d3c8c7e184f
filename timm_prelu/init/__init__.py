"""The paper's initialisation as a tool: rectifier-aware rules, the variance probe, plain nets, the depth
experiment and learned-slope reading."""
from .rules import (
    INIT_RULES, InitReport, LayerInit, LayerRectifiers, RectifierLink, default_input, find_rectifiers, he_init_,
    init_weights_, layer_fans, xavier_init_, xavier_std,
)
from .plain_net import PLAIN_NET_NAME, PlainNet, create_plain_net, is_plain_net_name
from .probe import LayerStats, format_probe_table, plot_probe, probe_inits, probe_rule, probe_variance, summarize_probe
from .slopes import LayerSlopes, format_slopes, layer_slopes, plot_slopes

__all__ = [
    'RectifierLink', 'LayerRectifiers', 'LayerInit', 'InitReport', 'INIT_RULES', 'find_rectifiers', 'default_input',
    'he_init_', 'xavier_init_', 'init_weights_', 'xavier_std', 'layer_fans',
    'PlainNet', 'PLAIN_NET_NAME', 'create_plain_net', 'is_plain_net_name',
    'LayerStats', 'probe_variance', 'probe_rule', 'probe_inits', 'format_probe_table', 'summarize_probe', 'plot_probe',
    'LayerSlopes', 'layer_slopes', 'format_slopes', 'plot_slopes',
]
