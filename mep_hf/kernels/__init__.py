"""Analytic block linearizations: the two products EP needs from a block (state VJP, parameter gradient) in closed
form, for blocks common enough to be worth it. Generic autograd (:class:`mep_hf.equilibrium.AutogradBlock`)
covers every other block; a block opts in through ``ep_linearize(state)``."""

from .dense import DENSE_ACTIVATIONS, DenseLinearization
from .linear_maps import ConvPoolLinearization, LinearMapLinearization
from .residual import ResidualDenseLinearization

__all__ = [
    "DENSE_ACTIVATIONS",
    "ConvPoolLinearization",
    "DenseLinearization",
    "LinearMapLinearization",
    "ResidualDenseLinearization",
]
