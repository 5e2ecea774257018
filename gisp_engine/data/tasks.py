"""Task data: the seven decision tasks (CMQA), custom multiple-choice files and GSM8K, one
loader per source, and the split between calibration and evaluation.

Prompts are those of lm-evaluation-harness 0.4.13's registered tasks (its YAML and utils.py):
the data files keep their own layout (their ``query`` carries a ``Question: ``/``Passage: ``
prefix) and the loaders turn each record into lm-eval's context, options and gold index, so
evaluation and the margin objective see exactly what ``lm_eval --tasks boolq,...`` scores.

A *custom task* is any JSON-lines file of ``{"query", "choices", "gold"}`` records (optionally
``"continuation"``: partial scoring), named by its path wherever a task name goes
(``--task my.jsonl``, ``--tasks cmqa,my.jsonl``); its prompt is used verbatim.

Each source is read from the data directory (``$GISP_DATA_DIR``, layout in the data README)
when its file is there, else from the Hugging Face hub through ``datasets`` unless the offline
setting is on. Hub records are mapped into the same item format as the files, so calibration
and evaluation see the same prompts whichever source they came from.

Calibration and evaluation never overlap. Each decision task has a *reserved calibration
pool*: a fixed 20% of its items, chosen by a seeded shuffle that depends only on the task
name, never on a pruning run's settings. The margin objective calibrates on a seeded part of
that pool (which part goes into the trajectory's metadata); evaluation uses the other 80%,
so trajectories of any objective, with any seed, and the dense model are scored on the same
held-out items. The evaluator also skips whatever a trajectory's metadata says it calibrated
on, should that ever reach outside the pool. GSM8K calibrates on its train split and is
evaluated on its test split, so there the pool is the whole train split.
"""

from __future__ import annotations

import bz2
import difflib
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core import settings
from ..core.errors import GispError
from .text import file_sha256, read_jsonl_numbered

CHOICE_TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
SUITES = {"cmqa": CHOICE_TASKS}
#: Tasks whose accuracy lm-evaluation-harness also reports length-normalised (``acc_norm``).
ACC_NORM_TASKS = frozenset({"piqa", "hellaswag", "arc_easy", "arc_challenge", "openbookqa"})

#: the prompts the loaders build (part of the margin objective's cache identity: a change is a new signal)
PROMPTS_VERSION = "lm-eval-0.4.13"
POOL_FRACTION = 0.2  # share of each decision task reserved for calibration
POOL_SEED = 0  # with the task name, the only input of the pool's shuffle


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question: score each option, pick the most likely."""

    task: str
    index: int  # record number in the source (0-based, file order): the item's stable id
    query: str  # the prompt shared by the options (under partial scoring: the text before each option)
    choices: tuple[str, ...]  # the answer options; under partial scoring, the context options
    gold: int
    continuation: str | None = None  # partial scoring (WinoGrande): the shared text after each option

    def requests(self) -> list[tuple[str, str]]:
        """(context, continuation) per option; the option's score is log P(continuation | context).

        As in lm-evaluation-harness (``target_delimiter`` " "), the continuation starts with the
        space that separates it from the context.
        """
        if self.continuation is None:
            return [(self.query, " " + choice) for choice in self.choices]
        return [(self.query + option, " " + self.continuation) for option in self.choices]


@dataclass(frozen=True)
class ProblemItem:
    """One GSM8K problem: a question and its reference solution, ending in ``#### answer``."""

    task: str
    index: int
    question: str
    answer: str

    @property
    def final(self) -> str:
        return self.answer.rsplit("####", 1)[-1].strip()


Item = ChoiceItem | ProblemItem


