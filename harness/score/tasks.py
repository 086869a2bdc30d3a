"""Which lm-eval tasks run, on which data: stock task definitions, local files.

With `--data-dir`, every stock leaf task that a requested task / group / tag expands to gets a
generated YAML in the run folder that `include:`s the stock YAML (its prompts, few-shot setup,
filters and metrics stay lm-eval's) and overrides only where the data comes from:

    include: /…/lm_eval/tasks/gsm8k/gsm8k.yaml
    task: gsm8k
    dataset_path: json
    dataset_name: null
    dataset_kwargs: {data_files: {test: /data/gsm8k/main/test.jsonl}}

The generated task keeps the stock name, and lm-eval's index lets a later path override an
earlier one, so stock groups (`mmlu` and its four subgroups) resolve to the local tasks unchanged.
"""

from __future__ import annotations

import contextlib

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import HyperbenchError, missing_extra
from harness.score.data import DataDir

PERPLEXITY_TASK = "perplexity"
LM_EVAL_DEFAULT_GEN = {"until": ["\n\n"], "do_sample": False, "temperature": 0.0, "max_gen_toks": 256}
# output types that need prompt logprobs from the engine
LOGLIKELIHOOD_TYPES = ("loglikelihood", "multiple_choice", "loglikelihood_rolling")
# `datasets` builders that read local files: a task on them needs no hub and no --data-dir
LOCAL_BUILDERS = ("json", "csv", "parquet", "arrow", "text")


def _lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise missing_extra("eval", "lm-eval (needed by `score`)") from None


_STOCK = None


def task_manager():
    """lm-eval's index of its stock tasks. Building it scans ~15k YAMLs (~10 s on 2 cores), so a
    process builds it once and each run gets a copy whose index it may extend."""
    global _STOCK
    _lm_eval()
    import copy
    import logging

    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval.tasks._index").setLevel(logging.ERROR)  # our overrides are meant
    if _STOCK is None:
        from harness.score.offline_tasks import FOLDER

        _STOCK = TaskManager()
        _add_to_index(_STOCK, FOLDER)  # squadv2 and humaneval without the hub's metric scripts
    tm = copy.copy(_STOCK)
    if hasattr(tm, "_index"):
        tm._index = dict(_STOCK._index)
        return tm
    return TaskManager()  # another lm-eval layout: no sharing


def _entry(tm, name: str):
    entry = tm.task_index.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, tm.all_tasks, n=3, cutoff=0.75)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise HyperbenchError(f"unknown task {name!r}: not an lm-eval task, group or tag{hint}")
    return entry


def leaf_tasks(tm, names: list[str]) -> list[Any]:
    """Index entries of the leaf tasks that `names` (tasks, groups, tags) expand to."""
    from lm_eval.tasks._index import Kind

    out: dict[str, Any] = {}

    def visit(item, parent: str | None) -> None:
        if isinstance(item, dict):
            if "group" in item and item["group"] not in tm.task_index:  # an inline subgroup
                for child in item.get("task") or []:
                    visit(child, item["group"])
                return
            item = item.get("task") or item.get("group")
            if item not in tm.task_index:
                raise HyperbenchError(f"group {parent} defines task {item!r} inline: --data-dir "
                                      "supports tasks that have their own YAML")
        entry = _entry(tm, item)
        if entry.kind == Kind.GROUP:
            for child in (entry.cfg or {}).get("task") or []:
                visit(child, entry.name)
        elif entry.kind == Kind.TAG:
            for child in sorted(entry.tags):
                visit(child, entry.name)
        else:
            out.setdefault(entry.name, entry)

    for name in names:
        visit(name, None)
    return list(out.values())


