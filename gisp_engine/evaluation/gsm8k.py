"""GSM8K exact match: greedy generation, the final number compared with the reference's.

The prompt is lm-evaluation-harness's: ``few_shot`` solved train problems
(``"Question: ...\\nAnswer: ..."``, joined by a blank line), then the test question and
``"Answer:"``. The few-shot examples are one fixed, seeded draw from the train split, the
same for every question. Generation is greedy and stops at ``"Question:"`` (the model starting
the next problem), at the end-of-sequence token or after ``max_new_tokens``. The predicted
answer is the number after ``####`` if the text has one, else the last number in it; both
sides are compared as numbers after dropping ``$`` and thousands separators.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation

import torch

from ..core.errors import GispError
from ..core.progress import ProgressCallback, ProgressEvent, null_progress
from ..data.tasks import load_task
from ..pruning.objectives.gsm8k import PROMPT

TEST_SOURCE = "gsm8k_test"
FEW_SHOT_SOURCE = "gsm8k_train"
FEW_SHOT_SEED = 1234
STOP_STRINGS = ("Question:", "</s>", "<|im_end|>")
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def normalize_number(text: str) -> str:
    """``"$1,000.00"`` -> ``"1000"``; text that is not a number comes back stripped of ``$``, ``,`` and a final dot."""
    cleaned = text.replace("$", "").replace(",", "").strip().rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return cleaned
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def parse_answer(text: str) -> str | None:
    """The number after ``####`` when there is one, else the last number in the text."""
    if "####" in text:
        found = _NUMBER.search(text.split("####", 1)[1])
        if found:
            return normalize_number(found.group())
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def few_shot_prefix(k: int) -> str:
    if k < 0:
        raise GispError("--few-shot must be 0 or more")
    if k == 0:
        return ""
    train = load_task(FEW_SHOT_SOURCE).items
    chosen = random.Random(FEW_SHOT_SEED).sample(range(len(train)), k)
    shots = [PROMPT.format(question=train[i].question) + " " + train[i].answer for i in chosen]
    return "\n\n".join(shots) + "\n\n"


class _StopOnStrings:
    """Per sequence: done once its generated text holds a stop string (transformers stopping criterion)."""

    def __init__(self, tokenizer, prompt_len: int, stops: tuple[str, ...]):
        self.tokenizer, self.prompt_len, self.stops = tokenizer, prompt_len, stops

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=False)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)


def cut_at_stop(text: str, stops: tuple[str, ...] = STOP_STRINGS) -> str:
    positions = [text.find(s) for s in stops if s in text]
    return text[: min(positions)] if positions else text


@dataclass
class GSM8KResult:
    task: str
    exact_match: float
    items: int
    few_shot: int
    max_new_tokens: int
    counts: dict
    limit: int | None
    source: dict
    samples: list[dict] = field(default_factory=list)  # the first few generations, for a look

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 256,
    batch_size: int = 8,
    progress: ProgressCallback = null_progress,
) -> list[str]:
    """Greedy continuations of ``prompts`` (left-padded batches), cut at the stop strings.

    A prompt longer than the model's context leaves room for the answer by losing its start
    (the oldest few-shot example), as lm-evaluation-harness does.
    """
    from transformers import StoppingCriteriaList

    device = model.get_input_embeddings().weight.device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    max_length = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    keep = max(1, max_length - max_new_tokens) if max_length else None
    outputs: list[str] = []
    total = (len(prompts) + batch_size - 1) // batch_size
    for b, start in enumerate(range(0, len(prompts), batch_size), 1):
        rows = [list(tokenizer(p)["input_ids"]) for p in prompts[start : start + batch_size]]
        rows = [r[-keep:] if keep else r for r in rows]
        width = max(len(r) for r in rows)
        # left padding: generation appends at the end, so every row must end at the last position
        input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)
        attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            stopping_criteria=StoppingCriteriaList([_StopOnStrings(tokenizer, width, STOP_STRINGS)]),
        )
        texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        outputs.extend(cut_at_stop(t) for t in texts)
        progress(ProgressEvent("eval", b, total, message="gsm8k"))
    return outputs


def evaluate_gsm8k(
    model: torch.nn.Module,
    tokenizer,
    limit: int | None = None,
    few_shot: int = 5,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    exclude: Iterable[int] = (),
    progress: ProgressCallback = null_progress,
) -> GSM8KResult:
    if limit is not None and limit < 1:
        raise GispError("--limit must be at least 1")
    if max_new_tokens < 1:
        raise GispError("--max-new-tokens must be at least 1")
    data = load_task(TEST_SOURCE)
    items, counts = data.evaluation_items(exclude)
    items = items[:limit] if limit is not None else items
    prefix = few_shot_prefix(few_shot)
    prompts = [prefix + PROMPT.format(question=item.question) for item in items]
    was_training = model.training
    model.eval()
    try:
        texts = generate_answers(model, tokenizer, prompts, max_new_tokens, batch_size, progress)
    finally:
        model.train(was_training)
    correct, samples = 0, []
    for item, text in zip(items, texts):
        predicted = parse_answer(text)
        ok = predicted is not None and predicted == normalize_number(item.final)
        correct += ok
        if len(samples) < 5:
            samples.append(
                {
                    "index": item.index,
                    "reference": item.final,
                    "predicted": predicted,
                    "correct": ok,
                    "generation": text,
                }
            )
    return GSM8KResult(
        "gsm8k", correct / len(items), len(items), few_shot, max_new_tokens, counts, limit, data.identity(), samples
    )
