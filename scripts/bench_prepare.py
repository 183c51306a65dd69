"""How fast is data preparation, and does its memory stay flat as the corpus grows? The whole pipeline (normalize,
Gopher quality and repetition filters, exact + near dedup, BPE, shards) against the bare tokenizer on the same text,
each in a fresh process, at 1x (25 MB of text: all of it once) and 10x (250 MB).

    python scripts/bench_prepare.py --scale 1 10 [--workdir /tmp/lmpre-bench-prepare] [--shared ../shared/data]
        [--bpe-in-pipeline] [--repeats 2]

The text is real: the 20 Project Gutenberg books (license header and footer stripped) and WikiText-2 raw from
../shared/data, cut into paragraphs. Replica r re-assembles documents from those paragraphs in an order shuffled
with seed r (40 paragraphs per book document, 8 per wiki document). A replica is then as real as the 1x corpus
(same text, same bytes per token), but none of its documents shares more than a chance paragraph with a document of
another replica, so exact and near-duplicate removal keep every replica: the 10x point really is 10x the work. (A
unique id line per copy would not do: the copies would stay near duplicates and dedup would drop 9 of every 10; nor
would shuffling paragraphs inside each document: word 5-grams sit inside paragraphs, so the copies stay near
duplicates.) The report prints how many documents dedup removed at each point, so this can be checked.

Per point, in one run: (a) the BPE of --vocab-size trained on the corpus (at most 256 MiB of it, as
`data.tokenizer.kind=bpe` would), its time on a line of its own; (b) `prepare_dataset` with the recipe of
`data=jsonl` (conf/data/jsonl.yaml: normalize, gopher_quality, gopher_repetition, exact + near dedup) given that
tokenizer (`data.tokenizer.kind=file`), MB/s of input text over the whole call; (c) the same tokenizer's
`Tokenizer.encode_batch` over the same texts in batches of 512 documents, MB/s of encoding time (reading the file
not counted), and for reference `encode_batch_fast` (no offsets, which lmpre calls) on the same batch right after
(its cache warm, so a little flattered). The issue's pipeline is "cleaning, dedup, tokenizing, writing": training a
tokenizer is not in it, so (b) gets a trained one. With --bpe-in-pipeline, (a) is skipped and (b) trains the BPE
itself (`kind=bpe`, as data=jsonl does by default): the ratio then counts the training too.
Peak memory: each child's own peak RSS (`ru_maxrss`), its workers' largest, and the process tree's peak PSS,
sampled from /proc every 0.2 s (PSS counts pages shared by forked workers once).
Each point runs (b) and (c) --repeats times, alternated, and keeps the fastest of each: the load of a shared machine
changes over minutes, and a slower run of either alone would move the ratio.
Targets: pipeline MB/s >= 0.7 x tokenizer MB/s; peak memory at 10x <= 1.2 x that at 1x.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BOOK_PARAGRAPHS = 40  # per book document: ~16 KB
WIKI_PARAGRAPHS = 8  # per wiki document: ~5 KB
ENCODE_BATCH = 512  # documents per encode_batch call, as lmpre.data.shards writes them
PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


# --- the corpus ----------------------------------------------------------------------------------------------------


def paragraphs(shared: Path) -> tuple[list[str], list[str]]:
    """The paragraphs of the Gutenberg books (bodies only) and of WikiText-2 raw (headings left out)."""
    from lmpre.data.sources.base import WorkUnit
    from lmpre.data.sources.gutenberg import Gutenberg

    books = Gutenberg(str(shared / "gutenberg"))
    book_paragraphs = [
        paragraph.strip()
        for path in books.files()
        for document in books.read(WorkUnit(str(path)), Counter())
        for paragraph in PARAGRAPH_BREAK.split(document.text)
        if paragraph.strip()
    ]
    wiki_paragraphs = [
        line.strip()
        for path in sorted((shared / "wikitext-2-raw").glob("wiki.*.raw"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith(" = ")
    ]
    return book_paragraphs, wiki_paragraphs


def replica(pools: tuple[list[str], list[str]], seed: int) -> list[str]:
    """The documents of one replica: every paragraph once, shuffled with `seed`, grouped into documents."""
    rng = random.Random(seed)
    documents = []
    for pool, size in zip(pools, (BOOK_PARAGRAPHS, WIKI_PARAGRAPHS), strict=True):
        order = pool[:]
        rng.shuffle(order)
        documents += ["\n\n".join(order[i : i + size]) for i in range(0, len(order), size)]
    return documents


def write_corpus(path: Path, pools: tuple[list[str], list[str]], scale: int) -> dict[str, int]:
    """`scale` replicas as one JSON Lines file; returns its documents and UTF-8 bytes of text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    documents = text_bytes = 0
    with path.open("w", encoding="utf-8") as file:
        for seed in range(scale):
            for text in replica(pools, seed):
                file.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                documents += 1
                text_bytes += len(text.encode())
    return {"documents": documents, "text_bytes": text_bytes}


