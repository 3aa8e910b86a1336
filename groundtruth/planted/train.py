"""Training a planted-circuit model by SIIT, deterministically, on a CPU.

The low-level model is a PatchableTransformer with LayerNorm and GELU, a dense residual stream
and random (GPT-2-style) initialisation: the compiled model's layers (at least two) and
``n_heads`` heads per layer, with ``d_model`` chosen per program. It reads the compiled model's
token ids and writes its outputs (one logit per output value, or one number), so the Tracr
program's data and decoding apply unchanged.

It trains on every input of the program (``groundtruth.data``: all inputs up to the longest,
one batch per length, never padded), since the domain is finite and the checks ask for the
whole of it. Each step draws, for every length, a batch of inputs and for each a source input
of the same length, and takes one AdamW step on the weighted sum of the three SIIT losses
(``siit``). Determinism: one seed fixes the initialisation and every draw (a private
``torch.Generator``), and training runs on a fixed number of threads; the same seed, steps and
threads give the same weights bit for bit on one machine.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch

from circuitboard import training
from circuitboard.groundtruth import data as gt_data
from circuitboard.groundtruth import programs, store
from circuitboard.groundtruth.planted import siit
from circuitboard.groundtruth.planted.alignment import Alignment, from_tracr
from circuitboard.groundtruth.planted.specs import PlantedSpec
from circuitboard.model import ModelConfig, PatchableTransformer


def hl_model(spec: PlantedSpec):
    """The compiled Tracr model of the spec's program (the committed one; no tracr needed)."""
    return store.load_model(spec.program)


def hl_edges(spec: PlantedSpec) -> list[str]:
    """The HL graph's edges: the committed Tracr resample ground truth of the program."""
    record = store.read_circuits(spec.program)
    if record is None:
        raise FileNotFoundError(
            f"no Tracr ground truth for {spec.program!r}; run "
            f"`circuitboard groundtruth compile {spec.program}`"
        )
    return list(record["circuits"]["resample"]["edges"])


def groups_of(hl) -> list[torch.Tensor]:
    """Every input of the program, one ``[n, 1 + L]`` tensor per length."""
    spec = programs.PROGRAMS.get(hl.program["name"])
    return gt_data.token_groups(hl, spec.valid if spec is not None else None)


def reads_only_prefixes(hl, groups) -> bool:
    """Whether the program's output at each position depends only on the tokens up to it: the
    output on every proper prefix of every input equals the output on the input there."""
    with torch.no_grad():
        for g in groups:
            full = hl(g)
            for length in range(2, g.shape[1]):
                if not torch.allclose(hl(g[:, :length]), full[:, :length], atol=1e-4):
                    return False
    return True


def ll_config(spec: PlantedSpec, hl) -> ModelConfig:
    """The LL model's shape. Causal attention (InterpBench's choice wherever a program allows
    it) only where asked for and the program's outputs read only prefixes."""
    n_layers = spec.n_layers or max(2, hl.cfg.n_layers)
    causal = hl.cfg.causal if spec.causal is None else spec.causal
    if causal and not hl.cfg.causal and not reads_only_prefixes(hl, groups_of(hl)):
        raise ValueError(
            f"program {spec.program!r} is compiled without a causal mask and its outputs read "
            f"later tokens, so a causal model cannot compute it; set causal=None in its spec"
        )
    return ModelConfig(
        n_layers=n_layers,
        n_heads=spec.n_heads,
        d_model=spec.d_model,
        d_head=spec.d_head or spec.d_model // spec.n_heads,
        d_mlp=spec.d_mlp or 4 * spec.d_model,
        d_vocab=hl.cfg.d_vocab,
        n_ctx=hl.cfg.n_ctx,
        d_vocab_out=hl.cfg.d_vocab_out,
        normalization="LN",
        act_fn="gelu",
        causal=causal,
        name=f"planted/{spec.program}",
    )


def init_model(cfg: ModelConfig, seed: int) -> PatchableTransformer:
    """The shared GPT-2-style initialisation (``circuitboard.training``)."""
    return training.init_model(cfg, seed)


def lr_at(spec: PlantedSpec, step: int) -> float:
    """Linear warmup, then cosine decay to a tenth (``circuitboard.training``)."""
    return training.lr_at(spec.lr, spec.warmup, spec.steps, step)


@dataclass
class TrainResult:
    model: PatchableTransformer
    alignment: Alignment
    readout: siit.Readout
    losses: list[dict]  # per step: behaviour, iit, strict, total
    evals: list[dict]  # every ``eval_every`` steps: accuracy, IIA, strict accuracy
    data_hash: str
    seconds: float
    cpu_seconds: float
    spec: PlantedSpec


