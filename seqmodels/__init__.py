"""seqmodels: pretrain, linearize and probe sub-quadratic sequence models.

    from seqmodels import ModelConfig, SeqLM
    model = SeqLM(ModelConfig.from_preset("transformer-tiny"))

Importing the package registers every mixer family and the Hugging Face classes
(`AutoConfig` / `AutoModelForCausalLM` find `model_type: seqmodels`).
"""
__version__ = "0.1.0"

from seqmodels.config import ModelConfig, presets
from seqmodels.model import SeqLM, SeqLMOutput
from seqmodels.layers import get_mixer, mixer_names, register_mixer
from seqmodels.hf import SeqModelsConfig, SeqModelsForCausalLM

__all__ = [
    "ModelConfig",
    "SeqLM",
    "SeqLMOutput",
    "SeqModelsConfig",
    "SeqModelsForCausalLM",
    "get_mixer",
    "mixer_names",
    "presets",
    "register_mixer",
]
