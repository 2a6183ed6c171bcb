"""KVBatch: left-padded rows that join (concatenate) and leave (filter) between decode steps.

Each row of a batch must keep computing exactly what the model computes for that sequence on
its own, whatever other rows share the batch."""

from __future__ import annotations

import pytest
import torch

from chatllm_engine.batch import KVBatch, decode, prefill

PROMPTS = [[5, 6], [7, 8, 9, 10, 11, 12, 13], [14, 15, 16, 17], [18, 19, 20, 21, 22], [23, 24, 25]]
ATOL = 1e-4


def last_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """Next-token logits of one unpadded sequence, without any cache."""
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1]


def assert_consistent(batch: KVBatch) -> None:
    """Every tensor of the batch agrees on rows and columns; masks are contiguous on the right."""
    for keys, values in batch.kv:
        assert keys.shape[0] == values.shape[0] == batch.size
        assert keys.shape[2] == values.shape[2] == batch.capacity >= batch.length
    assert batch.positions.shape == (batch.size,)
    assert batch.slots == batch.size * batch.capacity
    for row in batch.attention_mask.tolist():
        ones = sum(row)
        assert row == [0] * (len(row) - ones) + [1] * ones, "padding must stay on the left"


def grow(model: torch.nn.Module, batch: KVBatch, logits: torch.Tensor, histories: list[list[int]],
         steps: int) -> tuple[KVBatch, torch.Tensor]:
    """Decode greedily `steps` times, appending the fed tokens to each row's history."""
    for _ in range(steps):
        tokens = logits.argmax(-1).tolist()
        for history, token in zip(histories, tokens):
            history.append(token)
        batch, logits = decode(model, batch, tokens)
    return batch, logits


def test_prefill_left_pads_and_matches_unpadded_sequences(tiny_model: torch.nn.Module) -> None:
    batch, logits = prefill(tiny_model, PROMPTS)

    assert_consistent(batch)
    assert (batch.size, batch.length) == (5, 7)
    assert batch.attention_mask.sum(1).tolist() == [len(p) for p in PROMPTS]
    assert batch.positions.tolist() == [len(p) for p in PROMPTS]
    for row, prompt in enumerate(PROMPTS):
        torch.testing.assert_close(logits[row], last_logits(tiny_model, prompt), atol=ATOL, rtol=0)


def test_decode_adds_one_column_and_advances_positions(tiny_model: torch.nn.Module) -> None:
    batch, logits = prefill(tiny_model, PROMPTS[:3])
    histories = [list(p) for p in PROMPTS[:3]]

    grown, logits = grow(tiny_model, batch, logits, histories, steps=3)

    assert_consistent(grown)
    assert grown.length == batch.length + 3
    assert grown.positions.tolist() == [len(h) for h in histories]
    for row, history in enumerate(histories):
        torch.testing.assert_close(logits[row], last_logits(tiny_model, history), atol=ATOL, rtol=0)


def test_filter_keeps_the_chosen_rows_in_order(tiny_model: torch.nn.Module) -> None:
    batch, logits = prefill(tiny_model, PROMPTS)
    histories = [list(p) for p in PROMPTS]
    batch, logits = grow(tiny_model, batch, logits, histories, steps=2)

    kept = batch.filter([4, 0, 2])
    kept_histories = [histories[4], histories[0], histories[2]]
    tokens = logits[[4, 0, 2]].argmax(-1).tolist()
    for history, token in zip(kept_histories, tokens):
        history.append(token)
    kept, next_logits = decode(tiny_model, kept, tokens)

    assert_consistent(kept)
    assert kept.positions.tolist() == [len(h) for h in kept_histories]
    for row, history in enumerate(kept_histories):
        torch.testing.assert_close(next_logits[row], last_logits(tiny_model, history), atol=ATOL, rtol=0)


def test_filter_trims_columns_that_are_padding_in_every_remaining_row(tiny_model: torch.nn.Module) -> None:
    batch, logits = prefill(tiny_model, PROMPTS[:3])  # lengths 2, 7, 4 -> 7 columns
    batch, _ = grow(tiny_model, batch, logits, [list(p) for p in PROMPTS[:3]], steps=1)  # 8 columns

    without_longest = batch.filter([0, 2])

    assert_consistent(without_longest)
    assert without_longest.length == 4 + 1  # the longest remaining row: 4 prompt tokens + 1 decoded
    assert without_longest.attention_mask[:, 0].any(), "a leading all-padding column was kept"
    assert without_longest.slots == 2 * 5
    assert batch.filter([1]).attention_mask.tolist() == [[1] * 8]


def test_filter_then_concatenate_keeps_every_row_consistent(tiny_model: torch.nn.Module) -> None:
    running, logits = prefill(tiny_model, PROMPTS[:3])
    histories = [list(p) for p in PROMPTS[:3]]
    running, logits = grow(tiny_model, running, logits, histories, steps=2)
    pending = logits.argmax(-1).tolist()

    # Row 1 (the longest) finishes; two new prompts join, one longer than what is left.
    running = running.filter([0, 2])
    pending = [pending[0], pending[2]]
    histories = [histories[0], histories[2]]
    joining = [list(range(30, 42)), [43, 44]]
    newcomers, new_logits = prefill(tiny_model, joining)
    merged = KVBatch.concatenate([running, newcomers])

    assert_consistent(merged)
    assert merged.size == 4
    assert merged.length == max(running.length, newcomers.length)
    assert merged.positions.tolist() == [len(histories[0]), len(histories[1]), 12, 2]

    tokens = pending + new_logits.argmax(-1).tolist()
    histories = histories + [list(j) for j in joining]
    for history, token in zip(histories, tokens):
        history.append(token)
    merged, logits = decode(tiny_model, merged, tokens)
    merged, logits = grow(tiny_model, merged, logits, histories, steps=2)

    assert_consistent(merged)
    for row, history in enumerate(histories):
        torch.testing.assert_close(logits[row], last_logits(tiny_model, history), atol=ATOL, rtol=0)


def test_concatenate_of_one_batch_is_that_batch(tiny_model: torch.nn.Module) -> None:
    batch, _ = prefill(tiny_model, PROMPTS[:2])

    assert KVBatch.concatenate([batch]) is batch


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_concatenate_pads_the_shorter_batch_on_the_left(tiny_model: torch.nn.Module, order: list[int]) -> None:
    parts = [prefill(tiny_model, [PROMPTS[0]])[0], prefill(tiny_model, [PROMPTS[1]])[0]]  # 2 and 7 tokens
    parts = [parts[i] for i in order]

    merged = KVBatch.concatenate(parts)

    assert_consistent(merged)
    assert merged.length == 7
    assert merged.attention_mask.sum(1).tolist() == [parts[0].length, parts[1].length]
    short = order.index(0)
    for keys, _ in merged.kv:
        assert torch.count_nonzero(keys[short, :, :5]) == 0, "the padding columns must be zeros"
