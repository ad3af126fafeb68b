"""Building blocks shared by several mixer families (seqmodels.layers holds the families only).

norm                  RMSNorm / LayerNorm (`build_norm`)
mlp                   channel mixers (`build_mlp`)
rope                  rotary position embedding
gru_gate              GTrXL's GRU gate (ReLiT / AReLiT `block: gtrxl`)
gla_base              the base of the mixers built on the `gla` op (GLAMixer, GLAState)
normalized_gla        `gla` divided by a running key sum (Based, ReLiT, Lizard)
relit_base            ReLiT's features and gates, shared by ReLiT and AReLiT
hedgehog_window       Hedgehog feature maps plus a softmax window, shared by Lizard and LoLCATs
neural_memory_branch  the Titans memory branch, shared by titans_memory and titans_mag
options               validation of per-family mixer options

Nothing here registers a mixer; the families subclass or call these.
"""