def evaluate(model, hl, alignment, groups, readout) -> dict:
    """Accuracy, the IIA of every HL node and the strict accuracy of every unaligned node."""
    iia = siit.interchange_accuracy(model, hl, alignment, groups, readout)
    strict = siit.strict_accuracy(model, hl, alignment, groups, readout)
    return {
        "accuracy": siit.accuracy(model, hl, groups, readout),
        "iia": iia,
        "strict_accuracy": strict,
        "min_iia": min(iia.values()),
        "min_strict_accuracy": min(strict.values()) if strict else 1.0,
    }


def train(
    spec: PlantedSpec,
    *,
    seed: int | None = None,
    steps: int | None = None,
    threads: int = 1,
    stop_after: int | None = None,
    eval_every: int = 0,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train ``spec`` from scratch; the same seed, steps and threads give the same weights.

    ``stop_after`` ends the run early with the full run's schedule, so its losses are the
    full run's first losses (how a test checks a card without retraining).
    """
    if seed is not None:
        spec = replace(spec, seed=seed)
    if steps is not None:
        spec = replace(spec, steps=steps)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(spec, stop_after, eval_every, log, progress)
    finally:
        torch.set_num_threads(old_threads)


def _train(spec, stop_after, eval_every, log, progress) -> TrainResult:
    start, cpu_start = time.perf_counter(), time.process_time()
    hl = hl_model(spec)
    groups = groups_of(hl)
    readout = siit.readout_for(hl, groups)
    model = init_model(ll_config(spec, hl), spec.seed).train()
    alignment = from_tracr(hl, hl_edges(spec), model.graph)
    inter = siit.Interchanges(alignment)
    with torch.no_grad():
        hl_clean = [hl(g) for g in groups]
    gen = torch.Generator().manual_seed(spec.seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": rest}],
        lr=spec.lr,
        weight_decay=0.0,
        betas=(0.9, 0.98),
    )
    weights = {
        "behaviour": spec.behaviour_weight,
        "iit": spec.iit_weight,
        "strict": spec.strict_weight,
    }
    digest = hashlib.sha256()
    losses, evals = [], []
    n_steps = spec.steps if stop_after is None else min(stop_after, spec.steps)
    steps = range(n_steps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc=f"planted/{spec.program}", unit="step")
    for step in steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(spec, step)
        parts = {k: 0.0 for k in weights}
        rows = [min(spec.batch_size, len(g)) for g in groups]
        total_rows = sum(rows)
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for g, clean, b in zip(groups, hl_clean, rows):
            base = torch.randperm(len(g), generator=gen)[:b]
            source = siit.other_examples(len(g), gen, base)
            digest.update(base.numpy().tobytes() + source.numpy().tobytes())
            terms = siit.siit_losses(
                model,
                hl,
                inter,
                readout,
                g[base],
                g[source],
                clean[base],
                gen,
                spec.edge_share,
                spec.all_share,
            )
            share = b / total_rows
            loss = loss + share * sum(weights[k] * terms[k] for k in weights)
            for k in weights:
                parts[k] += share * float(terms[k].detach())
        loss.backward()
        if spec.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip)
        opt.step()
        losses.append({**parts, "total": float(loss.detach())})
        if (step + 1) % 100 == 0 and (log is not None or progress):
            recent = losses[-100:]
            mean = {k: sum(x[k] for x in recent) / len(recent) for k in recent[0]}
            if progress:
                steps.set_postfix({k: f"{v:.2e}" for k, v in mean.items()}, refresh=False)
            if log is not None:
                log(
                    f"planted/{spec.program} step {step + 1}/{spec.steps} "
                    + " ".join(f"{k} {v:.4f}" for k, v in mean.items())
                )
        if eval_every and (step + 1) % eval_every == 0:
            model.eval()
            ev = evaluate(model, hl, alignment, groups, readout)
            evals.append({"step": step + 1, **ev})
            if log is not None:
                log(
                    f"  eval step {step + 1}: accuracy {ev['accuracy']:.4f} min IIA "
                    f"{ev['min_iia']:.4f} min strict accuracy {ev['min_strict_accuracy']:.4f}"
                )
            model.train()
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    model.eval()
    model.tracr_info, model.program = hl.tracr_info, dict(hl.program)
    return TrainResult(
        model,
        alignment,
        readout,
        losses,
        evals,
        digest.hexdigest(),
        seconds,
        cpu_seconds,
        spec,
    )


def spec_dict(spec: PlantedSpec) -> dict:
    return asdict(spec)