def stock_datasets(names: list[str]) -> list[tuple[str, str | None]]:
    """(dataset_path, dataset_name) of every stock leaf task of `names` (for `data pull`)."""
    tm = task_manager()
    out = []
    for e in leaf_tasks(tm, names):
        cfg = e.cfg or {}
        if not cfg.get("dataset_path"):
            raise HyperbenchError(f"task {e.name} names no hub dataset (dataset_path): cannot pull it")
        out.append((cfg["dataset_path"], cfg.get("dataset_name")))
    return list(dict.fromkeys(out))


@dataclass
class Prepared:
    tm: Any  # lm_eval TaskManager, local overrides included
    names: list[str]  # what to pass to simple_evaluate
    output_types: dict[str, str]  # leaf task -> output_type
    data: dict[str, dict] = field(default_factory=dict)  # leaf task -> provenance and notes
    gen_kwargs: dict[str, dict] = field(default_factory=dict)  # generative task -> its own kwargs
    notes: list[str] = field(default_factory=list)
    unsafe: dict[str, bool] = field(default_factory=dict)  # leaf task -> runs generated code


def add_custom_tasks(tm, include_paths: list[Path], tasks: list[str]) -> list[str]:
    """Index the user's own task folders (lm-eval's --include_path) and task YAML files named in
    `tasks`, on top of the stock tasks; return `tasks` with each file replaced by the task or
    group it defines (what lm-eval runs it as)."""
    from lm_eval.tasks._index import TaskIndex

    for folder in include_paths:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise HyperbenchError(f"--include-path {folder}: not a folder of task YAMLs")
        _add_to_index(tm, folder)
    names = []
    for name in tasks:
        if not name.endswith((".yaml", ".yml")):
            names.append(name)
            continue
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise HyperbenchError(f"task file {name} does not exist")
        index: dict = {}
        try:
            from lm_eval.tasks._yaml_loader import load_yaml

            TaskIndex.process_cfg(load_yaml(path, resolve_func=False, recursive=True), path, index)
        except Exception as e:  # a YAML error, a missing include, a shape lm-eval does not know
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise HyperbenchError(f"task file {name} is not an lm-eval task YAML: {first}") from None
        defined = [n for n, e in index.items() if e.yaml_path == path]
        if not defined:
            raise HyperbenchError(f"task file {name} defines no task or group (no 'task:' or 'group:' key)")
        tm._index.update(index) if hasattr(tm, "_index") else _add_to_index(tm, path.parent)
        names.append(defined[0])
    return names


def _local_files(cfg: dict) -> dict | None:
    """The data files of a task that reads local files (`dataset_path: json` with `data_files`),
    else None (a hub dataset)."""
    if cfg.get("dataset_path") not in LOCAL_BUILDERS:
        return None
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    return files if isinstance(files, dict) else {"files": files}


