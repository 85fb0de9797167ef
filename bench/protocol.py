"""The lifelong editing protocol of protocol.md.

1. Pre-edit predictions of every locality probe of the stream are computed on
   the unedited model and cached BEFORE the first edit.
2. ``sequential`` (default): edits applied one after another with no reset;
   at each checkpoint ``t`` the records edited so far are scored; after the
   whole stream every probe of all ``T`` records is scored.
   ``single``: edit one record, score it, reset, next.
   ``chunked``: the stream cut into chunks of ``chunk_size``, each edited from
   a reset model and scored after its chunk; metrics average all chunks.
3. Every edit is timed (synchronised on GPU) and peak memory recorded.
4. Non-finite guard: an edit whose loss (or another of the editor's ``finite_stats``) is NaN or
   infinite, or a scored probe whose log-prob is, stops the run with :class:`NonFiniteError`
   naming the editor, the edit, the record and ``model.dtype`` and saying what to try. The
   cases scored before it (the offending batch of cases included) stay in ``cases.jsonl.partial``;
   ``nonfinite_logprobs`` counts the non-finite log-probs scored (``summary.json``).
5. Every ``save_every`` edits (sequential; at chunk ends in the other modes) the
   progress is saved through the writer (editor ``state_dict``, pre-edit cache,
   counters, RNG states); :meth:`Lifelong.resume` continues from it to the same
   final scores as an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import random
import resource
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from bench.core.editor import Editor

from .backbones.base import Backbone, Probe
from .core.answers import MATCHERS, NEAR_TIE_EPS, answer_before_stop, check_matchers, cross_check, locality_same
from .core.errors import NonFiniteError, UserError, nonfinite_hint
from .core.metrics import LOCALITY_KINDS, aggregate, agreement, token_accuracy
from .core.records import RecordSet
from .core.schema import ProtocolSchema, typed
from .results import RunWriter

log = logging.getLogger(__name__)


@dataclass
class ProtocolConfig:
    mode: str = "sequential"
    chunk_size: int = 100
    checkpoints: list[int] = field(default_factory=list)
    edit_batch_size: int = 1  # resolved: protocol.edit_batch_size, else the editor YAML's edit_batch_size, else 1
    score_batch_size: int | None = None
    progress: bool = True
    save_every: int = 10  # save resumable progress every N edits (0: never)
    eval: str = "both"  # teacher_forced | generate | both
    max_new_tokens: int = 32
    stop: tuple[str, ...] = ("\n",)
    matchers: tuple[str, ...] = ("em", "contains", "f1")
    gen_batch_size: int | None = None
    near_tie_eps: float = NEAR_TIE_EPS
    immediate: bool = True  # score each edit's own rel probe right after it (edits.jsonl "immediate")

    @property
    def teacher_forced(self) -> bool:
        return self.eval in ("teacher_forced", "both")

    @property
    def generate(self) -> bool:
        return self.eval in ("generate", "both")

    @classmethod
    def from_cfg(cls, cfg, editor_cfg=None) -> ProtocolConfig:
        """``cfg``: the ``protocol`` node (or a dict), checked and completed by its schema
        (:class:`bench.core.schema.ProtocolSchema`: types, ranges, defaults). ``protocol.edit_batch_size:
        null`` (the default) takes the editor's own ``edit_batch_size`` (its reference setting, e.g.
        ELDER 4, UltraEdit 100) from ``editor_cfg`` when it has one, else 1; an integer wins."""
        p = typed(ProtocolSchema, cfg if cfg is not None else {}, "protocol", "protocol")
        g = p.generation
        try:
            check_matchers(list(g.matchers))
        except ValueError as e:
            raise UserError(str(e)) from None
        return cls(
            eval=p.eval.value,
            max_new_tokens=g.max_new_tokens,
            stop=tuple(g.stop),
            matchers=tuple(g.matchers),
            gen_batch_size=g.batch_size,
            near_tie_eps=g.near_tie_eps,
            immediate=p.immediate,
            mode=p.mode.value,
            chunk_size=p.chunk_size,
            checkpoints=sorted(p.checkpoints or ()),
            edit_batch_size=resolve_edit_batch_size(p, editor_cfg),
            score_batch_size=p.score_batch_size,
            progress=p.progress,
            save_every=p.save_every,
        )


def resolve_edit_batch_size(protocol_cfg, editor_cfg=None) -> int:
    """The edit batch size a run uses: ``protocol.edit_batch_size`` when set, else the editor YAML's
    ``edit_batch_size`` (validated as ``editor.edit_batch_size``), else 1."""
    v = protocol_cfg.get("edit_batch_size") if protocol_cfg is not None else None
    if v is not None:
        return v
    ev = editor_cfg.get("edit_batch_size") if editor_cfg is not None else None
    if ev is None:
        return 1
    if isinstance(ev, bool) or not isinstance(ev, int) or ev < 1:
        raise ValueError(f"editor.edit_batch_size: expected an integer >= 1, got {ev!r}")
    return ev


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def peak_memory_mb(dev: torch.device) -> float:
    """Peak GPU memory allocated (CUDA) or the process's peak RSS (CPU), in MiB."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Lifelong:
    """Runs one edit stream and scores it; results go to a :class:`RunWriter`."""

    def __init__(
        self,
        backbone: Backbone,
        editor: Editor,
        stream: RecordSet,
        cfg: ProtocolConfig,
        writer: RunWriter | None = None,
        tracker=None,
    ) -> None:
        if cfg.edit_batch_size > 1 and not editor.can_batch_edit:
            raise ValueError(
                f"protocol.edit_batch_size={cfg.edit_batch_size} but editor {editor.name!r} cannot batch-edit"
            )
        self.bb, self.editor, self.stream, self.cfg = backbone, editor, stream, cfg
        self.writer, self.tracker = writer, tracker
        self.probes = [stream.probes(i) for i in range(len(stream))]
        self.pre: dict[tuple[int, int], list[int]] = {}
        self.pre_gen: dict[tuple[int, int], str] = {}  # pre-edit generated text of the locality probes
        self.score_seconds = {"teacher_forced": 0.0, "generate": 0.0, "immediate": 0.0}
        self.edit_seconds: list[float] = []
        self.n_edited = 0
        self.curve: list[dict] = []
        self.config: dict = {}  # resolved run config, saved with the progress (resume checks it)
        self._resumed: list[dict] | None = None
        self.save_seconds = 0.0
        self.n_saves = 0
        self.nonfinite_logprobs = 0  # log-probs scored NaN or infinite (a run with any is failed)

    # ----- non-finite guard ---------------------------------------------------------------------
    def _where(self) -> str:
        return f"editor {self.editor.name!r} with model.dtype={str(self.bb.dtype).removeprefix('torch.')}"

    def _bad_stats(self, stats: dict | None) -> dict:
        """The editor's ``finite_stats`` (its loss) among an edit's ``stats`` that are NaN or infinite."""
        keys = getattr(self.editor, "finite_stats", ("loss",))
        return {
            k: v for k, v in (stats or {}).items() if k in keys and isinstance(v, int | float) and not math.isfinite(v)
        }

    def _check_stats(self, stats: dict | None, positions: list[int]) -> None:
        """Stop on a non-finite value of the editor's ``finite_stats`` (its loss) after an edit."""
        bad = self._bad_stats(stats)
        if not bad:
            return
        first, last = self.n_edited - len(positions) + 1, self.n_edited
        edit = f"edit {first}" if first == last else f"edits {first}-{last}"
        records = [self.probes[i][0].record for i in positions]
        what = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise NonFiniteError(
            f"non-finite edit {what} from {self._where()} at {edit} of {len(self.stream)} "
            f"(record{'s' if len(records) > 1 else ''} {', '.join(map(str, records))} of {self.stream.file}); "
            f"{nonfinite_hint(self.bb.dtype)}. The cases scored before it are kept."
        )

    def _check_scores(self, probes: list[Probe], scores, when: str) -> None:
        bad = [i for i, s in enumerate(scores) if not math.isfinite(s.logprob)]
        if not bad:
            return
        p = probes[bad[0]]
        raise NonFiniteError(
            f"{len(bad)} of {len(scores)} probes scored {when} have a non-finite log-prob ({self._where()}; "
            f"first: record {p.record}, kind {p.kind}, prompt {p.prompt!r}); {nonfinite_hint(self.bb.dtype)}. "
            "The cases scored before it are kept."
        )

    # ----- scoring ----------------------------------------------------------------------------
    def _score(self, probes: list[Probe]):
        t0 = time.perf_counter()
        scores = self.bb.score(probes, self.cfg.score_batch_size, self.cfg.progress)
        self.score_seconds["teacher_forced"] += time.perf_counter() - t0
        return scores

    def _generate(self, probes: list[Probe]):
        c = self.cfg
        t0 = time.perf_counter()
        gens = self.bb.generate(probes, c.max_new_tokens, c.stop, c.gen_batch_size or c.score_batch_size, c.progress)
        self.score_seconds["generate"] += time.perf_counter() - t0
        return gens

    def cache_pre_edit(self) -> None:
        """Score (and/or generate for) the locality probes on the unedited model (before the first edit)."""
        if self.editor.n_edits:
            raise RuntimeError("pre-edit cache must be taken before the first edit")
        keys = [(i, j) for i, ps in enumerate(self.probes) for j, p in enumerate(ps) if p.kind in LOCALITY_KINDS]
        log.info("caching pre-edit predictions of %d locality probes", len(keys))
        probes = [self.probes[i][j] for i, j in keys]
        if self.cfg.teacher_forced:
            scores = self._score(probes)
            self.nonfinite_logprobs += sum(not math.isfinite(s.logprob) for s in scores)
            self._check_scores(probes, scores, "on the unedited backbone (pre-edit locality cache)")
            self.pre = {k: s.pred_ids for k, s in zip(keys, scores, strict=True)}
        if self.cfg.generate:
            gens = self._generate(probes)
            self.pre_gen = {k: g.text for k, g in zip(keys, gens, strict=True)}

    def evaluate(self, positions: list[int], step: int) -> list[dict]:
        c = self.cfg
        flat: list[tuple[int, int, Probe]] = [(i, j, p) for i in positions for j, p in enumerate(self.probes[i])]
        probes = [p for _, _, p in flat]
        scores = self._score(probes) if c.teacher_forced else [None] * len(flat)
        gens = self._generate(probes) if c.generate else [None] * len(flat)
        dec = self.bb.tokenizer.decode
        cases = []
        for (i, j, p), s, g in zip(flat, scores, gens, strict=True):
            case = {"step": step, "pos": i, "record": p.record, "kind": p.kind, "probe": j}
            local = p.kind in LOCALITY_KINDS
            if s is not None:
                if local:
                    pre = self.pre[(i, j)]
                    case["score"] = agreement(s.pred_ids, pre)
                    case["pre_pred"] = dec(pre)
                else:
                    case["score"] = token_accuracy(s.pred_ids, s.target_ids)
                case["pred"] = dec(s.pred_ids)
            case.update(target=p.target, prompt=p.prompt, image=p.image)
            if s is not None:
                case["logprob"] = round(s.logprob, 4)  # a NaN is written as null + "logprob_nonfinite"
            if g is not None:
                case.update(gen_text=g.text, gen_stop=g.stop)
                if local:
                    pre_text = self.pre_gen[(i, j)]
                    case.update(
                        pre_gen_text=pre_text, gen_loc=locality_same(self.answer(g.text), self.answer(pre_text))
                    )
                else:
                    for m in c.matchers:
                        case[f"gen_{m}"] = MATCHERS[m](g.answer, p.target)
            if s is not None and g is not None:
                x = cross_check(g.ids, s.pred_ids, s.target_ids, s.margins, c.near_tie_eps)
                case.update(xcheck=x.agree, xcheck_near_tie=x.near_tie)
            cases.append(case)
        if self.writer:
            self.writer.add_cases(cases)  # kept (with logprob null) before the guard stops the run
        if c.teacher_forced:
            self.nonfinite_logprobs += sum(not math.isfinite(s.logprob) for s in scores)
            self._check_scores(probes, scores, f"after {step} edits")
        return cases

    def answer(self, text: str) -> str:
        """The answer in a generated text: what comes before the first stop string."""
        return answer_before_stop(text, self.cfg.stop)

    # ----- editing ----------------------------------------------------------------------------
    def _edit(self, positions: list[int], bar) -> None:
        reqs = [self.probes[i][0] for i in positions]
        dev = self.bb.device
        _sync(dev)
        t0 = time.perf_counter()
        stats = self.editor.edit_batch(reqs) if len(reqs) > 1 else self.editor.edit(reqs[0])
        _sync(dev)
        dt = time.perf_counter() - t0
        self.n_edited += len(reqs)
        self.edit_seconds += [dt / len(reqs)] * len(reqs)
        row = {
            "edits": self.n_edited,
            "records": [self.probes[i][0].record for i in positions],
            "seconds": dt,
            "peak_mem_mb": round(peak_memory_mb(dev), 1),
            **{k: v for k, v in (stats or {}).items()},
        }
        if self.cfg.immediate and not self._bad_stats(stats):
            row["immediate"] = self._immediate(reqs)
        if self.writer:
            self.writer.add_edit(row)
        if self.tracker:
            self.tracker.log(
                {
                    "edit/seconds": dt / len(reqs),
                    **{f"edit/{k}": v for k, v in (stats or {}).items() if isinstance(v, int | float)},
                },
                step=self.n_edited,
            )
        bar.update(len(reqs))
        self._check_stats(stats, positions)  # after the row is in edits.jsonl

    def _immediate(self, reqs: list[Probe]) -> dict[str, list[float]]:
        """The just-edited requests' own rel probes scored right after their edit (immediate success),
        one value per request in the order of ``records``: ``rel`` (teacher-forced token accuracy) and
        ``gen_rel_<matcher>`` as the run scores. Not counted in the edit's time. Their end-of-stream
        scores (retention) are the rel cases of the final scoring; ``python -m bench.retention`` draws both."""
        c = self.cfg
        t0 = time.perf_counter()
        out: dict[str, list[float]] = {}
        if c.teacher_forced:
            scores = self.bb.score(reqs, c.score_batch_size)
            out["rel"] = [token_accuracy(s.pred_ids, s.target_ids) for s in scores]
        if c.generate:
            gens = self.bb.generate(reqs, c.max_new_tokens, c.stop, c.gen_batch_size or c.score_batch_size)
            for m in c.matchers:
                out[f"gen_rel_{m}"] = [MATCHERS[m](g.answer, p.target) for g, p in zip(gens, reqs, strict=True)]
        self.score_seconds["immediate"] += time.perf_counter() - t0
        return out

    def _checkpoint(self, t: int, cases: list[dict]) -> dict:
        row = {"edits": t, **aggregate(cases), "s_per_edit": sum(self.edit_seconds) / max(1, len(self.edit_seconds))}
        self.curve.append(row)
        if self.writer:
            self.writer.add_curve(row)
        if self.tracker:
            self.tracker.log({f"curve/{k}": v for k, v in row.items() if k != "edits"}, step=t)
        log.info("after %d edits: %s", t, {k: round(v, 4) for k, v in row.items() if k != "edits"})
        return row

    def run(self) -> list[dict]:
        """Run the stream; returns the final cases (all probes of all records)."""
        T, c = len(self.stream), self.cfg
        start = self.n_edited
        if self._resumed is None:
            self.cache_pre_edit()
            self._save(force=True)
        bar = tqdm(total=T, initial=start, desc=f"editing ({self.editor.name})", disable=not c.progress)
        eb = c.edit_batch_size
        final: list[dict] = list(self._resumed or [])
        try:
            if c.mode == "sequential":
                for s in range(start, T, eb):
                    pos = list(range(s, min(T, s + eb)))
                    before = self.n_edited
                    self._edit(pos, bar)
                    for t in c.checkpoints:
                        if before < t <= self.n_edited and self.n_edited < T:
                            self._checkpoint(self.n_edited, self.evaluate(list(range(self.n_edited)), self.n_edited))
                    if self.n_edited < T:
                        self._save(before=before)
                final = self.evaluate(list(range(T)), T)
            else:
                size = 1 if c.mode == "single" else c.chunk_size
                for s in range(start, T, size):
                    chunk = list(range(s, min(T, s + size)))
                    self.editor.reset()
                    before = self.n_edited
                    for b in range(0, len(chunk), eb):
                        self._edit(chunk[b : b + eb], bar)
                    final += self.evaluate(chunk, len(chunk))
                    if self.n_edited < T:
                        self._save(before=before)
                self.editor.reset()
        finally:
            bar.close()
        self._checkpoint(T, final)
        return final

    # ----- resume -----------------------------------------------------------------------------
    def _save(self, before: int | None = None, force: bool = False) -> None:
        """Save progress when ``n_edited`` crossed a multiple of ``save_every`` (or ``force``)."""
        k = self.cfg.save_every
        if not self.writer or not k or not (force or self.n_edited // k > (before or 0) // k):
            return
        t0 = time.perf_counter()
        # chunked/single modes reset the editor before each chunk: its state is not needed
        state = self.editor.state_dict() if self.cfg.mode == "sequential" else {}
        tensors = {f"editor/{n}": t for n, t in state.items()}  # copied to the CPU by the writer
        tensors["rng/torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for d, st in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng/cuda{d}"] = st
        np_state = np.random.get_state()
        progress = {
            "edits_done": self.n_edited,
            "mode": self.cfg.mode,
            "edit_seconds": self.edit_seconds,
            "rng": {
                "python": _jsonable(random.getstate()),
                "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            },
            "config": self.config,
            "time": time.time(),
        }
        self.writer.save_progress(progress, tensors, self.pre, self.pre_gen)
        self.save_seconds += time.perf_counter() - t0
        self.n_saves += 1

    def resume(self, progress: dict, tensors: dict, pre: dict, pre_gen: dict | None = None) -> None:
        """Continue from progress saved by an earlier, interrupted run of the same config."""
        if progress.get("mode") != self.cfg.mode:
            raise ValueError(f"saved progress is of protocol.mode={progress.get('mode')}, not {self.cfg.mode}")
        self.n_edited = int(progress["edits_done"])
        self.edit_seconds = list(progress["edit_seconds"])
        self.pre = pre
        self.pre_gen = dict(pre_gen or {})
        self.curve = list(self.writer.curve) if self.writer else []
        state = {n[len("editor/") :]: t for n, t in tensors.items() if n.startswith("editor/")}
        if self.cfg.mode == "sequential":
            if self.n_edited:
                self.editor.load_state_dict({k: v.to(self.bb.device) for k, v in state.items()})
            self.editor.n_edits = self.n_edited
        torch.set_rng_state(tensors["rng/torch"])
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda")]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        random.setstate(_tupled(progress["rng"]["python"]))
        n = progress["rng"]["numpy"]
        np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
        self._resumed = []
        if self.cfg.mode != "sequential" and self.writer:  # the chunks scored so far are final cases
            import json

            with open(self.writer.cases_partial, encoding="utf-8") as f:
                self._resumed = [json.loads(line) for line in f if line.strip()]
        log.info("resuming after %d of %d edits", self.n_edited, len(self.stream))

    def timing(self) -> dict:
        n = len(self.edit_seconds)
        total = sum(self.edit_seconds)
        return {
            "s_per_edit": total / n if n else 0.0,
            "edit_seconds_total": total,
            "edit_seconds_max": max(self.edit_seconds, default=0.0),
            "peak_mem_mb": round(peak_memory_mb(self.bb.device), 1),
            "save_seconds_total": self.save_seconds,
            "n_saves": self.n_saves,
            "score_seconds_teacher_forced": self.score_seconds["teacher_forced"],
            "score_seconds_generate": self.score_seconds["generate"],
            "score_seconds_immediate": self.score_seconds["immediate"],
        }


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, tuple | list) else x


def _tupled(x):
    return tuple(_tupled(v) for v in x) if isinstance(x, list) else x
