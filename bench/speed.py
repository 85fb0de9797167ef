"""``python -m bench.speed``: the harness's speed figures side by side, in one run.

Measured on one backbone and one edit stream (default ``smol_llava`` + ``toy_evqa``):

1. **Scoring**: batched (``backbone.score``) against a per-sample loop over the stream's
   probes; identical predictions are asserted (the run fails after writing its results if not).
   Then **generation** (``backbone.generate``, greedy with the KV cache, with the run config's
   ``protocol.generation`` values) on the same probes: its time as a ratio to batched teacher-forced
   scoring (target 2.5x), the tokens generated, why rows stopped, how many forwards each batch ran
   (its longest row) against the tokens per row, and batched against one-by-one generation, whose
   token ids must be identical (asserted as for scoring).
2. **s/edit** of every editor on the same stream of ``--edits`` requests (one request per
   ``edit`` call, as ``protocol.edit_batch_size=1``); an editor's ``fit`` (WISE reads the train
   split) is timed apart. Also the editor's bytes per stored edit after the stream.
3. **Forward latency** of one fixed batch (``--batch`` probes of the stream) with 0, 100, 1,000
   and 10,000 stored edits (``--stored``) for the retrieval editors GRACE, MELO, WISE (Merge and
   Retrieve), ELDER and LiveEdit, as a ratio to the unedited backbone. A count equal to the number
   of real edits uses the real memory; other counts load **synthetic memories** through
   ``load_state_dict``, built from the real state by :func:`synthetic_state` (per editor, the
   ``fill`` column says how); the marginal bytes per stored edit come from these states.
4. **Peak memory**: process peak RSS on CPU (cumulative over the run), peak allocated memory per
   stage on CUDA.

Writes ``speed.json`` and ``speed.md`` into ``--out`` (default ``results/speed/<timestamp>``),
partial results after every stage, and prints the Markdown. Overrides after the options are
Hydra overrides of the run config (``model.random_init=true``, ``data=toy_vlkeb``, ...);
``<editor>.<key>=value`` sets one editor's key (``liveedit.checkpoint=...``). Example::

    OMP_NUM_THREADS=1 python -m bench.speed --edits 5 --stored 0,100,1000,10000
    python -m bench.speed --model llava model.random_init=true model.dtype=float16 --editors grace,wise
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from .core.io import dumps
from .protocol import _sync, peak_memory_mb

log = logging.getLogger("bench.speed")


def editor_names() -> list[str]:
    """Every registered editor in display order (the default ``--editors``)."""
    import editors

    return sorted(editors.names(), key=lambda n: (editors.get(n).display_order, n))


def latency_rows(name: str) -> dict[str, tuple[dict, str]]:
    """The latency rows of editor ``name``: ``{row: (config overrides, fill)}`` (none when its
    inference cost does not grow with stored edits)."""
    import editors

    cls = editors.get(name)
    if cls.latency_fill is None:
        return {}
    return {name: ({}, cls.latency_fill), **cls.latency_variants}


def synthetic_state(name: str, editor, real: dict[str, torch.Tensor], n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state_dict of ``editor`` holding ``n`` stored edits, grown from its ``real`` state (at least
    one real edit): the editor's own :meth:`~bench.core.editor.Editor.synthetic_state`, seeded per ``n``."""
    if editor.latency_fill is None:
        raise ValueError(f"no synthetic memory for editor {name!r}")
    return editor.synthetic_state(real, n, torch.Generator().manual_seed(seed + n))


# ----- helpers ---------------------------------------------------------------------------------------
def _peak_mb(dev: torch.device) -> float:
    return round(peak_memory_mb(dev), 1)


@torch.no_grad()
def forward_seconds(backbone, batch, repeats: int) -> float:
    """Best wall time of ``backbone.forward(batch)`` over ``repeats`` runs (after one warm-up):
    the minimum, as other processes on a shared machine only ever add time."""
    dev = backbone.device
    backbone.forward(batch)
    times = []
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        backbone.forward(batch)
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return min(times)


def compose(model: str, data: str, editor: str | None, overrides: list[str]):
    """The run config ``model=... [editor=...]`` with the user's overrides (per-backbone editor values
    from conf/editor_model, as ``python -m bench`` composes them)."""
    from .config import compose as config_compose

    mine = [f"model={model}", f"data={data}"] + ([f"editor={editor}"] if editor else [])
    ed_over = []
    general = []
    known = {r for n in editor_names() for r in (n, *latency_rows(n))}
    for o in overrides:
        head = o.split("=", 1)[0].lstrip("+~")
        first = head.split(".", 1)[0]
        if first in known:
            if editor and first == editor:
                ed_over.append("editor." + o.split(".", 1)[1])
        else:
            general.append(o)
    # per-(editor, backbone) values come from conf/editor_model through the config's defaults
    return config_compose(*(mine + general + ed_over))


