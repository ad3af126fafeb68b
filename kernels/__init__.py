"""seqmodels.kernels: chunked kernels with their naive references, one folder per op."""
