"""Training the zoo models, deterministically, with PatchableTransformer itself.

- ``toy-lm``: 4 layers, LayerNorm, GELU, trained on a mixture of the five tasks' *train*
  distributions (prompt plus answer, as next-token prediction) and filler text.
- ``toy-lm-sparse``: the same data and shape, trained weight-sparse as in Gao et al. 2025:
  after every optimiser step each weight matrix keeps only its k largest-magnitude entries, with
  k annealed from all entries down to ``final_density`` of them over the first half of training.
- ``attn-only-2l``: two attention-only layers trained on random sequences with repeated
  segments, so that it forms an induction circuit (a previous-token head feeding an induction
  head).

Task data is drawn with ``base.draw``'s rule: a prompt in a task's test bucket is never trained
on, so no zoo model has seen a test prompt of any seed. Determinism: one seed fixes the
initialisation and the data stream; training runs on a fixed number of CPU threads (float sums
can depend on it). The card records the command, seed, a hash of every training batch, the
final loss, the training time and the accuracy and metric on every task.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from circuitboard import training
from circuitboard.model import ModelConfig, PatchableTransformer
from circuitboard.tasks import filler, vocab
from circuitboard.tasks.base import in_test_bucket
from circuitboard.tasks.zoo_specs import SPECS as SPECS  # re-exported: train.SPECS
from circuitboard.tasks.zoo_specs import ZooSpec


# ---------------------------------------------------------------------------- data streams
class Stream:
    """Deterministic training batches: ``(tokens [b, p], weights [b, p])``.

    ``weights[i, t]`` is the loss weight of predicting token ``t + 1`` from position ``t``
    (0 on padding). Every batch is hashed into ``digest`` as it is made.
    """

    def __init__(self, spec: ZooSpec, seed: int) -> None:
        self.spec = spec
        self.rng = random.Random(f"zoo|{spec.name}|{seed}")
        self.tok = vocab.ToyTokenizer()
        self.digest = hashlib.sha256()
        self._pools: dict = {}

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.spec.data == "repeats":
            rows = [self._repeat() for _ in range(self.spec.batch_size)]
        else:
            sources = list(self.spec.mixture)
            weights = [self.spec.mixture[s] for s in sources]
            source = self.rng.choices(sources, weights)[0]
            make = self._filler if source == "filler" else self._task_row(source)
            rows = [make() for _ in range(self.spec.batch_size)]
        tokens, weights = _pad(rows, self.tok.bos_id)
        self.digest.update(tokens.numpy().tobytes())
        return tokens, weights

    def _task_row(self, name: str) -> Callable[[], tuple[list[int], list[float]]]:
        from circuitboard import tasks

        spec = tasks.spec(name)
        if name not in self._pools:
            self._pools[name] = spec.pools(self.tok)
        pools = self._pools[name]

        def make() -> tuple[list[int], list[float]]:
            while True:
                ex = spec.sample(self.rng, pools, "main")
                if not in_test_bucket(spec.name, ex.clean):
                    break
            answer = self.rng.choice(ex.answer)  # greater-than: any year above YY
            ids = [self.tok.bos_id] + self.tok.encode(ex.clean + answer)
            weights = [1.0] * (len(ids) - 1)
            weights[-1] += self.spec.answer_weight
            return ids, weights

        return make

    def _filler(self) -> tuple[list[int], list[float]]:
        ids = [self.tok.bos_id] + self.tok.encode(filler.text(self.rng))
        return ids, [1.0] * (len(ids) - 1)

    def _repeat(self) -> tuple[list[int], list[float]]:
        """Random words in which earlier segments recur: "... A B C ... x A B C ...".

        The sequence grows by fresh random words or by a copy of an earlier segment (2 to 4
        words). The words before a copy differ from those before its original, and copies are
        short, so only the immediately preceding word identifies where to continue: the model
        must learn a previous-token head and an induction head, not a match on a wider window.
        The loss is on the predictions that an induction circuit can make: a word seen before,
        every earlier occurrence of which was followed by the same word as here.
        """
        if "words" not in self._pools:
            self._pools["words"] = [self.tok.ids[w] for w in _repeat_words()]
        pool, rng = self._pools["words"], self.rng
        length = rng.randint(24, 48)
        ids = [self.tok.bos_id] + rng.sample(pool, rng.randint(2, 6))
        while len(ids) < length:
            if rng.random() < 0.6:
                start = rng.randint(1, len(ids) - 2)
                ids += ids[start : start + rng.randint(2, 4)]
            else:
                ids += rng.sample(pool, rng.randint(1, 3))
        ids = ids[:length]
        weights, followers = [], {}
        for t in range(len(ids) - 1):
            seen = followers.get(ids[t])
            weights.append(1.0 if seen == {ids[t + 1]} else 0.0)
            followers.setdefault(ids[t], set()).add(ids[t + 1])
        return ids, weights


def _repeat_words() -> list[str]:
    from circuitboard.tasks.induction import words

    return words(vocab.ToyTokenizer())


def _pad(rows: list[tuple[list[int], list[float]]], pad: int) -> tuple[torch.Tensor, ...]:
    width = max(len(ids) for ids, _ in rows)
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    weights = torch.zeros(len(rows), width - 1)
    for i, (ids, w) in enumerate(rows):
        tokens[i, : len(ids)] = torch.tensor(ids)
        weights[i, : len(w)] = torch.tensor(w)
    return tokens, weights


# ---------------------------------------------------------------------------- the model
def init_model(spec: ZooSpec, seed: int) -> PatchableTransformer:
    """The shared GPT-2-style initialisation (``circuitboard.training``) on the zoo's vocabulary."""
    cfg = ModelConfig(d_vocab=len(vocab.toy_vocabulary()), name=f"zoo/{spec.name}", **spec.shape)
    return training.init_model(cfg, seed)