@dataclass(frozen=True)
class TaskData:
    name: str  # source name: a decision task, gsm8k_train or gsm8k_test
    items: tuple[Item, ...]
    source: dict  # file (relative to the data directory) and SHA-256, or the hub dataset
    pool_fraction: float

    def identity(self) -> dict:
        return dict(self.source)

    def calibration_pool(self) -> list[int]:
        """The reserved calibration pool (item indices), fixed by the task name and POOL_SEED."""
        n = len(self.items)
        size = n if self.pool_fraction >= 1.0 else round(self.pool_fraction * n)
        order = list(range(n))
        random.Random(f"{POOL_SEED}:{_pool_name(self.name)}").shuffle(order)
        return sorted(order[:size])

    def calibration_order(self, seed: int) -> list[int]:
        """The pool in the order calibration draws from it (a seeded shuffle: the run's ``--seed``)."""
        pool = self.calibration_pool()
        random.Random(seed).shuffle(pool)
        return pool

    def evaluation_items(self, exclude: Iterable[int] = (), include_pool: bool = False) -> tuple[list[Item], dict]:
        """The items to evaluate on, in file order, and how many were left out and why."""
        pool = set() if include_pool else set(self.calibration_pool())
        excluded = set(exclude) - pool
        items = [it for it in self.items if it.index not in pool and it.index not in excluded]
        counts = {
            "total": len(self.items),
            "calibration_pool": len(pool),
            "calibration_slice": len(excluded),
            "held_out": len(items),
        }
        return items, counts


# ---- parsing: one function per file format, errors name the file and line ------------------
def _where(path: Path, line: int) -> str:
    return f"{path}:{line}"


def _string(record: dict, key: str, where: str, allow_empty: bool = False) -> str:
    value = record.get(key)
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise GispError(f"{where}: {key!r} must be a non-empty string, got {value!r:.60}")
    return value


