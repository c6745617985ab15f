"""Building blocks shared by the FLatten families.

* ``attention/``: the linear attentions of the ``L`` stages (focused + paper Table 3), one factory;
* ``family.py``: errors, the input-size check and :class:`FLattenModel`, the base of every family;
* ``grid.py``: token / grid / map conversions, conv output sizes, convs over the token grid;
* ``window.py``: window partition (Swin windows and CSWin stripes), padding, shifted-window masks;
* ``pos_embed.py``: resampling of positional encodings and position embeddings to other grids;
* ``weights.py``: safe checkpoint loading, the released-weights filter, strict loading.
"""
from .attention import FocusedLinearAttention, LinearAttention, create_linear_attention, make_la_kwargs
from .family import FLattenModel, InputSizeError, ModelConfigError, check_input_size, parse_attn_type
from .grid import to_2tuple_size
from .pos_embed import resample_token_grid
from .weights import (IGNORED_KEYS, CheckpointError, checkpoint_filter_fn, is_ignored_key, load_checkpoint,
                      safe_load, unwrap_state_dict)