def matrices(model: PatchableTransformer) -> list[torch.nn.Parameter]:
    """The weight matrices that weight sparsity prunes (every parameter of two or more dims)."""
    return [p for p in model.parameters() if p.dim() >= 2]


def density_at(spec: ZooSpec, step: int) -> float:
    """Share of each matrix kept after ``step`` (1-based): linear from 1 to final, first half."""
    if spec.final_density is None:
        return 1.0
    half = max(1, spec.steps // 2)
    progress = min(1.0, step / half)
    return 1.0 - (1.0 - spec.final_density) * progress


@torch.no_grad()
def keep_top_k(model: PatchableTransformer, density: float) -> None:
    """Zero all but the ``ceil(density * numel)`` largest-magnitude entries of each matrix."""
    for param in matrices(model):
        k = max(1, math.ceil(density * param.numel()))
        if k >= param.numel():
            continue
        flat = param.view(-1)
        keep = flat.abs().topk(k, sorted=False).indices
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[keep] = True
        flat.masked_fill_(~mask, 0.0)


def lr_at(spec: ZooSpec, step: int) -> float:
    return training.lr_at(spec.lr, spec.warmup, spec.steps, step)


def loss_fn(model: PatchableTransformer, tokens: torch.Tensor, weights: torch.Tensor):
    logits = model(tokens[:, :-1])
    ce = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    return (ce * weights.flatten()).sum() / weights.sum()


@dataclass
class TrainResult:
    model: PatchableTransformer
    losses: list[float]
    data_hash: str
    seconds: float  # wall-clock
    cpu_seconds: float  # CPU time of this process (the machine is shared)
    spec: ZooSpec


def train(
    spec: ZooSpec,
    *,
    seed: int | None = None,
    steps: int | None = None,
    threads: int = 1,
    log: Callable[[str], None] | None = None,
    every: Callable[[int, PatchableTransformer], None] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``spec`` from scratch; the same seed, steps and threads give the same weights.

    ``every(step, model)`` is called every 500 steps (to watch accuracy; it must not change
    the model or draw from torch's global generator). ``stop_after`` ends the run early while
    keeping the full run's schedules (learning rate, sparsity): its losses are the first losses
    of the full run, which is how a test checks a shipped card without retraining.
    """
    seed = spec.seed if seed is None else seed
    if steps is not None:
        spec = ZooSpec(**{**asdict(spec), "steps": steps})
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start, cpu_start = time.perf_counter(), time.process_time()
        torch.manual_seed(seed)
        model = init_model(spec, seed).train()
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": spec.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=spec.lr,
            betas=(0.9, 0.98),
        )
        stream = Stream(spec, seed)
        losses = []
        for step in range(spec.steps if stop_after is None else min(stop_after, spec.steps)):
            for group in opt.param_groups:
                group["lr"] = lr_at(spec, step)
            tokens, weights = next(stream)
            loss = loss_fn(model, tokens, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if spec.final_density is not None:
                keep_top_k(model, density_at(spec, step + 1))
            losses.append(loss.item())
            if log is not None and (step + 1) % 100 == 0:
                recent = sum(losses[-100:]) / len(losses[-100:])
                log(f"{spec.name} step {step + 1}/{spec.steps} loss {recent:.4f}")
            if every is not None and (step + 1) % 500 == 0:
                with torch.no_grad():
                    every(step + 1, model.eval())
                model.train()
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
    finally:
        torch.set_num_threads(old_threads)
    return TrainResult(model.eval(), losses, stream.digest.hexdigest(), seconds, cpu_seconds, spec)


def sparsity_report(model: PatchableTransformer) -> dict:
    total = sum(p.numel() for p in matrices(model))
    nonzero = sum(int((p != 0).sum()) for p in matrices(model))
    return {"matrix_entries": total, "nonzero": nonzero, "density": nonzero / total}
