"""mindref: the reference implementation of MIND (Li et al., CIKM 2019) in NumPy.

Modules follow the paper: embedding (3.2), dense (3.3, ReLU layers), squash (Eq. 7),
routing (3.3, Eqs. 4-9), attention (3.4), samplers and sampled_softmax (3.5, Eqs. 10-11).
Every layer has forward(...) -> (out, cache) and backward(dout, cache) -> grads.
"""
__version__ = "0.1.0"
