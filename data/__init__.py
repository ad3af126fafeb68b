"""seqmodels.data: corpus, tokenizer, packing, loaders, synthetic tasks."""