def _gold(value, n: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise GispError(f"{where}: 'gold' must be an option index 0..{n - 1}, got {value!r}")
    return value


def _options(record: dict, key: str, where: str, count: int | None = None) -> tuple[str, ...]:
    value = record.get(key)
    if (
        not isinstance(value, list)
        or len(value) < 2
        or (count is not None and len(value) != count)
        or not all(isinstance(c, str) and c.strip() for c in value)
    ):
        need = f"{count}" if count is not None else "at least 2"
        raise GispError(f"{where}: {key!r} must be a list of {need} non-empty strings, got {value!r:.80}")
    return tuple(value)


def _after_prefix(query: str, prefix: str, where: str) -> str:
    if not query.startswith(prefix):
        raise GispError(f"{where}: 'query' must start with {prefix!r} (the data README's layout), got {query!r:.60}")
    return query[len(prefix) :]


def _boolq_prompt(query: str, where: str) -> str:
    # file: "Passage: {passage}\nQuestion: {question}?"; lm-eval: "{passage}\nQuestion: {question}?\nAnswer:"
    return _after_prefix(query, "Passage: ", where) + "\nAnswer:"


def _piqa_prompt(query: str, where: str) -> str:
    # file: "Question: {goal}\n"; lm-eval: "Question: {goal}\nAnswer:"
    _after_prefix(query, "Question: ", where)
    if not query.endswith("\n"):
        raise GispError(f"{where}: a PIQA 'query' must end with a newline (the data README's layout)")
    return query + "Answer:"


def _arc_prompt(query: str, where: str) -> str:
    # file: "Question: {question}"; lm-eval: "Question: {question}\nAnswer:"
    _after_prefix(query, "Question: ", where)
    return query + "\nAnswer:"


#: file query -> lm-eval 0.4.13's ``doc_to_text``, per task (OpenBookQA: the question stem, as it is)
PROMPTS: dict[str, Callable[[str, str], str]] = {
    "boolq": _boolq_prompt,
    "piqa": _piqa_prompt,
    "arc_easy": _arc_prompt,
    "arc_challenge": _arc_prompt,
}


def choice_item(task: str, index: int, record: dict, where: str) -> ChoiceItem:
    """``{"query", "choices", "gold"}`` (BoolQ, PIQA, ARC, OpenBookQA), the query made lm-eval's prompt."""
    query = _string(record, "query", where)
    choices = _options(record, "choices", where)
    prompt = PROMPTS.get(task)
    query = prompt(query, where) if prompt is not None else query
    return ChoiceItem(task, index, query, choices, _gold(record.get("gold"), len(choices), where))


def custom_item(task: str, index: int, record: dict, where: str) -> ChoiceItem:
    """A custom task's record: ``{"query", "choices", "gold"}``, optionally ``"continuation"``; used verbatim.

    Without ``continuation`` each option is scored as ``" " + choice`` after ``query``. With it
    (partial scoring), each option's context is ``query + choice`` (``query`` may then be "")
    and the scored text is ``" " + continuation``.
    """
    for key in sorted(set(record) - set(CUSTOM_FIELDS)):  # other fields (an id, a source) are ignored, typos not
        near = difflib.get_close_matches(key, CUSTOM_FIELDS, n=1, cutoff=0.8)
        if near:
            raise GispError(f"{where}: unknown field {key!r}: did you mean {near[0]!r}?")
    partial = "continuation" in record
    query = _string(record, "query", where, allow_empty=partial)
    choices = _options(record, "choices", where)
    continuation = _string(record, "continuation", where) if partial else None
    return ChoiceItem(task, index, query, choices, _gold(record.get("gold"), len(choices), where), continuation)


def partial_item(task: str, index: int, record: dict, where: str) -> ChoiceItem:
    """``{"context_options", "continuation", "gold"}`` (WinoGrande, partial scoring)."""
    options = _options(record, "context_options", where, count=2)
    continuation = _string(record, "continuation", where)
    return ChoiceItem(task, index, "", options, _gold(record.get("gold"), 2, where), continuation)


def problem_item(task: str, index: int, record: dict, where: str) -> ProblemItem:
    """``{"question", "answer"}`` with the final answer after ``#### `` (GSM8K)."""
    question = _string(record, "question", where)
    answer = _string(record, "answer", where)
    if "####" not in answer or not answer.rsplit("####", 1)[-1].strip():
        raise GispError(f"{where}: 'answer' has no final answer after '####'")
    return ProblemItem(task, index, question, answer)


def _parse_jsonl(make: Callable) -> Callable[[Path, str], list[Item]]:
    def parse(path: Path, task: str) -> list[Item]:
        return [make(task, n, record, _where(path, line)) for n, (line, record) in enumerate(read_jsonl_numbered(path))]

    return parse


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's ``hellaswag/utils.py:preprocess``: WikiHow's bracketed markers out, spaces tidied."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_item(
    task: str, index: int, context: str, endings: Sequence[str], gold: int, where: str, capitalize_tail: bool = True
) -> ChoiceItem:
    """lm-eval's HellaSwag item from ``"activity: ctx_a ctx_b"`` and the endings.

    lm-eval builds the query as ``activity_label + ": " + ctx_a + " " + ctx_b.capitalize()``. The
    file keeps ``ctx_b`` as it is: the lowercase fragment after the context's last sentence
    (ActivityNet items; WikiHow items end on a full sentence and have none), so that fragment
    is capitalized here (``capitalize_tail``; hub records are capitalized from their own ``ctx_b``).
    """
    end = max(context.rfind(". "), context.rfind("! "), context.rfind("? "))
    tail = context[end + 2 :] if end >= 0 else ""
    if capitalize_tail and tail[:1].islower() and tail[-1:] not in ".!?":
        context = context[: end + 2] + tail.capitalize()
    query, choices = hellaswag_preprocess(context), tuple(hellaswag_preprocess(e) for e in endings)
    if not query or not all(choices):
        raise GispError(f"{where}: empty context or ending once lm-eval's HellaSwag preprocessing is applied")
    return ChoiceItem(task, index, query, choices, gold)


