"""Talk to a trained model: `python -m lmpre.generate ckpt_path=PATH prompt="…"` (or `prompts_file=PATH`).

A causal LM continues each prompt, streamed to the terminal as it is sampled (KV-cache decoding,
lmpre.inference); a span-corruption (T5) model fills each gap of the prompt marked by a sentinel
(`<extra_id_0>`, `<extra_id_1>`, …) and prints the filled text; a masked LM lists the likeliest tokens for each
`<mask>` with their probabilities. The model and its tokenizer come from the checkpoint (tokenizer.json beside
it). Wiring only: the decoding itself is in lmpre.inference.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import hydra
import torch
from omegaconf import DictConfig
from tokenizers import Tokenizer

from lmpre import checkpoint
from lmpre.errors import ConfigError, LmpreError
from lmpre.inference import Sampler, generate, masked_candidates
from lmpre.models import Transformer
from lmpre.objectives import CausalLM, MaskedLM, PretrainingObjective, SpanCorruption


def read_prompts(cfg: DictConfig) -> list[str]:
    if cfg.get("prompt") is not None and cfg.get("prompts_file") is not None:
        raise ConfigError("pass prompt=… or prompts_file=…, not both")
    if cfg.get("prompt") is not None:
        return [str(cfg.prompt)]
    if cfg.get("prompts_file") is None:
        raise ConfigError('pass a prompt: prompt="The history of" or prompts_file=FILE (one prompt per line)')
    path = Path(str(cfg.prompts_file))
    if not path.is_file():
        raise ConfigError(f"prompts_file={path} does not exist: pass a text file with one prompt per line")
    prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"prompts_file={path} holds no prompt: write one prompt per line")
    return prompts


def load(cfg: DictConfig) -> tuple[PretrainingObjective, Tokenizer]:
    if not cfg.get("ckpt_path"):
        raise ConfigError("pass the checkpoint to generate with: ckpt_path=RUN/checkpoints/last.ckpt")
    path = Path(str(cfg.ckpt_path))
    checkpoint.inspect(path)  # a missing or unreadable file: an error naming ckpt_path
    objective, tokenizer = checkpoint.load_objective(path), checkpoint.load_tokenizer(path)
    device = str(cfg.get("device", "auto"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return objective.to(device).eval(), tokenizer


def encode(tokenizer: Tokenizer, text: str, model: Transformer) -> torch.Tensor:
    ids = tokenizer.encode(text).ids
    if len(ids) > model.config.max_seq_len:
        raise ConfigError(
            f"the prompt has {len(ids)} tokens, more than the model's max_seq_len={model.config.max_seq_len}"
        )
    return torch.tensor([ids], device=model.embed.weight.device)


def continue_text(objective: CausalLM, tokenizer: Tokenizer, prompt: str, cfg: DictConfig, out: TextIO) -> None:
    """Stream the sampled continuation of `prompt`, stopping at end-of-text."""
    eot = int(objective.special_token("eot"))
    idx = encode(tokenizer, prompt, objective.model) if prompt else torch.tensor([[eot]], device=objective.device)
    out.write(prompt)
    ids: list[int] = []
    printed = ""
    tokens = generate(
        objective.model,
        idx,
        max_new_tokens=int(cfg.max_new_tokens),
        sampler=sampler(cfg),
        stop_tokens={eot},
        generator=seeded(cfg, objective.device),
    )
    for token in tokens:
        if int(token) == eot:
            break
        ids.append(int(token))
        text = tokenizer.decode(ids)
        if not text.endswith("\ufffd"):  # a character whose bytes are not all sampled yet
            out.write(text[len(printed) :])
            out.flush()
            printed = text
    out.write(tokenizer.decode(ids)[len(printed) :] + "\n")
    out.flush()


def fill_spans(objective: SpanCorruption, tokenizer: Tokenizer, prompt: str, cfg: DictConfig) -> str:
    """The prompt with each sentinel replaced by the span the decoder writes after that sentinel."""
    idx = encode(tokenizer, prompt, objective.model)
    sentinels = [int(s) for s in objective.special_token("sentinels")]
    gaps = [t for t in idx[0].tolist() if t in sentinels]
    if not gaps:
        raise ConfigError(
            f"the prompt {prompt!r} has no gap to fill: mark each gap with a sentinel, <extra_id_0>, <extra_id_1>, …"
        )
    # The decoder writes "<extra_id_0> span <extra_id_1> span …": a sentinel not in the prompt, or end-of-text,
    # means it is done.
    stops = {int(objective.special_token("eot"))} | (set(sentinels) - set(gaps))
    start = torch.tensor([[objective.start_id]], device=objective.device)
    written = [
        int(token)
        for token in generate(
            objective.model,
            start,
            max_new_tokens=int(cfg.max_new_tokens),
            sampler=sampler(cfg),
            stop_tokens=stops,
            generator=seeded(cfg, objective.device),
            encoder_input=idx,
        )
    ]
    spans = spans_by_sentinel(written, gaps, stops)
    filled = [t for token in idx[0].tolist() for t in (spans.get(token, []) if token in gaps else [token])]
    return tokenizer.decode(filled)


def spans_by_sentinel(written: list[int], gaps: list[int], stops: set[int]) -> dict[int, list[int]]:
    """The tokens a T5 decoder wrote after each sentinel of `gaps` ("<extra_id_0> span <extra_id_1> span …"), up
    to its first token in `stops`."""
    spans: dict[int, list[int]] = {}
    current: list[int] | None = None
    for token in written:
        if token in stops:
            break
        if token in gaps:
            current = spans.setdefault(token, [])
        elif current is not None:
            current.append(token)
    return spans


def mask_candidates(objective: MaskedLM, tokenizer: Tokenizer, prompt: str, cfg: DictConfig) -> Iterator[str]:
    """The prompt with each `<mask>` filled by its likeliest token, then one line of candidates per `<mask>`."""
    idx = encode(tokenizer, prompt, objective.model)
    mask_id = int(objective.mask_id)
    if not (idx == mask_id).any():
        raise ConfigError(f"the prompt {prompt!r} has no <mask> to fill: write <mask> where a token is missing")
    special = [int(i) for i in objective.special_ids.tolist()]
    positions, probs, ids = masked_candidates(objective.model, idx, mask_id, top_k=int(cfg.candidates), exclude=special)
    best = idx[0].clone()
    best[positions] = ids[:, 0]
    yield tokenizer.decode(best.tolist())
    for n, (row_probs, row_ids) in enumerate(zip(probs.tolist(), ids.tolist(), strict=True), 1):
        ranked = ", ".join(f"{tokenizer.decode([i])!r} {p:.1%}" for p, i in zip(row_probs, row_ids, strict=True))
        yield f"  <mask> {n}: {ranked}"


def sampler(cfg: DictConfig) -> Sampler:
    try:
        return Sampler(float(cfg.temperature), cfg.get("top_k"), cfg.get("top_p"))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def seeded(cfg: DictConfig, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(cfg.seed))


def run(cfg: DictConfig, out: TextIO = sys.stdout) -> None:
    """Everything `python -m lmpre.generate` does, writing to `out`."""
    prompts = read_prompts(cfg)
    sampler(cfg)  # a wrong setting is an error before the model loads
    objective, tokenizer = load(cfg)
    for i, prompt in enumerate(prompts):
        if i:
            out.write("\n")
        if isinstance(objective, CausalLM):
            continue_text(objective, tokenizer, prompt, cfg, out)
        elif isinstance(objective, SpanCorruption):
            out.write(fill_spans(objective, tokenizer, prompt, cfg) + "\n")
        elif isinstance(objective, MaskedLM):
            out.writelines(line + "\n" for line in mask_candidates(objective, tokenizer, prompt, cfg))
        else:
            raise ConfigError(f"{cfg.ckpt_path} holds a {type(objective).__name__}, which lmpre.generate cannot use")
        out.flush()


@hydra.main(version_base="1.3", config_path="pkg://lmpre.conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    try:
        with torch.inference_mode():
            run(cfg)
    except LmpreError as err:
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
