"""Per-request sampling for a whole batch in one call.

Rows differ in their parameters, so the fast path (all greedy, no penalties) is one argmax,
and only the rows that need them pay for penalties, top-k/top-p sorting and seeded draws.
"""

from __future__ import annotations

from typing import Callable

import torch

from .types import Logprob, SamplingParams, TokenLogprobs


class SequenceSampler:
    """Sampling state of one sequence: its parameters, its generator and token counts."""

    def __init__(self, params: SamplingParams, prompt_ids: list[int], engine_generator: torch.Generator,
                 device: torch.device) -> None:
        self.params = params
        self.generator = engine_generator
        if params.seed is not None:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(params.seed)
        self._prompt_ids = torch.tensor(prompt_ids, dtype=torch.long, device=device)
        self._output_ids: list[int] = []

    @property
    def needs_penalty(self) -> bool:
        p = self.params
        return p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0

    def record(self, token_id: int) -> None:
        self._output_ids.append(token_id)

    def apply_penalties(self, logits: torch.Tensor) -> torch.Tensor:
        """Penalise one row of logits in place (HF repetition, OpenAI presence/frequency)."""
        p = self.params
        device = logits.device
        if p.repetition_penalty != 1.0:
            seen = torch.cat([self._prompt_ids, torch.tensor(self._output_ids, dtype=torch.long, device=device)])
            scores = logits.gather(0, seen)
            scores = torch.where(scores > 0, scores / p.repetition_penalty, scores * p.repetition_penalty)
            logits.scatter_(0, seen, scores)
        if self._output_ids and (p.presence_penalty != 0.0 or p.frequency_penalty != 0.0):
            out = torch.tensor(self._output_ids, dtype=torch.long, device=device)
            counts = torch.zeros_like(logits).scatter_add_(0, out, torch.ones_like(out, dtype=logits.dtype))
            logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
        return logits


def _filter_top_k_top_p(row: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0 and top_k < row.numel():
        kth = torch.topk(row, top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(row, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix reaching top_p
        row = row.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return row


def sample_next_tokens(logits: torch.Tensor, samplers: list[SequenceSampler],
                       suppress: list[list[int]] | None = None) -> list[int]:
    """Pick one token per row of `logits` [B, V] (float32) following each row's sampler.

    `suppress` lists, per row, token ids that must not be chosen (EOS before min_tokens).
    """
    logits = logits.float()
    special = [i for i, s in enumerate(samplers)
               if s.needs_penalty or not s.params.greedy or (suppress and suppress[i])]
    if not special:
        return logits.argmax(-1).tolist()
    chosen = logits.argmax(-1)
    for i in special:
        sampler = samplers[i]
        row = logits[i].clone()
        if suppress and suppress[i]:
            row[suppress[i]] = float("-inf")
        if sampler.needs_penalty:
            row = sampler.apply_penalties(row)
        p = sampler.params
        if p.greedy:
            chosen[i] = row.argmax()
            continue
        row = _filter_top_k_top_p(row / p.temperature, p.top_k, p.top_p)
        probs = row.softmax(-1)
        chosen[i] = torch.multinomial(probs, 1, generator=sampler.generator)[0]
    return chosen.tolist()


def token_logprobs(logits: torch.Tensor, rows: list[int], tokens: list[int], top_n: list[int],
                   decode: Callable[[int], str]) -> list[TokenLogprobs]:
    """Log-probabilities of the chosen tokens, and of the `top_n` most likely, for `rows` only.

    Computed from the model's raw distribution (before penalties, temperature and top-k/top-p,
    as vLLM's default `raw_logprobs`), so they do not depend on how the token was drawn.

    Args:
        logits: [B, V] logits of the whole batch.
        rows: the rows that asked for logprobs (the others cost nothing).
        tokens: the token chosen for each of the B rows.
        top_n: for each of `rows`, how many of the most likely tokens to report.
        decode: token id -> its text.
    """
    logprobs = torch.log_softmax(logits[rows].float(), dim=-1)
    chosen = torch.tensor([tokens[r] for r in rows], dtype=torch.long, device=logprobs.device)
    chosen_lp = logprobs.gather(1, chosen[:, None])
    ranks = ((logprobs > chosen_lp).sum(-1) + 1).tolist()
    sampled_lp = chosen_lp[:, 0].tolist()
    most = max(top_n)
    top_lp: list[list[float]] = [[] for _ in rows]
    top_ids: list[list[int]] = [[] for _ in rows]
    if most:
        values, ids = logprobs.topk(most, dim=-1)
        top_lp, top_ids = values.tolist(), ids.tolist()
    result = []
    for i, row in enumerate(rows):
        sampled = Logprob(tokens[row], sampled_lp[i], int(ranks[i]), decode(tokens[row]))
        top = tuple(Logprob(t, lp, rank, decode(t)) for rank, (t, lp) in
                    enumerate(zip(top_ids[i][:top_n[i]], top_lp[i][:top_n[i]]), start=1))
        result.append(TokenLogprobs(sampled, top))
    return result