# --- the children: one measurement each, in a fresh process -------------------------------------------------------


def child_bpe(corpus: Path, out: Path, vocab_size: int) -> dict[str, Any]:
    from lmpre.data import TokenizerSpec
    from lmpre.data.tokenizer import build_tokenizer

    def texts() -> Any:
        with corpus.open(encoding="utf-8") as file:
            for line in file:
                yield json.loads(line)["text"]

    start = time.perf_counter()
    tokenizer = build_tokenizer(TokenizerSpec(kind="bpe", vocab_size=vocab_size), texts())
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    return {"seconds": seconds, "tokenizer": str(out / "tokenizer.json")}


def child_pipeline(corpus: Path, out: Path, vocab_size: int, tokenizer: str | None) -> dict[str, Any]:
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    from lmpre.data import DataRecipe, TokenizerSpec, prepare_dataset, read_manifest
    from lmpre.data import pipeline as pipeline_module

    with initialize_config_module(config_module="lmpre.conf", version_base="1.3"):
        data = compose("train", ["data=jsonl"]).data
    recipe = DataRecipe(  # data=jsonl's source, filters and dedup, as the TokenDataModule builds them
        sources={"corpus": instantiate(data.sources.corpus, path=str(corpus))},
        filters=[instantiate(f) for f in data.filters.values() if f is not None],
        dedup=instantiate(data.dedup),
        tokenizer=TokenizerSpec(kind="file", path=tokenizer) if tokenizer else TokenizerSpec(vocab_size=vocab_size),
    )
    stages: Counter[str] = Counter()  # seconds per stage, timed around the pipeline's own functions
    for name in ("curate", "_deduplicate", "build_tokenizer", "write_token_shards"):
        setattr(pipeline_module, name, _timed(getattr(pipeline_module, name), name, stages))
    start = time.perf_counter()
    prepared = prepare_dataset(recipe, out / "cache", out / "prepared")
    seconds = time.perf_counter() - start
    manifest = read_manifest(prepared)
    assert manifest is not None
    report = manifest["sources"]["corpus"]["report"]
    return {
        "seconds": seconds,
        "stages": dict(stages),
        "tokenizer": str(prepared / "tokenizer.json"),
        "read_documents": report["read.documents"],
        "removed": {k: v for k, v in report.items() if k.startswith("removed.") and v},
        "kept_documents": sum(s["documents"] for s in manifest["splits"].values()),
        "tokens": sum(s["tokens"] for s in manifest["splits"].values()),
        "workers": os.cpu_count(),
    }


def _timed(function: Any, name: str, stages: Counter[str]) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            stages[name] += time.perf_counter() - start

    return timed


def child_tokenizer(corpus: Path, tokenizer_path: Path) -> dict[str, Any]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    seconds = fast_seconds = 0.0
    tokens = text_bytes = 0

    def encode(batch: list[str]) -> None:
        nonlocal seconds, fast_seconds, tokens, text_bytes
        text_bytes += sum(len(text.encode()) for text in batch)
        start = time.perf_counter()
        encodings = tokenizer.encode_batch(batch, add_special_tokens=False)
        seconds += time.perf_counter() - start
        tokens += sum(len(encoding.ids) for encoding in encodings)
        start = time.perf_counter()
        tokenizer.encode_batch_fast(batch, add_special_tokens=False)  # no offsets: what lmpre's shards call
        fast_seconds += time.perf_counter() - start

    batch: list[str] = []
    with corpus.open(encoding="utf-8") as file:  # streamed: memory stays that of one batch
        for line in file:
            batch.append(json.loads(line)["text"])
            if len(batch) == ENCODE_BATCH:
                encode(batch)
                batch = []
    if batch:
        encode(batch)
    return {"seconds": seconds, "fast_seconds": fast_seconds, "tokens": tokens, "text_bytes": text_bytes}


