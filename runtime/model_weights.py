"""What a forward of fathom.runtime.model.Qwen2Model reads, looked up once (`Qwen2Model.weights`):
norm weights and each linear as a plain callable; and the fusion of each MLP's fc and gate weights
into one tensor (`fuse_gate_up`), so that the MLP input takes one matmul.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Callable, NamedTuple

import torch
from torch import nn

if TYPE_CHECKING:
    from .model import Qwen2Model, QwenMLP

Linear = Callable[[torch.Tensor], torch.Tensor]
GatedLinears = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # h -> (mlp.fc(h), mlp.gate(h))
LinearObserver = Callable[[str, torch.Tensor], None]  # (module name, its input)


class LayerWeights(NamedTuple):
    input_norm: torch.Tensor
    qkv: Linear
    dense: Linear
    post_norm: torch.Tensor
    fc_gate: GatedLinears
    proj: Linear


class ModelWeights(NamedTuple):
    layers: tuple[LayerWeights, ...]
    embedding: torch.Tensor
    final_norm: torch.Tensor
    lm_head: Linear
    eps: torch.Tensor  # rms_norm_eps, 0-d float32 on the model's device
    width: torch.Tensor  # hidden_size, 0-d float32 on the model's device (`rms_norm`)


def _plain(module: nn.Module) -> bool:
    return type(module) is nn.Linear


def as_linear(module: nn.Module) -> Linear:
    """`module` as a plain callable on 2-D inputs (N, in): an nn.Linear's tensors bound to torch.mm, or
    torch.addmm with its bias (what F.linear runs on 2-D inputs, bit for bit, without its ~1 us of
    argument handling per call); any other module's forward."""
    if _plain(module):
        wt = module.weight.t()
        return partial(torch.mm, mat2=wt) if module.bias is None else partial(torch.addmm, module.bias, mat2=wt)
    return module.forward


def gated_linears(mlp: QwenMLP) -> GatedLinears:
    """h -> (fc(h), gate(h)): one matmul and two views of its output when the MLP is fused."""
    w = mlp.fused_weight()
    if w is not None:
        wt = w.t()
        return lambda h: torch.mm(h, wt).chunk(2, -1)
    fc, gate = as_linear(mlp.fc), as_linear(mlp.gate)
    return lambda h: (fc(h), gate(h))


def fuse_gate_up(model: Qwen2Model) -> None:
    """Make each layer's mlp.fc and mlp.gate weights (bias-free nn.Linear on both) the two halves of
    one (2I, H) tensor in fc's layout (row- or column-major), so that the MLP input takes one matmul
    (`gated_linears`). The parameters stay, now views: state_dict names and values are unchanged and
    no second copy is held. Quantized linears keep their own calls. Idempotent."""
    for layer in model.transformer.layers:
        mlp = layer.mlp
        fc, gate = mlp.fc, mlp.gate
        if mlp.fused_weight() is not None or not (_plain(fc) and _plain(gate)) or fc.bias is not None \
                or gate.bias is not None:
            continue
        a, b = fc.weight.data, gate.weight.data
        if a.dim() != 2 or a.shape != b.shape or a.dtype != b.dtype:
            continue
        w = torch.cat((a.t(), b.t()), 1).t() if a.stride(0) < a.stride(1) else torch.cat((a, b))
        fc.weight.data, gate.weight.data = w[:a.shape[0]], w[a.shape[0]:]
        mlp.gate_up = w


def observed(fn: Callable, observer: LinearObserver | None, *names: str) -> Callable:
    """`fn` whose last argument (a linear's input) is first handed to `observer` under each of
    `names`; `fn` itself without an observer."""
    if observer is None:
        return fn

    def call(*args: torch.Tensor):
        for name in names:
            observer(name, args[-1])
        return fn(*args)
    return call
