"""Dataset construction from the ``data`` config group, and the dataset check.

``python -m bench.data check data=evqa data.root=/path/to/images [data.ann_root=...] [model=<name>] [edits=N]``
reports, per split: records, probe counts by kind, malformed records (file,
index, field), unusable images (missing, undecodable or outside the image root:
count and the first few, with record index and field), duplicate edits,
misspelt field names, an empty list, too few records for ``edits=N``, and prompts
longer than the context (``model=<name>``'s, from its config and tokenizer without its
weights; otherwise :data:`DEFAULT_CONTEXT`, said in the output), record and field named.
It exits 2 when a run on the dataset would stop (as a run's user errors do), 0
otherwise. It writes nothing outside the project's ``data/generated`` cache (a
toy set is generated only there).
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .config import resolve  # (relative paths: the working directory; pkg://bench/...: the package)
from .core.errors import UserError, report_user_errors
from .core.records import PROBE_KINDS, Prompts, RecordError, RecordSet, read_json, validate

log = logging.getLogger(__name__)


def toy_cache() -> Path:
    """Where toy sets are generated without asking: ``data/generated`` of the working directory."""
    return resolve("data/generated")


def data_config(cfg) -> DictConfig:
    """``cfg`` (a ``data`` config) as its typed config (:class:`bench.core.schema.DataSchema`): itself when
    Hydra composed it with the schema, else merged over it (a YAML of the user's that names no schema, a
    dict), so every key has its type and default; a wrong key or value is a ``UserError`` naming it."""
    from .core.schema import DataSchema, typed

    return typed(DataSchema, cfg, "data")


def image_root(cfg, generate: bool = True) -> Path:
    """The dataset's image root (generating the toy set there when ``cfg`` is one, unless
    ``generate`` is false and the root lies outside the toy cache)."""
    cfg = data_config(cfg)
    if OmegaConf.is_missing(cfg, "root"):
        raise UserError(f"data.root: {cfg.name} needs its image root: add data.root=/path/to/images")
    root = resolve(cfg.root)
    toy = cfg.toy
    if toy is not None:
        from .toy.generate import ensure_toy, is_toy_current

        if generate or toy_cache() == root or toy_cache() in root.parents:
            log.info("embedded dataset %s (seed %s) under %s", toy.kind, toy.seed, root)
            ensure_toy(toy.kind, root, toy.seed, toy.n_train, toy.n_eval)
        elif not is_toy_current(toy.kind, root, toy.seed, toy.n_train, toy.n_eval):
            raise UserError(
                f"data.root: no generated {toy.kind} set at {root}, and the check generates toy sets only "
                f"under {toy_cache()}; a run generates one into an empty or new folder"
            )
    return root


#: the annotation splits of a dataset (``train_file``, ``eval_file``)
SPLITS = ("train", "eval")


def stream_split(cfg) -> str:
    """The split the edit stream is drawn from: ``data.split`` (``eval``, the default, for every reported
    run; ``train`` to tune an editor on records that no reported stream contains)."""
    return data_config(cfg).split.value  # the schema allows train and eval only


def build_data(cfg, splits: tuple[str, ...] = ("train", "eval")) -> dict[str, RecordSet]:
    """Load (generating toy sets when needed) the requested splits of ``cfg``."""
    cfg = data_config(cfg)
    root = image_root(cfg)
    prompts = Prompts.from_cfg(cfg.prompts)
    files = dict(zip(SPLITS, (cfg.train_file, cfg.eval_file), strict=True))
    out = {}
    for s in splits:
        if s not in files:
            raise ValueError(f"data: unknown split {s!r}; valid: {sorted(files)}")
        out[s] = RecordSet(resolve(files[s]), root, prompts, allow_absolute_paths=cfg.allow_absolute_paths)
    return out


def fingerprint(cfg, data: dict[str, RecordSet]) -> dict:
    """Provenance of a run's data (``summary.json``'s ``data_fingerprint``): each loaded split's
    annotation file and its sha256, and for a generated toy set the generator's ``meta.json``
    (kind, seed, sizes, generator version). Images are not hashed (real sets have thousands)."""
    import hashlib

    out: dict = {}
    for split, rs in sorted(data.items()):
        h = hashlib.sha256()
        with open(rs.file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out[split] = {"file": str(rs.file), "sha256": h.hexdigest()}
    if data_config(cfg).toy is not None:
        from .toy.generate import read_meta

        out["generator"] = read_meta(resolve(cfg.root))  # build_data generated or checked it
    return out


def dedupe(rs: RecordSet, mode: str = "keep") -> tuple[RecordSet, int]:
    """``(records, n_dropped)``: duplicate edits (same src, alt, image) reported and kept
    (``keep``), dropped (``drop``) or refused (``error``), per ``data.duplicates``."""
    dups = rs.duplicates()
    if not dups:
        return rs, 0
    listing = ", ".join(f"record {i} = record {j}" for i, j in dups[:5]) + (" ..." if len(dups) > 5 else "")
    msg = f"{rs.file}: {len(dups)} duplicate edit records (same src, alt, image): {listing}"
    if mode == "error":
        raise UserError(msg + "; set data.duplicates=keep or drop")
    if mode == "keep":
        log.warning("%s; kept (data.duplicates=drop drops them)", msg)
        return rs, 0
    bad = {i for i, _ in dups}
    keep = [i for i in range(len(rs)) if rs.source_index(i) not in bad]
    log.warning("%s; dropped (data.duplicates=drop)", msg)
    return rs.select(keep), len(dups)


#: the record field each probe kind's prompt comes from (named in the prompt-length errors)
FIELD_OF_KIND = {
    "rel": "src",
    "t_gen": "rephrase",
    "m_gen": "src",
    "t_loc": "loc",
    "m_loc": "m_loc_q",
    "port": "port_new",
}
#: tokens allowed for the prompt template around a probe (image marker, newline, special tokens)
TEMPLATE_TOKENS = 16
#: context the dataset check measures prompts against when no model is given: 2048 tokens, the shortest
#: context of the paper backbones (BLIP-2 OPT-2.7B and MiniGPT-4's Vicuna-7B; LLaVA-1.5 has 4096,
#: smol_llava 8192, the test backbone tiny 512), in SmolLM2 tokens, image tokens not counted
DEFAULT_CONTEXT = 2048


def long_prompts(rs: RecordSet, tokenizer, max_tokens: int, image_tokens: int = 0) -> list[str]:
    """``record <i> field '<f>' (<kind> probe): ~<n> tokens`` for every probe of ``rs`` longer than
    ``max_tokens`` (prompt, target, image tokens and :data:`TEMPLATE_TOKENS`). Tokenises only."""
    over = []
    for i in range(len(rs)):
        for p in rs.probes(i):
            n = len(tokenizer(p.prompt + " " + p.target, add_special_tokens=True)["input_ids"])
            n += (image_tokens if p.image is not None else 0) + TEMPLATE_TOKENS
            if n > max_tokens:
                over.append(
                    f"record {p.record} field '{FIELD_OF_KIND.get(p.kind, p.kind)}' ({p.kind} probe): ~{n} tokens"
                )
    return over


def check_prompt_lengths(rs: RecordSet, backbone, first: int = 5) -> None:
    """Every probe of ``rs`` must fit the backbone's context (prompt, image tokens, target);
    raises a :class:`UserError` naming record and field otherwise. Tokenises only."""
    limit = getattr(getattr(getattr(backbone, "lm", None), "config", None), "max_position_embeddings", None)
    if not limit:
        return
    n_img = int(getattr(backbone, "num_image_tokens", 0) or 0)
    over = long_prompts(rs, backbone.tokenizer, int(limit), n_img)
    if over:
        more = f"\n  ... and {len(over) - first} more" if len(over) > first else ""
        raise UserError(
            f"{rs.file}: {len(over)} probes longer than the context of {getattr(backbone, 'name', 'the backbone')} "
            f"({limit} tokens):\n  " + "\n  ".join(over[:first]) + more
        )


class MissingImagesError(FileNotFoundError):
    """Images of some records are missing, undecodable or outside the image root (the
    message is the report)."""

    user_error = True


def missing_report(rs: RecordSet, missing: list[tuple[int, str, str]], first: int = 5) -> str:
    """Count of missing image references and files, then the first few (record, field, path)."""
    n_files = len({p for _, _, p in missing})
    n_recs = len({i for i, _, _ in missing})
    lines = [
        f"{len(missing)} missing or unusable image references ({n_files} files, {n_recs} of {len(rs)} records) "
        f"under image root {rs.image_root} for {rs.file}"
    ]
    lines += [f"  record {i} field '{f}': {p}" for i, f, p in missing[:first]]
    if len(missing) > first:
        lines.append(f"  ... and {len(missing) - first} more")
    return "\n".join(lines)


def with_images(rs: RecordSet, skip_missing: bool) -> tuple[RecordSet, int]:
    """``(records, n_skipped)``: ``rs`` when every image exists; otherwise raise
    :class:`MissingImagesError` with the report, or, with ``skip_missing``, drop
    the records that lack an image."""
    missing = rs.bad_images()
    if not missing:
        return rs, 0
    if not skip_missing:
        raise MissingImagesError(
            missing_report(rs, missing) + "\nFix data.root (or download the images), or set data.skip_missing=true"
        )
    bad = {i for i, _, _ in missing}
    keep = [i for i in range(len(rs)) if rs.source_index(i) not in bad]
    log.warning("skipping %d records of %s with missing images", len(rs) - len(keep), rs.file)
    return rs.select(keep), len(rs) - len(keep)


@dataclass
class SplitCheck:
    """What the dataset check found in one split's annotation file."""

    split: str
    file: Path
    records: int = 0
    errors: list[RecordError] = field(default_factory=list)
    missing: list[tuple[int, str, str]] = field(default_factory=list)
    probes: Counter = field(default_factory=Counter)
    image_root: Path | None = None
    duplicates: list[tuple[int, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: other reasons a run stops (empty file, too few records, duplicates with data.duplicates=error)
    problems: list[str] = field(default_factory=list)
    #: probes longer than the context (:func:`long_prompts`), measured against ``budget``
    long: list[str] = field(default_factory=list)
    budget: str = ""  # what prompts were measured against, or why they were not
    lengths_checked: bool = False
    #: data.skip_missing: a run drops the records with missing images instead of stopping
    skip_missing: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors and not self.problems and not self.long and (self.skip_missing or not self.missing)


@dataclass
class PromptBudget:
    """What the dataset check measures prompts against: a model's context (:meth:`context_limit` of its
    backbone) or :data:`DEFAULT_CONTEXT`; ``what`` says which in the check's output."""

    tokenizer: object
    max_tokens: int
    image_tokens: int
    what: str


def prompt_budget(model_cfg=None) -> PromptBudget | str:
    """The budget for ``model_cfg`` (a ``model`` config; None: the default context), or why prompt
    lengths cannot be checked. A model whose files are missing raises as a run would."""
    note = ""
    if model_cfg is not None:
        from .backbones import backbone_class
        from .core.schema import model_config

        model_cfg = model_config(model_cfg)
        lim = backbone_class(model_cfg).context_limit(model_cfg)
        if lim is not None:
            per_image = f" ({lim.image_tokens} per image)" if lim.image_tokens else ""
            return PromptBudget(
                lim.tokenizer,
                lim.max_tokens,
                lim.image_tokens,
                f"{model_cfg.name}'s context, {lim.max_tokens} tokens{per_image}",
            )
        note = f"{model_cfg.name}'s is not known without loading its weights"
    try:
        from .backbones.embedded import smollm2_tokenizer

        tok = smollm2_tokenizer()
    except (ImportError, OSError, RuntimeError) as e:
        return f"not checked (no tokenizer to count tokens: {e})"
    hint = note or "add model=<name> to use a model's"
    return PromptBudget(
        tok,
        DEFAULT_CONTEXT,
        0,
        f"a default context of {DEFAULT_CONTEXT} SmolLM2 tokens (image tokens not counted; {hint})",
    )


def _validate_all(file: Path) -> tuple[int, list[RecordError]]:
    """(number of records, every malformed record) without stopping at the first."""
    try:
        raw = read_json(file)
    except RecordError as e:
        return 0, [e]
    if not isinstance(raw, list):
        return 0, [RecordError(file, None, None, f"expected a JSON list of records, got {type(raw).__name__}")]
    errors = []
    for i, r in enumerate(raw):
        try:
            validate(r, file, i)
        except RecordError as e:
            errors.append(e)
    return len(raw), errors


def check(
    cfg,
    splits: tuple[str, ...] = ("train", "eval"),
    budget: PromptBudget | str | None = None,
    edits: int | None = None,
    edits_given: bool = False,
    trains: bool = False,
) -> list[SplitCheck]:
    """Check the splits of the dataset ``cfg`` (a ``data`` config) without loading a model: what a run
    refuses before its first edit. ``budget``: measure prompt lengths against it (:func:`prompt_budget`);
    ``edits``: the stream length (too few records is an error when ``edits_given``, else a warning);
    ``trains``: the editor trains on the train split (an empty one is then an error)."""
    cfg = data_config(cfg)
    root = image_root(cfg, generate=False)
    stream = stream_split(cfg)
    dup_mode = cfg.duplicates.value
    skip = cfg.skip_missing
    out = []
    for s in splits:
        res = SplitCheck(s, resolve(cfg[f"{s}_file"]), skip_missing=skip)
        res.records, res.errors = _validate_all(res.file)
        if not res.errors and not res.records:
            if s == stream or trains:
                use = "the edit stream is drawn from it" if s == stream else "the editor trains on it"
                res.problems.append(f"{res.file}: no records (an empty list); {use}")
            else:
                res.warnings.append(f"{res.file}: no records (an empty list); editors that train on it refuse it")
        if not res.errors:
            rs = RecordSet(
                res.file,
                root,
                Prompts.from_cfg(cfg.prompts),
                allow_absolute_paths=cfg.allow_absolute_paths,
            )
            res.image_root = rs.image_root
            res.missing = rs.bad_images()
            res.duplicates = rs.duplicates()
            res.warnings += rs.warnings
            for i in range(len(rs)):
                res.probes.update(p.kind for p in rs.probes(i))
            if res.duplicates and dup_mode == "error":
                res.problems.append(
                    f"{res.file}: {len(res.duplicates)} duplicate edit records and data.duplicates=error"
                )
            usable = res.records - (len({i for i, _, _ in res.missing}) if skip else 0)
            usable -= len(res.duplicates) if dup_mode == "drop" else 0
            if s == stream and res.records and edits is not None and usable < edits:
                msg = f"{res.file}: edits={edits} but only {usable} usable records"
                if edits_given:
                    res.problems.append(msg)
                else:
                    res.warnings.append(f"{msg} (edits={edits} is the default; a run needs edits<={usable})")
            if isinstance(budget, PromptBudget):
                res.long = long_prompts(rs, budget.tokenizer, budget.max_tokens, budget.image_tokens)
                res.lengths_checked = True
        res.budget = budget.what if isinstance(budget, PromptBudget) else (budget or "")
        out.append(res)
    return out


def _first_lines(items: list, first: int) -> list[str]:
    """The first ``first`` of ``items`` as indented report lines, and how many more there are."""
    out = [f"    {x}" for x in items[:first]]
    if len(items) > first:
        out.append(f"    ... and {len(items) - first} more")
    return out


def format_check(name: str, results: list[SplitCheck], first: int = 5) -> str:
    lines = [f"dataset {name}"]
    budget = next((r.budget for r in results if r.budget), "")
    if budget:
        lines.append(
            f"prompt lengths: {budget}" if budget.startswith("not checked") else f"prompts measured against {budget}"
        )
    for r in results:
        lines.append(f"[{r.split}] {r.file}: {r.records} records")
        if r.errors:
            lines.append(f"  malformed records: {len(r.errors)}")
            lines += _first_lines(r.errors, first)
            lines.append("  probes and images not checked until the malformed records are fixed")
            continue
        lines.append("  malformed records: none")
        counts = ", ".join(f"{k} {r.probes[k]}" for k in PROBE_KINDS if r.probes[k])
        lines.append(f"  probes: {counts} (total {sum(r.probes.values())})" if counts else "  probes: none")
        if r.missing:
            n_files = len({p for _, _, p in r.missing})
            lines.append(f"  missing images: {len(r.missing)} references, {n_files} files, under {r.image_root}")
            lines += _first_lines([f"record {i} field '{f}': {p}" for i, f, p in r.missing], first)
        else:
            lines.append(f"  missing images: none (image root {r.image_root}; every image opened and decoded)")
        if r.duplicates:
            lines.append(
                f"  duplicate edits (same src, alt, image): {len(r.duplicates)} "
                "(kept with a warning; data.duplicates=drop|error)"
            )
            lines += [f"    record {i} = record {j}" for i, j in r.duplicates[:first]]
        if r.missing and r.skip_missing:
            n_recs = len({i for i, _, _ in r.missing})
            lines.append(f"    data.skip_missing=true: a run drops these {n_recs} records")
        if r.long:
            lines.append(f"  prompts longer than the context: {len(r.long)} probes")
            lines += _first_lines(r.long, first)
        elif r.lengths_checked:
            lines.append("  prompts longer than the context: none")
        lines += [f"  error: {x}" for x in r.problems]
        lines += [f"  warning: {w}" for w in r.warnings]
    ok = all(r.ok for r in results)
    hint = "; data.skip_missing=true drops records with missing images" if any(r.missing for r in results) else ""
    lines.append("status: OK" if ok else f"status: NOT READY (a run stops before its first edit{hint})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.data check [Hydra overrides, e.g. data=evqa data.root=...]``."""
    from .config import compose

    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "compare":
        return compare_main(args[1:])
    if not args or args[0] != "check":
        print(
            "usage: python -m bench.data check data=<name> data.root=/path/to/images [data.ann_root=...] "
            "[model=<name>] [edits=N] [--config-dir <folder with data/<name>.yaml>]\n"
            "       python -m bench.data compare <data name> <data name> ... [data.ann_root=...]"
        )
        return 2
    rest = args[1:]
    if "--config-dir" in rest:  # a folder with the user's own data/<name>.yaml, as for python -m bench
        i = rest.index("--config-dir")
        if i + 1 >= len(rest):
            print("--config-dir needs a folder")
            return 2
        rest = [*rest[:i], *rest[i + 2 :], f"hydra.searchpath=[file://{resolve(rest[i + 1])}]"]
    cfg = compose(*rest)

    def run_check() -> list[SplitCheck]:
        import editors

        editor = OmegaConf.select(cfg, "editor.name")
        trains = editor in editors.names() and editors.get(str(editor)).needs_training
        edits = cfg.get("edits")
        given = any(a.split("=", 1)[0].lstrip("+") == "edits" for a in rest)
        return check(
            cfg.data,
            budget=prompt_budget(OmegaConf.select(cfg, "model")),
            edits=edits if isinstance(edits, int) and not isinstance(edits, bool) else None,
            edits_given=given,
            trains=trains,
        )

    results = report_user_errors(run_check)
    print(format_check(cfg.data.name, results))
    return 0 if all(r.ok for r in results) else 2


def compare_main(args: list[str]) -> int:
    """``python -m bench.data compare toy_evqa evqa``: structural statistics side by side
    (definitions in :mod:`bench.datastats`). Extra ``key=value`` arguments are Hydra overrides
    applied to every dataset (e.g. ``data.ann_root=/elsewhere``)."""
    from .config import compose
    from .datastats import dataset_stats, default_tokenizer, format_compare

    names = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    if not names:
        print("usage: python -m bench.data compare <data name> <data name> ... (e.g. toy_evqa evqa)")
        return 2

    def run():
        tok = default_tokenizer()
        rows = []
        for n in names:
            cfg = compose(f"data={n}", *overrides)
            for key in ("eval_file", "train_file"):
                if cfg.data.get("toy") is None and not resolve(cfg.data[key]).is_file():
                    raise UserError(
                        f"data.{key}: {resolve(cfg.data[key])} does not exist "
                        f"(set data.ann_root=/folder/with/mmedit_and_vlkeb for {n})"
                    )
            if cfg.data.get("toy") is not None:
                image_root(cfg.data)  # generates the toy set
            rows.append(dataset_stats(cfg.data, tok))
        return rows

    rows = report_user_errors(run)
    print(format_compare(names, rows))
    return 0


def cli() -> None:
    """The ``bench-data`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
