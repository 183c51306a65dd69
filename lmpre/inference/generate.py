"""Token-level decoding over the backbone: continue a prompt (causal LM), write out a T5 decoder's answer,
or rank the candidates for masked positions (BERT). Token ids in, token ids out: no tokenizer here.

`generate` yields each step's tokens as soon as they are chosen, so a caller can stream them. With the KV
cache (the default) each step runs the model on one new token; `use_cache=False` recomputes the whole
sequence at every step instead, the reference the cache is tested (and benchmarked) against.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from lmpre.inference.kv_cache import KVCache
from lmpre.inference.sampling import Sampler
from lmpre.models import Transformer


@torch.no_grad()
def generate(
    model: Transformer,
    prompt: Tensor,
    *,
    max_new_tokens: int,
    sampler: Sampler | None = None,
    stop_tokens: Collection[int] = (),
    generator: torch.Generator | None = None,
    encoder_input: Tensor | None = None,
    use_cache: bool = True,
) -> Iterator[Tensor]:
    """Yield (B,) tokens, one step at a time, that continue `prompt` (B, T).

    A causal LM continues `prompt`; an encoder-decoder (T5) reads `encoder_input` (B, S) and its decoder
    continues `prompt` (its start token, usually). A row stops at its first token in `stop_tokens` (and
    repeats it while other rows go on); decoding ends when every row has stopped, after `max_new_tokens`
    steps, or when the sequence fills the model's max_seq_len positions. `sampler` defaults to greedy."""
    sampler = Sampler(temperature=0.0) if sampler is None else sampler
    memory = _encode(model, encoder_input)
    batch, length = prompt.shape
    if length < 1:
        raise ValueError("the prompt must hold at least one token (a decoder starts from its start token)")
    if length > model.config.max_seq_len:
        raise ValueError(f"the prompt has {length} tokens, more than max_seq_len={model.config.max_seq_len}")
    steps = min(max_new_tokens, model.config.max_seq_len - length + 1)  # the last token needs no position
    cache = KVCache.for_model(model, batch, length + steps - 1) if use_cache else None
    stops = torch.tensor(sorted(stop_tokens), dtype=torch.long, device=prompt.device)
    stopped = torch.zeros(batch, dtype=torch.bool, device=prompt.device)
    tokens, step_input = prompt, prompt
    for step in range(steps):
        logits = model(step_input, cache=cache) if memory is None else model.decode(step_input, memory, cache)
        token = sampler(logits[:, -1], generator)
        token = torch.where(stopped, tokens[:, -1], token)
        yield token
        stopped |= torch.isin(token, stops)
        if stopped.all() or step == steps - 1:
            return
        tokens = torch.cat((tokens, token[:, None]), dim=1)
        step_input = token[:, None] if cache is not None else tokens


def _encode(model: Transformer, encoder_input: Tensor | None) -> Tensor | None:
    if model.decoder is None:
        if not model.config.causal:
            raise ValueError("generate() needs a causal LM or an encoder-decoder, not a bidirectional encoder")
        if encoder_input is not None:
            raise ValueError("encoder_input is for encoder-decoder models: a causal LM continues its prompt")
        return None
    if encoder_input is None:
        raise ValueError("an encoder-decoder model generates from an `encoder_input`")
    return model.encode(encoder_input)


@torch.no_grad()
def masked_candidates(
    model: Transformer, idx: Tensor, mask_id: int, *, top_k: int = 5, exclude: Collection[int] = ()
) -> tuple[Tensor, Tensor, Tensor]:
    """For each `mask_id` in `idx` (1, T): (positions (M,), probabilities (M, k), token ids (M, k)) of its
    `top_k` most likely fillers, in one forward pass of a masked LM. `exclude` (special tokens, say) are never
    candidates."""
    if idx.size(0) != 1:
        raise ValueError("masked_candidates() takes one sequence (1, T)")
    positions = (idx[0] == mask_id).nonzero().squeeze(-1)
    logits = model(idx)[0, positions].float()
    if exclude:
        logits[:, torch.tensor(sorted(exclude), dtype=torch.long, device=logits.device)] = float("-inf")
    probs, ids = F.softmax(logits, dim=-1).topk(min(top_k, logits.size(-1)), dim=-1)
    return positions, probs, ids
