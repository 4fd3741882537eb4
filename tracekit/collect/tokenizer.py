"""A deterministic byte-level tokenizer for the tiny presets (they ship no tokenizer files).

Token ids: 0 padding, 1 beginning of sequence, 2 end of sequence, then ``3 + byte`` for each UTF-8
byte of the text. Batches are padded on the left, as decoder-only generation needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
BYTE_OFFSET = 3
#: Smallest vocabulary that holds every id this tokenizer emits.
MIN_VOCAB = BYTE_OFFSET + 256


@dataclass(frozen=True, kw_only=True)
class EncodedBatch:
    """A left-padded batch: ``input_ids`` and ``attention_mask`` are [batch, length] int64."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    #: Tokens of each prompt (without padding).
    prompt_tokens: tuple[int, ...]


class ByteTokenizer:
    """UTF-8 bytes as tokens, with a BOS token in front and left padding."""

    pad_token_id = PAD_ID
    bos_token_id = BOS_ID
    eos_token_id = EOS_ID

    def __init__(self, *, max_prompt_tokens: int | None = None) -> None:
        self.max_prompt_tokens = max_prompt_tokens

    def encode(self, text: str) -> list[int]:
        ids = [BOS_ID, *(BYTE_OFFSET + b for b in text.encode("utf-8"))]
        if self.max_prompt_tokens is not None:
            ids = ids[: self.max_prompt_tokens]
        return ids

    def decode(self, ids: list[int]) -> str:
        data = bytes(i - BYTE_OFFSET for i in ids if BYTE_OFFSET <= i < BYTE_OFFSET + 256)
        return data.decode("utf-8", errors="replace")

    def batch(self, texts: list[str]) -> EncodedBatch:
        rows = [self.encode(t) for t in texts]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = r
            mask[i, width - len(r) :] = 1
        return EncodedBatch(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            prompt_tokens=tuple(len(r) for r in rows),
        )