def _discard(editor) -> None:
    try:
        editor.reset()
    finally:
        editor.detach()


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


# ----- the benchmark ---------------------------------------------------------------------------------
class SpeedRun:
    def __init__(self, args, overrides: list[str]) -> None:
        self.args, self.overrides = args, overrides
        self.out = Path(args.out)
        self.res: dict = {
            "command": " ".join(["python -m bench.speed", *sys.argv[1:]]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "model": args.model,
            "data": args.data,
            "edits": args.edits,
            "stored": args.stored,
            "batch": args.batch,
            "threads": torch.get_num_threads(),
            "overrides": overrides,
            "scoring": None,
            "generation": None,
            "editors": {},
            "latency": {},
            "fill": {},
            "errors": {},
        }

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for name, text in (
            ("speed.json", dumps(self.res, indent=1, default=str) + "\n"),  # strict JSON (bench.core.io)
            ("speed.md", markdown(self.res)),
        ):
            tmp = self.out / (name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.out / name)

    def run(self) -> dict:
        import editors as editor_registry

        from .backbones import build_backbone
        from .data import build_data, with_images
        from .run import seed_everything, select_stream, versions

        a = self.args
        base_cfg = compose(a.model, a.data, None, self.overrides)
        self.res["model_config"] = {k: base_cfg.model.get(k) for k in ("name", "dtype", "device", "random_init")}
        self.res["versions"] = versions()
        seed_everything(base_cfg.seed)
        data = build_data(base_cfg.data, ("eval",))
        stream, _ = with_images(select_stream(data["eval"], a.edits, False, base_cfg.seed), skip_missing=False)
        requests = [stream.request(i) for i in range(len(stream))]
        probes = [p for i in range(len(stream)) for p in stream.probes(i)]
        log.info("backbone %s, %d edits of %s, %d probes", a.model, len(requests), a.data, len(probes))
        t0 = time.time()
        bb = build_backbone(base_cfg.model)
        self.res["backbone_load_seconds"] = round(time.time() - t0, 2)
        dev = bb.device
        self.res["device"] = str(dev)

        # 1. scoring: batched vs per-sample
        scored = probes if a.score_probes is None else probes[: a.score_probes]
        if scored:
            from .protocol import ProtocolConfig

            pc = ProtocolConfig.from_cfg(base_cfg.get("protocol"))
            tf = self._scoring(bb, scored, pc.score_batch_size)
            self._generation(bb, scored, pc, *tf)

        # 2./3. base forward latency, then every editor
        batch = bb.prepare(probes[: a.batch])
        base = forward_seconds(bb, batch, a.repeats)
        self.res["latency"]["base_ms"] = round(base * 1e3, 2)  # at the start; each editor has its own below
        train = None
        for name in a.editors:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            row: dict = {"status": "running"}
            self.res["editors"][name] = row
            editor = None
            try:
                rows = latency_rows(name)
                if rows:  # the unedited backbone just before (and again just after) this editor
                    base = forward_seconds(bb, batch, a.repeats)
                cfg = compose(a.model, a.data, name, self.overrides)
                seed_everything(cfg.seed)
                editor = self._build(name, cfg, bb, requests, row)
                if editor_registry.get(name).needs_training:
                    if train is None:
                        train = build_data(base_cfg.data, ("train",))["train"]
                    t0 = time.time()
                    editor.fit(train)
                    row["fit_s"] = round(time.time() - t0, 2)
                secs = []
                for r in requests:
                    _sync(dev)
                    t0 = time.perf_counter()
                    editor.edit(r)
                    _sync(dev)
                    secs.append(time.perf_counter() - t0)
                row.update(
                    s_per_edit=round(sum(secs) / len(secs), 3),
                    edit_s=[round(s, 3) for s in secs],
                    memory_bytes=editor.memory_bytes(),
                    bytes_per_edit=round(editor.memory_bytes() / len(secs)),
                    status="ok",
                )
                log.info("%s: %.2f s/edit over %d edits", name, row["s_per_edit"], len(secs))
                for row_name, (over, fill) in rows.items():
                    if row_name == name:
                        self._latency(name, editor, batch, len(secs), fill)
                    else:
                        self._variant(row_name, over, fill, editor, cfg, batch, len(secs))
            except Exception as e:  # noqa: BLE001 - one editor's failure must not lose the others
                row.update(status="failed", error=f"{type(e).__name__}: {e}")
                self.res["errors"][name] = traceback.format_exc()
                log.error("%s failed: %s", name, e)
            finally:
                row["peak_mem_mb"] = _peak_mb(dev)
                if editor is not None:
                    try:
                        _discard(editor)
                    except Exception as e:  # noqa: BLE001
                        log.error("%s: reset failed: %s", name, e)
                for n in latency_rows(name):
                    if n in self.res["latency"]:
                        self._ratios(n, base, forward_seconds(bb, batch, a.repeats))
                self.save()
        self.res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        self.save()
        return self.res

    def _scoring(self, bb, probes, batch_size: int | None = None) -> tuple[float, float]:
        """Batched teacher-forced scoring (``protocol.score_batch_size``, as a run scores) against a
        per-sample loop; returns the batched wall and process CPU seconds."""
        dev = bb.device
        bb.score(probes[: min(len(probes), 4)], batch_size)  # warm-up (image features, allocator)
        _sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        batched = bb.score(probes, batch_size)
        _sync(dev)
        t_b, c_b = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        single = [bb.score([p])[0] for p in probes]
        _sync(dev)
        t_s = time.perf_counter() - t0
        diff = sum(x.pred_ids != y.pred_ids for x, y in zip(batched, single, strict=True))
        self.res["scoring"] = {
            "probes": len(probes),
            "batch_size": batch_size or bb.batch_size,
            "batched_s": round(t_b, 3),
            "per_sample_s": round(t_s, 3),
            "speedup": round(t_s / t_b, 2),
            "identical_predictions": diff == 0,
            "differing": diff,
        }
        log.info("scoring: batched %.2f s, per-sample %.2f s (%.2fx), %d differing", t_b, t_s, t_s / t_b, diff)
        self.save()
        return t_b, c_b

    def _generation(self, bb, probes, pc, t_tf: float, c_tf: float) -> None:
        """Greedy generation (``backbone.generate`` with ``protocol.generation``'s values, batch size as a run
        takes it) on the probes teacher-forced scoring just timed (``t_tf`` wall, ``c_tf`` process CPU seconds,
        batched), after the same warm-up; then one probe at a time, whose token ids must be the batched ones.
        On CPU the ratio of process CPU times is kept too: other processes on a shared machine stretch wall
        times, hardly this process's CPU time."""
        dev = bb.device
        bs = pc.gen_batch_size or pc.score_batch_size or bb.batch_size
        n, stop = pc.max_new_tokens, tuple(pc.stop)
        bb.generate(probes[: min(len(probes), 4)], n, stop, bs)  # warm-up, as for scoring
        _sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        batched = bb.generate(probes, n, stop, bs)
        _sync(dev)
        t_b, c_b = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        single = [bb.generate([p], n, stop, bs)[0] for p in probes]
        _sync(dev)
        t_s = time.perf_counter() - t0
        diff = sum(x.ids != y.ids for x, y in zip(batched, single, strict=True))
        tokens = [len(g.ids) for g in batched]
        # the batches generate() ran: each runs as many forwards as its longest row has tokens (the prompt
        # pass gives the first token, every decode step one more), for every row of the batch
        chunks = bb._by_size(list(probes), bs)
        steps = [max(tokens[i] for i in c) for c in chunks]
        row_steps = sum(len(c) * k for c, k in zip(chunks, steps, strict=True))
        self.res["generation"] = g = {
            "probes": len(probes),
            "max_new_tokens": n,
            "stop": list(stop),
            "batch_size": bs,
            "teacher_forced_s": round(t_tf, 3),
            "batched_s": round(t_b, 3),
            "ratio": round(t_b / t_tf, 2),  # generate / teacher-forced, both batched
            "target_ratio": 2.5,
            **(
                {
                    "teacher_forced_cpu_s": round(c_tf, 3),
                    "batched_cpu_s": round(c_b, 3),
                    "cpu_ratio": round(c_b / c_tf, 2),
                }
                if dev.type == "cpu" and c_tf > 0
                else {}
            ),
            "per_sample_s": round(t_s, 3),
            "speedup": round(t_s / t_b, 2),
            "tokens_mean": round(sum(tokens) / len(tokens), 2),
            "tokens_max": max(tokens),
            "stopped": {k: sum(x.stop == k for x in batched) for k in ("eos", "stop", "length")},
            "batches": len(chunks),
            "batch_steps_mean": round(sum(steps) / len(steps), 2),  # forwards per batch: its longest row's tokens
            "row_steps_used": round(sum(tokens) / row_steps, 3),  # share of the rows' forwards that made a token
            "identical_ids": diff == 0,
            "differing": diff,
        }
        log.info(
            "generation: batched %.2f s = %.2fx teacher-forced (%.2f s; CPU time %sx), per-sample %.2f s; %.2f "
            "tokens/probe (max %d), stopped %s; %.2f forwards per batch vs %.2f tokens per row; %d differing",
            t_b,
            g["ratio"],
            t_tf,
            g.get("cpu_ratio", "-"),
            t_s,
            g["tokens_mean"],
            g["tokens_max"],
            g["stopped"],
            g["batch_steps_mean"],
            g["tokens_mean"],
            diff,
        )
        self.save()

    @staticmethod
    def _build(name: str, cfg, bb, requests, row: dict):
        """The editor as its class builds it for timing (:meth:`~bench.core.editor.Editor.build_for_timing`)."""
        import editors as editor_registry

        editor, note = editor_registry.get(name).build_for_timing(
            bb, cfg.editor, requests, cfg.seed, "random_init" in cfg.model and cfg.model.random_init
        )
        if note:
            row["note"] = note
            log.warning("%s: %s", name, note)
        return editor

    def _ratios(self, name: str, before: float, after: float) -> None:
        """Ratios to the unedited backbone timed just before and just after the editor (the faster)."""
        base = min(before, after)
        lat = self.res["latency"][name]
        for c in list(lat.values()):
            if isinstance(c, dict):
                c["ratio"] = round(c["ms"] / 1e3 / base, 3)
        lat["base_ms"] = round(base * 1e3, 2)
        log.info(
            "%s: latency ratios to the unedited backbone (%.1f ms): %s",
            name,
            base * 1e3,
            ", ".join(f"{k}: {c['ratio']:.2f}x" for k, c in lat.items() if isinstance(c, dict)),
        )

    def _latency(self, name: str, editor, batch, n_real: int, fill: str) -> None:
        real = editor.state_dict()
        rows = {}
        self.res["latency"][name] = rows
        self.res["fill"][name] = fill
        for n in self.args.stored:
            if n == 0:
                editor.reset()
                how = "empty"
            elif n == n_real:
                editor.load_state_dict(real)
                how = "real"
            else:
                editor.load_state_dict(synthetic_state(name, editor, real, n))
                how = "synthetic"
            t = forward_seconds(editor.backbone, batch, self.args.repeats)
            cell = rows[str(n)] = {"ms": round(t * 1e3, 2), "fill": how, "memory_bytes": editor.memory_bytes()}
            if hasattr(editor, "routing_stats"):  # what the batch's probes are routed to (cost driver)
                cell["routing"] = editor.routing_stats(batch)
            log.info(
                "%s with %d stored edits (%s): %.1f ms%s",
                name,
                n,
                how,
                t * 1e3,
                f", routing {cell['routing']}" if "routing" in cell else "",
            )
            self.save()
        self._marginal(name, rows)
        editor.load_state_dict(real)

    def _marginal(self, name: str, rows: dict) -> None:
        """Bytes per stored edit beyond the fixed part: between the two largest positive counts
        (or between 0 and the one positive count)."""
        ns = sorted(int(n) for n in rows if n.isdigit())
        pos = [n for n in ns if n > 0]
        pair = pos[-2:] if len(pos) >= 2 else ([0, pos[0]] if pos and 0 in ns else None)
        if pair:
            lo, hi = pair
            b = (rows[str(hi)]["memory_bytes"] - rows[str(lo)]["memory_bytes"]) / (hi - lo)
            self.res["editors"].setdefault(name, {})["marginal_bytes_per_edit"] = round(b)

    def _variant(self, name: str, overrides: dict, fill: str, editor, cfg, batch, n_real: int) -> None:
        """Latency row ``name`` of ``editor``'s real edits under other settings (``overrides``; WISE:
        ``wise_retrieve``): one editor attached at a time."""
        from omegaconf import open_dict

        import editors as editor_registry

        real = editor.state_dict()
        editor.reset()
        editor.detach()
        with open_dict(cfg):
            for k, v in overrides.items():
                cfg.editor[k] = v
        ed = editor_registry.build(cfg.editor, editor.backbone)
        self.res["editors"][name] = {"status": f"ok (latency only: memories from {editor.name}'s real edits)"}
        try:
            ed.load_state_dict(real)
            self._latency(name, ed, batch, n_real, fill)
        finally:
            _discard(ed)
            editor.load_state_dict(real)


# ----- report -----------------------------------------------------------------------------------------
def markdown(res: dict) -> str:
    out = [
        (
            f"### Speed: `{res['model']}` + `{res['data']}`, {res['edits']} edits, device {res.get('device', '?')}, "
            f"{res['threads']} thread(s)\n"
        ),
        f"Command: `{res['command']}`\n",
    ]
    sc = res.get("scoring")
    if sc:
        out += [
            "| scoring | probes | batched s | per-sample s | batched speed-up | identical predictions |",
            "|---|---|---|---|---|---|",
            (
                f"| teacher-forced | {sc['probes']} | {sc['batched_s']} | {sc['per_sample_s']} | {sc['speedup']}x | "
                f"{'yes' if sc['identical_predictions'] else 'NO (' + str(sc['differing']) + ' differ)'} |"
            ),
            "",
        ]
    ge = res.get("generation")
    if ge:
        stop = ", ".join(repr(x).replace("|", "/") for x in ge["stop"]) or "none"
        cpu = (
            f"; CPU time {ge['batched_cpu_s']} / {ge['teacher_forced_cpu_s']} s = {ge['cpu_ratio']}x"
            if "cpu_ratio" in ge
            else ""
        )
        out += [
            (
                f"Generation (greedy, KV cache, at most {ge['max_new_tokens']} new tokens, stop strings {stop}, "
                f"batches of {ge['batch_size']}) on the same {ge['probes']} probes:\n"
            ),
            "| generation | batched s | teacher-forced s | generate / teacher-forced | per-sample s | batched speed-up "
            "| identical token ids |",
            "|---|---|---|---|---|---|---|",
            (
                f"| greedy | {ge['batched_s']} | {ge['teacher_forced_s']} | {ge['ratio']}x (target "
                f"{ge['target_ratio']}x){cpu} | {ge['per_sample_s']} | {ge['speedup']}x | "
                f"{'yes' if ge['identical_ids'] else 'NO (' + str(ge['differing']) + ' differ)'} |"
            ),
            "",
            (
                f"Tokens generated per probe: mean {ge['tokens_mean']}, max {ge['tokens_max']}; stopped by "
                + ", ".join(f"{k} {v}" for k, v in ge["stopped"].items())
                + f". Forwards per batch (its longest row): mean {ge['batch_steps_mean']} over {ge['batches']} "
                f"batches, against {ge['tokens_mean']} tokens per row: {ge['row_steps_used']:.0%} of the "
                "rows' forwards made a token.\n"
            ),
        ]
    eds = res.get("editors", {})
    if eds:
        peak = "peak MB (process RSS so far)" if res.get("device") == "cpu" else "peak MB (this editor)"
        out += [
            f"| editor | s/edit | fit s | bytes/edit (stream) | marginal bytes/stored edit | {peak} | status |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in eds.items():
            out.append(
                f"| {name} | {r.get('s_per_edit', '-')} | {r.get('fit_s', '-')} | {r.get('bytes_per_edit', '-')} | "
                f"{r.get('marginal_bytes_per_edit', '-')} | {r.get('peak_mem_mb', '-')} | "
                f"{str(r.get('status', '')).replace('|', '/')[:80]}"
                f"{' ' + r['error'].replace('|', '/')[:120] if 'error' in r else ''} |"
            )
        out.append("")
    lat = res.get("latency", {})
    stored = [str(n) for n in res.get("stored", [])]
    names = [n for n in lat if n != "base_ms"]
    if names:
        out += [
            (
                f"Forward latency of one batch of {res['batch']} probes by stored edits, as a ratio to the unedited "
                "backbone timed just before and after each editor (best of the repeats; `syn`: synthetic memory):\n"
            ),
            "| editor | base ms | " + " | ".join(stored) + " |",
            "|---|---|" + "---|" * len(stored),
        ]
        for n in names:
            cells = []
            for k in stored:
                c = lat[n].get(k)
                r = "?" if c is None or "ratio" not in c else f"{c['ratio']:.2f}x"
                cells.append(
                    "-" if c is None else f"{r} ({c['ms']:.0f} ms{', syn' if c['fill'] == 'synthetic' else ''})"
                )
            out.append(f"| {n} | {lat[n].get('base_ms', '?')} | " + " | ".join(cells) + " |")
        routed = [
            (n, k, lat[n][k]["routing"])
            for n in names
            for k in stored
            if isinstance(lat[n].get(k), dict) and "routing" in lat[n][k]
        ]
        if routed:
            out += ["", "Stored edits each routed probe of the batch reaches (mean / max over the routed probes):", ""]
            for n in dict.fromkeys(x[0] for x in routed):
                out.append(
                    f"- {n}: "
                    + ", ".join(
                        f"{k} stored: {r['kept_mean']} / {r['kept_max']} ({r['routed']} routed)"
                        for m, k, r in routed
                        if m == n
                    )
                )
        out += (
            [
                "",
                (
                    "Synthetic memories (loaded through `load_state_dict`, grown from the editor's real state after "
                    "the stream):"
                ),
                "",
            ]
            + [f"- {n}: {res.get('fill', {}).get(n, '')}" for n in names]
            + [""]
        )
    if res.get("errors"):
        out.append("Failed: " + ", ".join(res["errors"]) + " (tracebacks in speed.json)\n")
    return "\n".join(out) + "\n"


def parse(argv: list[str]):
    p = argparse.ArgumentParser(
        prog="python -m bench.speed",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="smol_llava", help="conf/model/<name>.yaml (default smol_llava)")
    p.add_argument("--data", default="toy_evqa", help="conf/data/<name>.yaml (default toy_evqa)")
    p.add_argument("--edits", type=int, default=20, help="edit stream length (default 20)")
    p.add_argument(
        "--editors", default=",".join(editor_names()), help=f"comma list (default {','.join(editor_names())})"
    )
    p.add_argument("--stored", default="0,100,1000,10000", help="stored-edit counts for the latency table")
    p.add_argument(
        "--score-probes",
        type=int,
        default=None,
        help="score only the stream's first N probes in the scoring stage (default all; 0 skips it)",
    )
    p.add_argument("--batch", type=int, default=8, help="probes in the fixed latency batch (default 8)")
    p.add_argument(
        "--repeats", type=int, default=5, help="timed forwards per latency cell, the fastest counts (default 5)"
    )
    p.add_argument("--out", default=None, help="output folder (default results/speed/<timestamp>)")
    args, rest = p.parse_known_args(argv)
    bad = [r for r in rest if r.startswith("-")]
    if bad:
        p.error(f"unknown options {bad}")
    overrides = []
    for o in rest:
        if o.startswith(("model=", "+model=")):
            args.model = o.split("=", 1)[1]
        elif o.startswith("data="):
            args.data = o.split("=", 1)[1]
        else:
            overrides.append(o)
    args.editors = [e.strip() for e in args.editors.split(",") if e.strip()]
    unknown = sorted(set(args.editors) - set(editor_names()))
    if unknown:
        p.error(f"--editors: unknown {unknown}; valid: {', '.join(editor_names())}")
    args.stored = sorted({int(x) for x in args.stored.split(",") if x.strip()})
    if args.edits < 1 or any(n < 0 for n in args.stored) or (args.score_probes or 0) < 0:
        p.error("--edits must be >= 1, --stored counts and --score-probes >= 0")
    if args.out is None:
        from .config import resolve

        # relative to the working directory, as run dirs are (never inside an installed package)
        args.out = str(resolve("results/speed") / time.strftime("%Y-%m-%d_%H-%M-%S"))
    return args, overrides


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("bench").setLevel(logging.INFO)
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    run = SpeedRun(args, overrides)
    try:
        res = run.run()
    finally:
        run.save()
    print(markdown(res))
    print(f"written: {Path(args.out) / 'speed.json'} and speed.md")
    sc = res.get("scoring") or {}
    ge = res.get("generation") or {}
    bad = []
    if sc and not sc.get("identical_predictions"):
        bad.append(f"batched and per-sample scoring disagree on {sc.get('differing')} probes")
    if ge and not ge.get("identical_ids"):
        bad.append(f"batched and per-sample generation disagree on {ge.get('differing')} probes")
    if bad:
        raise SystemExit("; ".join(bad))
    return res


if __name__ == "__main__":
    main()
