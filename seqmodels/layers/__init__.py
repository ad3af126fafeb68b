"""Token mixers, one file per family; importing this package registers them all by name."""
from seqmodels.layers.registry import get_mixer, mixer_names, register_mixer
from seqmodels.layers.base import Mixer

# one import per family: each module registers its mixer(s) with @register_mixer
from seqmodels.layers import arelit  # noqa: F401
from seqmodels.layers import attention  # noqa: F401
from seqmodels.layers import base_conv  # noqa: F401
from seqmodels.layers import based  # noqa: F401
from seqmodels.layers import chela  # noqa: F401
from seqmodels.layers import gla  # noqa: F401
from seqmodels.layers import lightnet  # noqa: F401
from seqmodels.layers import lightning  # noqa: F401
from seqmodels.layers import lizard  # noqa: F401
from seqmodels.layers import lolcats  # noqa: F401
from seqmodels.layers import mega  # noqa: F401
from seqmodels.layers import relit  # noqa: F401
from seqmodels.layers import retnet  # noqa: F401
from seqmodels.layers import sliding_window  # noqa: F401
from seqmodels.layers import titans_mag  # noqa: F401
from seqmodels.layers import titans_memory  # noqa: F401
from seqmodels.layers import vig  # noqa: F401

__all__ = ["Mixer", "get_mixer", "mixer_names", "register_mixer"]