def child_main(args: argparse.Namespace) -> None:
    if args.child == "bpe":
        result = child_bpe(Path(args.corpus), Path(args.out), args.vocab_size)
    elif args.child == "pipeline":
        result = child_pipeline(Path(args.corpus), Path(args.out), args.vocab_size, args.tokenizer)
    else:
        result = child_tokenizer(Path(args.corpus), Path(args.tokenizer))
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    result["maxrss_mb"] = own.ru_maxrss / 1024
    result["children_maxrss_mb"] = workers.ru_maxrss / 1024
    result["cpu_seconds"] = own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime
    print("RESULT " + json.dumps(result))


# --- the parent: runs each child and watches its memory ------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it, from the parent ids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    pids, frontier = [], [pid]
    while frontier:
        pids.append(frontier.pop())
        frontier += children.get(pids[-1], [])
    return pids


def _pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def run_child(*arguments: str) -> dict[str, Any]:
    """Run this script as a measuring child; returns its result with the tree's peak PSS and the parent's
    RUSAGE_CHILDREN peak after it (the largest of every child so far, for reference)."""
    command = [sys.executable, __file__, *arguments]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
    peak = {"pss": 0.0}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak["pss"] = max(peak["pss"], sum(_pss_mb(pid) for pid in _descendants(process.pid)))
            done.wait(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout, _ = process.communicate()
    done.set()
    watcher.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit status {process.returncode}")
    [line] = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    result["tree_peak_pss_mb"] = peak["pss"]
    result["rusage_children_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return result


def measure(
    scale: int,
    pools: tuple[list[str], list[str]],
    workdir: Path,
    vocab_size: int,
    bpe_in_pipeline: bool,
    repeats: int,
) -> dict[str, Any]:
    point = workdir / f"{scale}x"
    shutil.rmtree(point, ignore_errors=True)
    corpus = point / "corpus" / "corpus.jsonl"
    start = time.perf_counter()
    facts = write_corpus(corpus, pools, scale)
    print(
        f"[{scale}x] wrote {facts['documents']:,} documents, {facts['text_bytes'] / 1e6:,.1f} MB of text "
        f"({time.perf_counter() - start:.0f} s)",
        flush=True,
    )
    common = ["--corpus", str(corpus), "--vocab-size", str(vocab_size)]
    bpe = None
    given: list[str] = []
    if not bpe_in_pipeline:
        bpe = run_child("--child", "bpe", *common, "--out", str(point / "bpe"))
        print(f"[{scale}x] BPE training (not in the pipeline's time): {bpe['seconds']:.1f} s", flush=True)
        given = ["--tokenizer", bpe["tokenizer"]]
    pipelines: list[dict[str, Any]] = []
    tokenizers: list[dict[str, Any]] = []
    for run in range(repeats):  # alternated, so that a change in the machine's load reaches both
        out = point / f"run{run}"  # a fresh cache each time: a run must not reuse the previous one's work
        pipelines.append(run_child("--child", "pipeline", *common, "--out", str(out), *given))
        print(f"[{scale}x] pipeline: {pipelines[-1]['seconds']:.1f} s", flush=True)
        tokenizers.append(run_child("--child", "tokenizer", *common, "--tokenizer", pipelines[0]["tokenizer"]))
        print(
            f"[{scale}x] tokenizer: encode_batch {tokenizers[-1]['seconds']:.1f} s, encode_batch_fast "
            f"{tokenizers[-1]['fast_seconds']:.1f} s",
            flush=True,
        )
        if run:
            shutil.rmtree(out)
    assert all(tokenizer["text_bytes"] == facts["text_bytes"] for tokenizer in tokenizers)
    pipeline = min(pipelines, key=lambda result: result["seconds"])
    tokenizer = min(tokenizers, key=lambda result: result["seconds"])
    tokenizer["fast_seconds"] = min(result["fast_seconds"] for result in tokenizers)
    return {"scale": scale, **facts, "bpe": bpe, "pipeline": pipeline, "tokenizer": tokenizer, "runs": len(pipelines)}


def report(points: list[dict[str, Any]]) -> None:
    print()
    header = (
        f"{'point':>5} {'text MB':>8} {'docs':>8} {'dedup -':>7} {'kept':>8} {'pipe MB/s':>9} {'tok MB/s':>8} "
        f"{'ratio':>6} {'fast MB/s':>9} {'ratio':>6} {'pipe RSS':>8} {'wkr RSS':>8} {'pipe PSS':>8} {'tok RSS':>8}"
    )
    print(header)
    for p in points:
        mb = p["text_bytes"] / 1e6
        pipe, tok = p["pipeline"], p["tokenizer"]
        dedup = sum(v for k, v in pipe["removed"].items() if k.startswith("removed.dedup"))
        pipe_rate, tok_rate, fast_rate = mb / pipe["seconds"], mb / tok["seconds"], mb / tok["fast_seconds"]
        print(
            f"{p['scale']:>4}x {mb:>8.1f} {p['documents']:>8,} {dedup:>7,} {pipe['kept_documents']:>8,} "
            f"{pipe_rate:>9.2f} {tok_rate:>8.2f} {pipe_rate / tok_rate:>6.2f} {fast_rate:>9.2f} "
            f"{pipe_rate / fast_rate:>6.2f} {pipe['maxrss_mb']:>8.0f} "
            f"{pipe['children_maxrss_mb']:>8.0f} {pipe['tree_peak_pss_mb']:>8.0f} {tok['maxrss_mb']:>8.0f}"
        )
    print("(MB: 10^6 bytes of UTF-8 text; RSS, PSS: MiB. pipe RSS: the preparing process; wkr RSS: its largest")
    print(" worker; pipe PSS: peak of the whole process tree, sampled. tok: encode_batch; fast: encode_batch_fast,")
    print(" which lmpre's shards call (no offsets); ratio: pipeline MB/s over the tokenizer's MB/s left of it;")
    print(f" each the fastest of {points[0]['runs']} runs, pipeline and tokenizer alternated)")
    for p in points:
        stages = ", ".join(f"{name.lstrip('_')} {s:.1f} s" for name, s in p["pipeline"]["stages"].items())
        print(f"{p['scale']}x pipeline stages: {stages}; removed: {p['pipeline']['removed']}")
        print(
            f"{p['scale']}x CPU s (user + system, workers included): pipeline {p['pipeline']['cpu_seconds']:.1f}, "
            f"tokenizer child {p['tokenizer']['cpu_seconds']:.1f} (it runs encode_batch and encode_batch_fast)"
        )
        if p["bpe"]:
            print(f"{p['scale']}x BPE training, before and outside the pipeline: {p['bpe']['seconds']:.1f} s")
    print("target ratio >= 0.7: " + ", ".join(f"{p['scale']}x {_ratio(p)}" for p in points))
    if len(points) > 1:
        first, last = points[0], points[-1]
        for key, what in (("maxrss_mb", "preparing process RSS"), ("tree_peak_pss_mb", "process tree PSS")):
            growth = last["pipeline"][key] / first["pipeline"][key]
            print(
                f"target {what} {last['scale']}x <= 1.2 x {first['scale']}x: {growth:.2f} "
                f"({'met' if growth <= 1.2 else 'NOT met'})"
            )


def _ratio(point: dict[str, Any]) -> str:
    ratio = point["tokenizer"]["seconds"] / point["pipeline"]["seconds"]
    return f"{ratio:.2f} ({'met' if ratio >= 0.7 else 'NOT met'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, nargs="+", default=[1, 10], help="replicas per point (default: 1 10)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lmpre-bench-prepare"))
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared corpora (default: ../shared/data)")
    parser.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary (data=jsonl's default)")
    parser.add_argument(
        "--bpe-in-pipeline", action="store_true", help="the pipeline trains its BPE (kind=bpe) inside its time"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs of the pipeline and the tokenizer, alternated; the fastest of each"
    )
    parser.add_argument("--child", choices=["bpe", "pipeline", "tokenizer"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    pools = paragraphs(args.shared)
    print(f"{len(pools[0]):,} book paragraphs, {len(pools[1]):,} wiki paragraphs from {args.shared}", flush=True)
    workdir = args.workdir.expanduser().resolve()
    points = [
        measure(scale, pools, workdir, args.vocab_size, args.bpe_in_pipeline, args.repeats) for scale in args.scale
    ]
    report(points)


if __name__ == "__main__":
    main()
