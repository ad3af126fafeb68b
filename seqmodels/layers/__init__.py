"""Token mixers, one file per family; importing this package registers them all by name."""
from seqmodels.layers.registry import get_mixer, mixer_names, register_mixer
from seqmodels.layers.base import Mixer

from seqmodels.layers import attention  # noqa: F401  (registers "attention")
from seqmodels.layers import based  # noqa: F401  (registers "based")
from seqmodels.layers import base_conv  # noqa: F401  (registers "base_conv")
from seqmodels.layers import sliding_window  # noqa: F401  (registers "sliding_window")
from seqmodels.layers import titans_memory  # noqa: F401  (registers "titans_memory")
from seqmodels.layers import titans_mag  # noqa: F401  (registers "titans_mag")
from seqmodels.layers import lizard  # noqa: F401  (registers "lizard")
from seqmodels.layers import lolcats  # noqa: F401  (registers "lolcats")

__all__ = ["Mixer", "get_mixer", "mixer_names", "register_mixer"]
