"""PairMetrics against a bare rapidfuzz cdist over the same token ids (issue 2 target: ratio <= 1.5).

Setup (no downloads): 200 prompts x N = 16 synthetic responses of about 512 tokens, made from a fixed seed
as noisy copies of one random word sequence per prompt; a byte-level BPE tokenizer trained in-process on
that text and saved to a temporary folder, which the step loads like any local tokenizer.

Measured side by side, repeats interleaved, medians reported:

* ``step_s``: ``PairMetrics`` as ``Dataset.map(batched=True)`` calls it (batches of 64 rows), tokenization
  included;
* ``tokenize_s``: the part of ``step_s`` spent in the step's batched tokenization;
* ``step_pretokenized_s``: the step's work on the already tokenized ids (``metrics_from_tokens``): the
  distance matrices, r_Δ, p_Δ, DCRM and the conversion to lists;
* ``bare_cdist_s``: one ``rapidfuzz.process.cdist(ids, ids, scorer=Levenshtein.distance, workers=-1)`` per
  prompt over the same token ids.

``ratio`` = step_pretokenized_s / bare_cdist_s (the step against the bare call on identical inputs);
``ratio_with_tokenization`` = step_s / bare_cdist_s. The step relabels each prompt's tokens densely by
frequency before calling cdist (``dense_symbols``; distances are unchanged, lookups faster), so it is
also timed against a bare cdist over those relabelled ids (``bare_cdist_relabelled_s``,
``ratio_vs_relabelled_cdist``): that ratio is the step's true overhead. Run: ``.venv/bin/python benchmarks/bench_pair_metrics.py``.
"""

from __future__ import annotations

import json
import random
import statistics
import string
import tempfile
import time

from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from hfpref.steps.pair_metrics import PairMetrics, dense_symbols

PROMPTS, N, WORDS, VOCAB_WORDS, TOKENIZER_VOCAB, BATCH_SIZE, REPEATS, SEED = 200, 16, 540, 500, 3000, 64, 3, 0


def synthetic_batches(rng: random.Random) -> list[dict[str, list]]:
    """Candidates rows in Dataset.map batches: each response is a noisy copy of its prompt's base text."""
    vocab = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(VOCAB_WORDS)]
    rows = []
    for p in range(PROMPTS):
        base = rng.choices(vocab, k=WORDS)
        responses = []
        for _ in range(N):
            words = [rng.choice(vocab) if rng.random() < 0.15 else w for w in base if rng.random() > 0.05]
            responses.append(" ".join(words))
        rows.append(
            {
                "prompt": f"prompt {p}",
                "responses": responses,
                "rewards": [rng.gauss(0, 1) for _ in range(N)],
                "ref_logps": [-rng.uniform(100, 900) for _ in range(N)],
            }
        )
    return [
        {key: [row[key] for row in rows[start : start + BATCH_SIZE]] for key in rows[0]}
        for start in range(0, PROMPTS, BATCH_SIZE)
    ]


def train_tokenizer(batches: list[dict[str, list]], folder: str) -> None:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator((text for b in batches[:1] for rs in b["responses"] for text in rs), trainer)
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(folder)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    started = time.perf_counter()
    batches = synthetic_batches(random.Random(SEED))
    with tempfile.TemporaryDirectory() as folder:
        train_tokenizer(batches, folder)
        step = PairMetrics(tokenizer=folder, workers=-1)
        texts = [step.response_texts(b) for b in batches]
        ids = [step.tokenize(t) for t in texts]  # also loads the tokenizer, outside the timings
        per_prompt = [ids_b[k * N : (k + 1) * N] for ids_b in ids for k in range(len(ids_b) // N)]
        dense = [dense_symbols(prompt_ids) for prompt_ids in per_prompt]

        tokenize_seconds = [0.0]
        tokenize = step.tokenize

        def timed_tokenize(texts, rank=None):
            # the step's own tokenize call, timed inside the step run (no separate pass needed)
            start = time.perf_counter()
            tokens = tokenize(texts, rank)
            tokenize_seconds[0] += time.perf_counter() - start
            return tokens

        step.tokenize = timed_tokenize

        def run_step():
            for batch in batches:
                step(batch)

        def run_pretokenized():
            for batch, ids_b in zip(batches, ids, strict=True):
                step.metrics_from_tokens(batch, ids_b)

        def run_bare():
            for prompt_ids in per_prompt:
                cdist(prompt_ids, prompt_ids, scorer=Levenshtein.distance, workers=-1)

        def run_bare_dense():
            for prompt_ids in dense:
                cdist(prompt_ids, prompt_ids, scorer=Levenshtein.distance, workers=-1)

        # the step and the bare call give the same distances
        assert (
            step.metrics_from_tokens(batches[0], ids[0])["edit_distance_matrix"][0]
            == cdist(per_prompt[0], per_prompt[0], scorer=Levenshtein.distance).tolist()
        )
        times: dict[str, list[float]] = {
            key: [] for key in ("step", "tokenize", "pretokenized", "bare", "dense")
        }
        for _ in range(REPEATS):
            times["bare"].append(timed(run_bare))
            times["dense"].append(timed(run_bare_dense))
            tokenize_seconds[0] = 0.0
            times["step"].append(timed(run_step))
            times["tokenize"].append(tokenize_seconds[0])
            times["pretokenized"].append(timed(run_pretokenized))
        median = {key: statistics.median(values) for key, values in times.items()}
        tokens_per_response = sum(len(x) for x in ids for x in x) / (PROMPTS * N)
    print(
        json.dumps(
            {
                "step_s": round(median["step"], 4),
                "tokenize_s": round(median["tokenize"], 4),
                "step_pretokenized_s": round(median["pretokenized"], 4),
                "bare_cdist_s": round(median["bare"], 4),
                "ratio": round(median["pretokenized"] / median["bare"], 3),
                "ratio_with_tokenization": round(median["step"] / median["bare"], 3),
                "bare_cdist_relabelled_s": round(median["dense"], 4),
                "ratio_vs_relabelled_cdist": round(median["pretokenized"] / median["dense"], 3),
                "target_ratio": 1.5,
                "config": {
                    "prompts": PROMPTS,
                    "responses_per_prompt": N,
                    "mean_tokens_per_response": round(tokens_per_response, 1),
                    "batch_size": BATCH_SIZE,
                    "repeats": REPEATS,
                    "workers": -1,
                    "tokenizer": f"byte-level BPE trained in-process (vocab {TOKENIZER_VOCAB})",
                    "seed": SEED,
                },
                "total_wall_s": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