def parse_hellaswag(path: Path, task: str = "hellaswag") -> list[ChoiceItem]:
    """bzip2 text, 6 lines per item: the context, the gold index (0-3), then the 4 endings."""
    try:
        with bz2.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise GispError(f"{path}: not a readable bzip2 file ({exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GispError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    # split on "\n" only: str.splitlines would also break inside a line at \u2028 and the like
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise GispError(f"{path} holds no records")
    items = []
    for start in range(0, len(lines), 6):
        block = lines[start : start + 6]
        where = _where(path, start + 1)
        if len(block) < 6:
            raise GispError(
                f"{where}: incomplete item: expected 6 lines (context, gold, 4 endings), found {len(block)}"
            )
        context, gold, endings = block[0], block[1].strip(), block[2:]
        if not context.strip():
            raise GispError(f"{where}: empty context")
        if gold not in {"0", "1", "2", "3"}:
            raise GispError(f"{_where(path, start + 2)}: the gold line must be 0, 1, 2 or 3, got {block[1]!r:.40}")
        for k, ending in enumerate(endings):
            if not ending.strip():
                raise GispError(f"{_where(path, start + 3 + k)}: empty ending")
        items.append(hellaswag_item(task, len(items), context, endings, int(gold), where))
    return items


# ---- hub records mapped into the file format -------------------------------------------------
def _hub_boolq(r: dict) -> dict:
    return {
        "query": f"Passage: {r['passage']}\nQuestion: {r['question']}?",
        "choices": ["no", "yes"],
        "gold": int(r["label"]),
    }


def _hub_piqa(r: dict) -> dict:
    return {"query": f"Question: {r['goal']}\n", "choices": [r["sol1"], r["sol2"]], "gold": int(r["label"])}


def _hub_hellaswag(r: dict) -> dict:
    # lm-eval's context before preprocessing (hellaswag/utils.py), which the loader then applies
    ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
    return {"context": f"{r['activity_label']}: {ctx}", "endings": list(r["endings"]), "gold": int(r["label"])}


def _hub_winogrande(r: dict) -> dict:
    sentence = r["sentence"]
    blank = sentence.index("_")
    return {
        "context_options": [sentence[:blank] + r["option1"], sentence[:blank] + r["option2"]],
        "continuation": sentence[blank + 1 :].strip(),
        "gold": int(r["answer"]) - 1,
    }


def _hub_arc(r: dict) -> dict:
    return {
        "query": f"Question: {r['question']}",
        "choices": list(r["choices"]["text"]),
        "gold": list(r["choices"]["label"]).index(r["answerKey"]),
    }


def _hub_openbookqa(r: dict) -> dict:
    return {
        "query": r["question_stem"],
        "choices": list(r["choices"]["text"]),
        "gold": list(r["choices"]["label"]).index(r["answerKey"].strip()),
    }


def _hub_gsm8k(r: dict) -> dict:
    return {"question": r["question"], "answer": r["answer"]}


def _hellaswag_from_record(task: str, index: int, record: dict, where: str) -> ChoiceItem:
    fields = {"query": record["context"], "choices": record["endings"], "gold": record["gold"]}
    checked = choice_item(task, index, fields, where)
    return hellaswag_item(task, index, checked.query, checked.choices, checked.gold, where, capitalize_tail=False)


@dataclass(frozen=True)
class TaskSource:
    name: str
    local: str  # path under the data directory
    parse: Callable[[Path, str], list[Item]]
    hub: dict  # dataset, config, split
    from_hub: Callable[[dict], dict]  # hub record -> a record in the file format
    make: Callable[[str, int, dict, str], Item]  # file-format record -> item
    pool_fraction: float = POOL_FRACTION


_choice_jsonl = _parse_jsonl(choice_item)
SOURCES: dict[str, TaskSource] = {
    s.name: s
    for s in (
        TaskSource(
            "boolq",
            "cmqa/boolq.jsonl",
            _choice_jsonl,
            {"dataset": "aps/super_glue", "config": "boolq", "split": "validation"},
            _hub_boolq,
            choice_item,
        ),
        TaskSource(
            "piqa",
            "cmqa/piqa.jsonl",
            _choice_jsonl,
            {"dataset": "baber/piqa", "config": None, "split": "validation"},
            _hub_piqa,
            choice_item,
        ),
        TaskSource(
            "hellaswag",
            "cmqa/hellaswag_val_full.txt.bz2",
            parse_hellaswag,
            {"dataset": "Rowan/hellaswag", "config": None, "split": "validation"},
            _hub_hellaswag,
            _hellaswag_from_record,
        ),
        TaskSource(
            "winogrande",
            "cmqa/winogrande.jsonl",
            _parse_jsonl(partial_item),
            {"dataset": "allenai/winogrande", "config": "winogrande_xl", "split": "validation"},
            _hub_winogrande,
            partial_item,
        ),
        TaskSource(
            "arc_easy",
            "cmqa/arc_easy.jsonl",
            _choice_jsonl,
            {"dataset": "allenai/ai2_arc", "config": "ARC-Easy", "split": "test"},
            _hub_arc,
            choice_item,
        ),
        TaskSource(
            "arc_challenge",
            "cmqa/arc_challenge.jsonl",
            _choice_jsonl,
            {"dataset": "allenai/ai2_arc", "config": "ARC-Challenge", "split": "test"},
            _hub_arc,
            choice_item,
        ),
        TaskSource(
            "openbookqa",
            "cmqa/openbookqa.jsonl",
            _choice_jsonl,
            {"dataset": "allenai/openbookqa", "config": "main", "split": "test"},
            _hub_openbookqa,
            choice_item,
        ),
        # GSM8K: train is calibration only (pool = all of it), test is evaluation only
        TaskSource(
            "gsm8k_train",
            "gsm8k/train.jsonl",
            _parse_jsonl(problem_item),
            {"dataset": "openai/gsm8k", "config": "main", "split": "train"},
            _hub_gsm8k,
            problem_item,
            1.0,
        ),
        TaskSource(
            "gsm8k_test",
            "gsm8k/test.jsonl",
            _parse_jsonl(problem_item),
            {"dataset": "openai/gsm8k", "config": "main", "split": "test"},
            _hub_gsm8k,
            problem_item,
            0.0,
        ),
    )
}


def _source(name: str) -> TaskSource:
    source = SOURCES.get(name)
    if source is None:
        raise GispError(f"unknown task {name!r}: choose from {', '.join(CHOICE_TASKS)}, cmqa (all seven) or gsm8k")
    return source


# ---- custom tasks: a JSON-lines file of one's own, named by its path --------------------------
CUSTOM_SUFFIX = ".jsonl"
CUSTOM_FIELDS = ("query", "choices", "gold", "continuation")
CUSTOM_FORMAT = (
    'a JSON-lines file of {"query", "choices", "gold"} records, optionally with "continuation" (partial scoring)'
)


def is_custom_task(name: str) -> bool:
    """Whether ``name`` names a custom task: one path ending in ``.jsonl`` (not a list, not a built-in).

    Only the name is looked at; a missing or malformed file is refused, with a clear error, on loading.
    """
    return isinstance(name, str) and "," not in name and name.strip().lower().endswith(CUSTOM_SUFFIX)


def custom_task_path(name: str) -> Path:
    """The custom task's file, resolved (the task's canonical name is this path as a string)."""
    path = Path(name.strip()).expanduser()
    if not path.is_file():
        raise GispError(f"custom task file {path} not found: a custom task is {CUSTOM_FORMAT}")
    return path.resolve()


def task_title(name: str) -> str:
    """A short name to show: the built-in task's name, or the custom task's file name."""
    return f"{Path(name.strip()).name} (custom)" if is_custom_task(name) else name


def _pool_name(name: str) -> str:
    # a custom task's pool follows its file name, so the split survives moving the file
    return Path(name).name if is_custom_task(name) else name


def _custom_identity(path: Path) -> dict:
    return {"kind": "file", "file": str(path), "sha256": file_sha256(path)}


def _load_custom(name: str) -> TaskData:
    path = custom_task_path(name)
    stat = path.stat()
    key = ("custom", str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _MEMO:
        task = str(path)
        try:
            records = read_jsonl_numbered(path)
        except OSError as exc:
            raise GispError(f"custom task file {path} could not be read ({exc.strerror or exc})") from None
        items = [custom_item(task, n, record, _where(path, line)) for n, (line, record) in enumerate(records)]
        _MEMO[key] = TaskData(task, tuple(items), _custom_identity(path), POOL_FRACTION)
    return _MEMO[key]


def local_path(name: str) -> Path | None:
    """The task's file in the data directory (a custom task: its own file), or None when it is not there."""
    if is_custom_task(name):
        return custom_task_path(name)
    root = settings.data_dir()
    path = root / _source(name).local if root is not None else None
    return path if path is not None and path.is_file() else None


def source_identity(name: str) -> dict:
    """What identifies the data of a task (for cache keys), without parsing it."""
    if is_custom_task(name):
        return _custom_identity(custom_task_path(name))
    source = _source(name)
    path = local_path(name)
    if path is not None:
        return {"kind": "file", "file": source.local, "sha256": file_sha256(path)}
    _require_hub(source)
    return {"kind": "hub", **source.hub}


def _require_hub(source: TaskSource) -> None:
    if settings.offline():
        root = settings.data_dir()
        where = f"{root / source.local}" if root is not None else f"{source.local} (no data directory is set)"
        raise GispError(
            f"task {source.name!r}: {where} not found and the hub is off (GISP_OFFLINE/HF_HUB_OFFLINE): "
            "set GISP_DATA_DIR to the folder that holds cmqa/ and gsm8k/, or unset the offline setting"
        )


_MEMO: dict[tuple, TaskData] = {}


def load_task(name: str) -> TaskData:
    """All items of a task source (a built-in name or a custom task's path), in file order (memoized per file state)."""
    if is_custom_task(name):
        return _load_custom(name)
    source = _source(name)
    path = local_path(name)
    if path is not None:
        stat = path.stat()
        key = (name, str(path), stat.st_size, stat.st_mtime_ns)
        if key not in _MEMO:
            items = source.parse(path, name)
            if not items:
                raise GispError(f"{path} holds no records")
            _MEMO[key] = TaskData(name, tuple(items), source_identity(name), source.pool_fraction)
        return _MEMO[key]
    _require_hub(source)
    key = (name, "hub")
    if key not in _MEMO:
        _MEMO[key] = TaskData(name, tuple(_load_hub_items(source)), {"kind": "hub", **source.hub}, source.pool_fraction)
    return _MEMO[key]


def _load_hub_items(source: TaskSource) -> list[Item]:
    import datasets

    hub = source.hub
    label = f"{hub['dataset']}" + (f"/{hub['config']}" if hub.get("config") else "") + f" ({hub['split']})"
    try:
        ds = datasets.load_dataset(hub["dataset"], hub.get("config"), split=hub["split"])
    except Exception as exc:  # network, unknown dataset, changed layout: all the user's to see
        raise GispError(
            f"task {source.name!r}: could not load hub dataset {label}: {str(exc).splitlines()[0]}"
        ) from None
    items = []
    for n, record in enumerate(ds):
        where = f"hub {label} record {n}"
        try:
            mapped = source.from_hub(record)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise GispError(f"{where}: unexpected record layout ({type(exc).__name__}: {exc})") from None
        items.append(source.make(source.name, n, mapped, where))
    if not items:
        raise GispError(f"task {source.name!r}: hub dataset {label} is empty")
    return items


def parse_tasks(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``boolq,piqa``, ``cmqa``, ``my.jsonl`` (or a mix) -> the decision tasks, once each.

    Built-in tasks come in canonical order, then custom tasks (as resolved paths) in the order given.
    """
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [s for s in names if s]
    if not names:
        raise GispError(f"no task given: name one or more of {', '.join(CHOICE_TASKS)}, cmqa, or a custom task file")
    chosen: set[str] = set()
    custom: list[str] = []
    for name in names:
        if name in SUITES:
            chosen.update(SUITES[name])
        elif name in CHOICE_TASKS:
            chosen.add(name)
        elif is_custom_task(name):
            path = str(custom_task_path(name))
            if path not in custom:
                custom.append(path)
        else:
            raise GispError(
                f"unknown task {name!r}: choose from {', '.join(CHOICE_TASKS)}, cmqa (all seven), "
                f"or a custom task file ending in {CUSTOM_SUFFIX} ({CUSTOM_FORMAT})"
            )
    return tuple(t for t in CHOICE_TASKS if t in chosen) + tuple(custom)


def calibration_exclusions(objective_meta: dict | None) -> dict[str, set[int]]:
    """Item indices per task source that a trajectory's objective calibrated on (its ``slices``)."""
    slices = (objective_meta or {}).get("slices") or {}
    return {name: {int(i) for i in s.get("items", [])} for name, s in slices.items()}
