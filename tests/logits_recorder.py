"""Record the logits each generated token was sampled from, by wrapping an executor's sampler."""

import torch

from fathom.runtime.reference import ReferenceExecutor


def record_logits(executor) -> dict[str, list[torch.Tensor]]:
    """Request id -> the float32 CPU logits each of its tokens was sampled from (rows of finished
    requests in the reference executor's static batch are skipped)."""
    seen: dict[str, list[torch.Tensor]] = {}
    if isinstance(executor, ReferenceExecutor):
        sample = executor._sample

        def recording(logits):
            for row, r in enumerate(executor.batch):
                if not executor.done[row]:
                    seen.setdefault(r.request_id, []).append(logits[row].to("cpu", torch.float32, copy=True))
            return sample(logits)
        executor._sample = recording
    else:
        sample = executor.runner.sample

        def recording(logits, seqs):
            for row, s in enumerate(seqs):
                seen.setdefault(s.id, []).append(logits[row].to("cpu", torch.float32, copy=True))
            return sample(logits, seqs)
        executor.runner.sample = recording
    return seen