def prepare(tasks: list[str], data_dir: Path | None, work: Path, perplexity: Path | None = None,
            tm=None, include_paths: list[Path] = (), num_fewshot: int | None = None) -> Prepared:
    """Resolve task names (custom task folders and files included), write the local-data and
    perplexity YAMLs under `work`, and return a TaskManager that knows them. Every user error
    surfaces here, before an engine starts."""
    tm = tm or task_manager()
    names = list(dict.fromkeys(add_custom_tasks(tm, list(include_paths), tasks)))
    if PERPLEXITY_TASK in names and perplexity is None:
        raise HyperbenchError(f"task {PERPLEXITY_TASK!r} needs --perplexity FILE")
    names = [n for n in names if n != PERPLEXITY_TASK]
    leaves = leaf_tasks(tm, names)  # unknown names fail here
    work.mkdir(parents=True, exist_ok=True)
    out = Prepared(tm=tm, names=list(names), output_types={})
    yamls: list[Path] = []
    data = DataDir.open(data_dir) if data_dir is not None else None
    for e in leaves:
        cfg = e.cfg or {}
        out.output_types[e.name] = cfg.get("output_type", "generate_until")
        out.unsafe[e.name] = bool(cfg.get("unsafe_code"))
        if out.output_types[e.name] == "generate_until":  # lm-eval's default where a task sets none
            out.gen_kwargs[e.name] = cfg.get("generation_kwargs") or dict(LM_EVAL_DEFAULT_GEN)
        local = _local_files(cfg)
        if local is not None:  # a custom task on its own files: read as they are, hub or not
            out.data[e.name] = {"dataset": cfg["dataset_path"], "config": cfg.get("dataset_name"),
                                "source": f"local files of task {e.yaml_path}", "files": local}
            continue
        if data is None:
            out.data[e.name] = {"dataset": cfg.get("dataset_path"), "config": cfg.get("dataset_name"),
                                "source": "Hugging Face hub (lm-eval's stock loader)"}
            continue
        if e.yaml_path is None or ("class" in cfg and not _offline_task(e)):
            raise HyperbenchError(f"task {e.name} is defined in Python: --data-dir supports YAML tasks")
        path, info = _override(e, cfg, data, work, zero_shot=num_fewshot == 0 or (
            num_fewshot is None and cfg.get("num_fewshot", 0) == 0))
        yamls.append(path)
        out.data[e.name] = info
    if perplexity is not None:
        yamls.append(_perplexity_yaml(Path(perplexity), work))
        out.names.append(PERPLEXITY_TASK)
        out.output_types[PERPLEXITY_TASK] = "loglikelihood_rolling"
        out.data[PERPLEXITY_TASK] = {"source": str(Path(perplexity).resolve())}
    if yamls:
        _add_to_index(tm, work)
    seen = set()
    for info in out.data.values():
        for note in info.get("notes", []):
            if note not in seen:
                seen.add(note)
                out.notes.append(note)
    if not out.names:
        raise HyperbenchError("no tasks to run: give --tasks (e.g. mmlu,gsm8k) or --perplexity FILE")
    return out


def load(prepared: Prepared, data_dir: Path | None) -> None:
    """Build lm-eval's task objects now, datasets read, so that data problems (no hub and no
    --data-dir, a file `datasets` cannot read) are one line before any engine starts.
    `simple_evaluate` loads its tasks once, through the task manager: it gets these."""
    try:
        loaded = prepared.tm.load(prepared.names)
    except HyperbenchError:
        raise
    except Exception as e:  # datasets / hub / lm-eval errors are many classes
        first = (str(e).strip().splitlines() or [""])[0][:300]
        hint = ""
        if data_dir is None:
            hint = ("; with no hub here, stage the data first (`hyperbench data pull mmlu gsm8k "
                    "truthfulqa --to DIR` where the network allows, or `hyperbench data stage`) "
                    "and pass --data-dir DIR")
        raise HyperbenchError(f"cannot load the data of {', '.join(prepared.names)}: "
                              f"{type(e).__name__}: {first}{hint}") from None
    prepared.tm.load = lambda *_args, **_kw: loaded


def _offline_task(entry) -> bool:
    """One of harness/score/offline_tasks: its Python class reads the data its config names."""
    from harness.score.offline_tasks import FOLDER

    return entry.yaml_path is not None and Path(entry.yaml_path).resolve().parent == FOLDER


def unsafe_tasks(prepared: Prepared) -> list[str]:
    """Tasks that run the model's generated code (lm-eval's `unsafe_code`: humaneval, mbpp...)."""
    return sorted(t for t, unsafe in prepared.unsafe.items() if unsafe)


