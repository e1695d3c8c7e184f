from .prelu_net import (
    HUB_ORG, PReLUNet, PretrainedMismatchError, checkpoint_filter_fn, min_input_size, prelu_model_a, prelu_model_b,
    prelu_model_c,
)
