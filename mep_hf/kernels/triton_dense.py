"""Triton kernels for the dense block on CUDA: one matmul with the block's element-wise work fused into it.

EP's three products for ``o = act(s Wᵀ + b)`` are all one kernel, ``C = op(A) · B`` with an optional prologue
on the A tile and an optional epilogue on the C tile:

* forward (placing a state):  ``A = s``, ``B = Wᵀ``, epilogue ``act(· + b)``;
* state VJP (settling):       ``A = e`` with the prologue ``scale · act'(o) ⊙ e``, ``B = W``;
* weight gradient (contrast): ``A = eᵀ`` with the same prologue (on ``oᵀ``), ``B = s``.

So ``act'(o) ⊙ e`` is never written to memory and the bias and activation cost no extra pass. Used by
:class:`~mep_hf.kernels.dense.DenseLinearization` for float32 CUDA tensors when Triton is installed; the torch
path covers everything else. Tests run these kernels on the CPU through Triton's interpreter
(``TRITON_INTERPRET=1``) against the torch path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .dense import DenseLinearization

# activation name -> code inside the kernels (0: none)
ACTIVATION_CODES = {None: 0, "tanh": 1, "sigmoid": 2, "relu": 3}


@triton.jit
def _activation(x, code: tl.constexpr):
    if code == 1:
        x = 2 * tl.sigmoid(2 * x) - 1  # tanh
    elif code == 2:
        x = tl.sigmoid(x)
    elif code == 3:
        x = tl.maximum(x, 0.0)
    return x


@triton.jit
def _times_derivative(a, o, code: tl.constexpr):
    """``act'(z) ⊙ a`` with ``act'(z)`` read off ``o = act(z)`` (code 0, no activation: ``a``)."""
    if code == 1:
        a = a * (1 - o * o)
    elif code == 2:
        a = a * o * (1 - o)
    elif code == 3:
        a = tl.where(o > 0, a, 0.0)
    return a


@triton.jit
def _fused_matmul_kernel(
    a_ptr, o_ptr, b_ptr, bias_ptr, c_ptr,
    M, N, K,
    stride_am, stride_ak, stride_om, stride_ok, stride_bk, stride_bn, stride_cm, stride_cn,
    scale,
    PROLOGUE: tl.constexpr, DERIVATIVE: tl.constexpr, EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        a_mask = (rm[:, None] < M) & (rk[None, :] < K)
        a = tl.load(a_ptr + rm[:, None] * stride_am + rk[None, :] * stride_ak, mask=a_mask, other=0.0)
        if PROLOGUE:
            o = tl.load(o_ptr + rm[:, None] * stride_om + rk[None, :] * stride_ok, mask=a_mask, other=0.0)
            a = _times_derivative(a, o, DERIVATIVE) * scale
        b_mask = (rk[:, None] < K) & (rn[None, :] < N)
        b = tl.load(b_ptr + rk[:, None] * stride_bk + rn[None, :] * stride_bn, mask=b_mask, other=0.0)
        acc += tl.dot(a, b, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
    acc = _activation(acc, EPILOGUE)
    c_mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn, acc.to(c_ptr.dtype.element_ty), mask=c_mask)


def fused_matmul(
    a: Tensor,
    b: Tensor,
    *,
    derivative_of: Tensor | None = None,
    derivative: str | None = None,
    scale: float = 1.0,
    bias: Tensor | None = None,
    activation: str | None = None,
) -> Tensor:
    """``act((scale · act'(derivative_of) ⊙ a) @ b + bias)`` for 2-D ``a`` (M×K) and ``b`` (K×N), any strides.

    ``derivative`` names the activation whose derivative (read off its output ``derivative_of``, shaped like
    ``a``) multiplies ``a`` on load; ``activation`` is applied to the result. Accumulates in float32; float32
    inputs use TF32 only where ``torch.backends.cuda.matmul.allow_tf32`` allows it, as torch's own matmul does.
    """
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2:
        raise ValueError(f"fused_matmul: inner sizes differ, a is {tuple(a.shape)} and b is {tuple(b.shape)}")
    if derivative is not None and derivative_of is None:
        raise ValueError("fused_matmul: `derivative` needs the activation's output as `derivative_of`")
    o = a if derivative_of is None else derivative_of
    c = torch.empty(m, n, device=a.device, dtype=a.dtype)
    tf32 = a.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    block_m, block_n, block_k = 64, 64, 32
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _fused_matmul_kernel[grid](
        a, o, b, bias if bias is not None else c, c,
        m, n, k,
        a.stride(0), a.stride(1), o.stride(0), o.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        float(scale),
        PROLOGUE=derivative is not None or scale != 1, DERIVATIVE=ACTIVATION_CODES[derivative],
        EPILOGUE=ACTIVATION_CODES[activation], HAS_BIAS=bias is not None,
        PRECISION="tf32" if tf32 else "ieee",
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
    )  # fmt: skip
    return c


class TritonDenseLinearization(DenseLinearization):
    """:class:`~mep_hf.kernels.dense.DenseLinearization` whose three products are each one fused kernel."""

    def _forward(self) -> Tensor:
        weight, bias = self.linear.weight.detach(), self.linear.bias
        rows = self.input.reshape(-1, weight.shape[1])
        out = fused_matmul(rows, weight.t(), bias=None if bias is None else bias.detach(), activation=self.activation)
        return out.reshape(*self.input.shape[:-1], weight.shape[0])

    def _rows(self, t: Tensor) -> Tensor:
        return t.to(self.output.dtype).reshape(-1, self.linear.out_features)

    def vjp(self, e: Tensor) -> Tensor:
        o, weight = self._rows(self.output), self.linear.weight.detach()
        rows = fused_matmul(self._rows(e), weight, derivative_of=o, derivative=self.activation)
        return rows.reshape(*self.input.shape[:-1], weight.shape[1])

    def parameter_grads(self, e: Tensor, scale: float) -> list[tuple[Tensor, Tensor]]:
        """The weight gradient ``(scale · act'(o) ⊙ e)ᵀ s`` and the bias gradient (the same against a column of
        ones), with ``act'(o) ⊙ e`` formed tile by tile on load, never in memory."""
        weight, bias = self.linear.weight, self.linear.bias
        e_t, o_t = self._rows(e).t(), self._rows(self.output).t()
        rows = self.input.reshape(-1, weight.shape[1])
        fused = dict(derivative_of=o_t, derivative=self.activation, scale=scale)
        pairs = []
        if weight.requires_grad:
            pairs.append((weight, fused_matmul(e_t, rows, **fused)))
        if bias is not None and bias.requires_grad:
            ones = torch.ones(rows.shape[0], 1, device=rows.device, dtype=rows.dtype)
            pairs.append((bias, fused_matmul(e_t, ones, **fused).reshape(-1)))
        return pairs