def _override(entry, cfg: dict, data: DataDir, work: Path, zero_shot: bool = False) -> tuple[Path, dict]:
    hub, name = cfg.get("dataset_path"), cfg.get("dataset_name")
    if not hub:
        raise HyperbenchError(f"task {entry.name} names no dataset_path: cannot run it on --data-dir")
    staged = data.check(hub, name)  # missing / wrong-schema files fail here, in one line
    splits = staged.splits
    notes = data.notes(hub, name)
    over: dict[str, Any] = {"include": str(Path(entry.yaml_path).resolve()), "task": entry.name,
                            "tag": None, "dataset_path": staged.format, "dataset_name": None,
                            "dataset_kwargs": {"data_files": {s: str(p) for s, p in splits.items()}}}
    eval_split = cfg.get("test_split") or cfg.get("validation_split")
    if eval_split not in splits:
        raise HyperbenchError(f"task {entry.name} scores split {eval_split!r} of {hub}, which the "
                              f"data dir does not have (it has {', '.join(splits)})")
    for key in ("training_split", "validation_split"):
        if cfg.get(key) and cfg[key] not in splits:
            over[key] = None
    fs = cfg.get("fewshot_split")
    if fs and fs not in splits:
        fallback = next((s for s in (cfg.get("training_split"), cfg.get("validation_split"), "dev")
                         if s and s in splits and s != eval_split), eval_split)
        over["fewshot_split"] = fallback
        if not zero_shot:  # with no example drawn, where they would come from is no news
            notes.append(f"{entry.name}: few-shot split {fs!r} not staged, few-shot examples come from "
                         f"{fallback!r}" + (" (the scored item itself excluded)" if fallback == eval_split else ""))
    path = work / f"{entry.name}.yaml"
    path.write_text(yaml.safe_dump(over, sort_keys=False))
    return path, {"dataset": hub, "config": name, "source": data.source(hub), "notes": notes,
                  "files": {s: str(p) for s, p in splits.items()}, "format": staged.format}


def _perplexity_yaml(file: Path, work: Path) -> Path:
    """A loglikelihood_rolling task over a text file (one document) or a JSONL of {"text": ...}."""
    if not file.is_file():
        raise HyperbenchError(f"perplexity file {file} does not exist")
    docs_path = work / "perplexity-docs.jsonl"
    if file.suffix == ".jsonl":
        docs = []
        for i, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise HyperbenchError(f"{file}: line {i} is not JSON") from None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise HyperbenchError(f"{file}: line {i} has no string 'text'")
                docs.append({"text": row["text"]})
    else:
        try:
            docs = [{"text": file.read_text(encoding="utf-8")}]
        except UnicodeDecodeError:
            raise HyperbenchError(f"perplexity file {file} is not UTF-8 text") from None
    if not any(d["text"].strip() for d in docs):
        raise HyperbenchError(f"perplexity file {file} is empty")
    docs_path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    spec = {
        "task": PERPLEXITY_TASK, "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(docs_path.resolve())}},
        "test_split": "test", "output_type": "loglikelihood_rolling",
        "doc_to_text": "", "doc_to_target": "text",
        "metric_list": [{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")],
        "metadata": {"version": 1.0, "file": str(file.resolve())},
    }  # fmt: skip
    path = work / f"{PERPLEXITY_TASK}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _add_to_index(tm, folder: Path) -> None:
    """Index `folder` on top of the stock tasks (later paths override earlier, by name).

    TaskManager(include_path=...) would re-scan all ~15k stock YAMLs (~10 s here); merging one
    small index into the one already built is the same result. `_index` is lm-eval 0.4.13's
    (pinned by the `eval` extra)."""
    from lm_eval.tasks._index import TaskIndex

    extra = TaskIndex.build([folder])
    if hasattr(tm, "_index"):
        tm._index.update(extra)
    else:  # another lm-eval layout: pay the rescan
        from lm_eval.tasks import TaskManager

        tm.__dict__.update(TaskManager(include_path=str(folder)).__dict__)


@contextlib.contextmanager
def quiet_git_hash():
    """lm-eval records `git describe` of the current folder with git's stderr left open: outside a
    checkout every evaluation (every tune trial) printed `fatal: not a git repository`. It gets
    hyperbench's own commit instead (asked quietly; env.json has it too)."""
    import lm_eval.evaluator
    from harness.envinfo import git_commit

    saved = lm_eval.evaluator.get_git_commit_hash
    lm_eval.evaluator.get_git_commit_hash = git_commit
    try:
        yield
    finally:
        lm_eval.evaluator.get_git_commit_hash = saved
