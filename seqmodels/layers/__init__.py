"""Token mixers, one file per family; importing this package registers them all by name."""
from seqmodels.layers.registry import get_mixer, mixer_names, register_mixer
from seqmodels.layers.base import Mixer

from seqmodels.layers import attention  # noqa: F401  (registers "attention")
from seqmodels.layers import retnet  # noqa: F401  (registers "retnet")
from seqmodels.layers import gla  # noqa: F401  (registers "gla")
from seqmodels.layers import lightning  # noqa: F401  (registers "lightning")
from seqmodels.layers import lightnet  # noqa: F401  (registers "lightnet")
from seqmodels.layers import vig  # noqa: F401  (registers "vig")
from seqmodels.layers import based  # noqa: F401  (registers "based")
from seqmodels.layers import base_conv  # noqa: F401  (registers "base_conv")
from seqmodels.layers import sliding_window  # noqa: F401  (registers "sliding_window")
from seqmodels.layers import relit  # noqa: F401  (registers "relit")
from seqmodels.layers import arelit  # noqa: F401  (registers "arelit")

__all__ = ["Mixer", "get_mixer", "mixer_names", "register_mixer"]
