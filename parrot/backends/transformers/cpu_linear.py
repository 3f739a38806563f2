"""Pre-packed linear layers for bf16 inference on CPU.

``nn.Linear`` in bfloat16 on a CPU goes through oneDNN, which lays the weight out for its kernels
again on every call. Laying each weight out once at load time (``torch.ops.mkldnn``'s
``_reorder_linear_weight`` / ``_linear_pointwise``, the ops PyTorch's own compiler uses for frozen
CPU models) made a SmolLM2 decode step about 25% faster on the 2-core development machine
(39.5 -> 30.2 ms for one token, 102 -> 88 ms for a 200-token prompt).

Inference only: the packed copy does not follow later changes to ``weight``. Anything unexpected
(an op missing from the torch build, a mismatch in the self-check) leaves the model as it was.
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch

log = logging.getLogger(__name__)


def _packed_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    shape = x.shape
    y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), self._parrot_packed, self.bias, "none", [], "")
    return y.reshape(*shape[:-1], y.shape[-1])


def pack_linear_layers(model: Any, batch_hint: int = 16) -> int:
    """Packs every ``nn.Linear`` of a bf16 CPU model; returns how many (0 when not applicable)."""
    params = list(model.parameters())
    if not params or params[0].device.type != "cpu" or params[0].dtype != torch.bfloat16:
        return 0
    if not torch.backends.mkldnn.is_available():
        return 0
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.inference_mode():
            for m in linears:
                m._parrot_packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), batch_hint)
            probe = linears[0]
            x = torch.randn(3, probe.in_features, dtype=torch.bfloat16)
            want = torch.nn.functional.linear(x, probe.weight, probe.bias).float()
            got = _packed_forward(probe, x).float()
            if not torch.allclose(got, want, rtol=2e-2, atol=2e-2):
                raise RuntimeError("packed linear disagrees with nn.Linear")
    except Exception as e:  # an optimisation: never fail loading for it
        for m in linears:
            m.__dict__.pop("_parrot_packed", None)
        log.warning("linear layers left unpacked", extra={"reason": str(e)[:200]})
        return 0
    for m in linears:
        m.forward = types.MethodType(_packed_forward, m)
    return len(linears)
