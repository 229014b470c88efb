"""The layered (prediction-error) energy as a registered family: the algorithm itself is :mod:`mep_hf.equilibrium`."""

from __future__ import annotations

from .. import equilibrium as eq
from . import register_energy


class LayeredEnergy:
    """``E = 1/B Σ_l ½‖s_l − f_l(s_{l−1})‖²``: the free phase is the forward pass; nudged phases settle by sweeps."""

    name = "layered"
    default_nudging = "positive"  # with a scale-free β, one phase is exact enough and a second contrast is not paid
    has_backprop_reference = True

    def check_config(self, config: eq.SettleConfig) -> None:
        for flag, value in (("ep_free_steps", config.free_steps), ("ep_nudged_steps", config.nudged_steps)):
            if value is not None:
                raise ValueError(f"{flag} is for energies whose free phase settles (hopfield); the layered energy's "
                                 "free phase is one forward pass and its nudged phases take ep_settle_steps")

    def default_beta(self, displacement):
        return eq.ScaleFreeBeta(displacement)

    def free_phase(self, stack, config):
        return eq.free_phase(stack, config.memory)

    def nudged_phases(self, stack, free, beta, nudging, config):
        return eq.nudged_phases(stack, free, beta, nudging, config)

    def contrast(self, free, phases, config, grad_scale, loss):
        # The contrast keeps only block 1's linearization of the free pass, and frees it after layer 1.
        return eq.Contrast(phases, config.divergence_threshold, first_block=free.blocks[0], grad_scale=grad_scale,
                           loss=loss)

    def feed_forward(self, stack):
        s = stack.inputs
        for block in stack.blocks:
            s = block(s)
        return s

    def diagnostics(self, contrast):
        phases = contrast.phases
        return {"ep_energy": sum(p.energy for p in phases) / len(phases),
                "ep_settle_steps": sum(p.steps for p in phases) / len(phases),
                "ep_beta": abs(phases[0].beta)}


register_energy(LayeredEnergy())
