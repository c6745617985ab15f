from .common import InputSizeError, check_input_size, parse_attn_type, to_2tuple_size
from .focused_linear_attention import (FocusedLinearAttention, explicit_attention_matrix, focusing_function,
                                       linear_attention, make_la_kwargs, resize_positional_encoding)
from .weights import IGNORED_KEYS, checkpoint_filter_fn, unwrap_state_dict
