"""Property-based: random and truncated files never escape the loaders as anything but GispError."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import cache_dir

from gisp_engine import GispError, PruneConfig, Trajectory, prune
from gisp_engine.data.text import load_documents, read_jsonl, resolve_text_source

# the same examples on every run, so that a failure reproduces; its blob is printed to replay it
CASES = settings(
    max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, print_blob=True
)


@pytest.fixture(scope="module")
def saved_trajectory(tiny_models, data_dir, tmp_path_factory) -> Path:
    with cache_dir(tmp_path_factory.mktemp("cache")):  # restores an outer value, as del would not
        traj = prune(
            PruneConfig(
                model=str(tiny_models[("llama", True)]),
                num_samples=2,
                seq_len=16,
                steps=3,
                max_sparsity=0.4,
                protect_first=1,
                save_scores=True,
            )
        ).trajectory
    return traj.save(tmp_path_factory.mktemp("traj") / "t")


def _load_or_gisp_error(folder: Path) -> None:
    try:
        Trajectory.load(folder)
    except GispError:
        pass


@CASES
@given(
    which=st.sampled_from(["trajectory.json", "structures.safetensors"]),
    cut=st.floats(0, 1),
    junk=st.binary(max_size=64),
    mode=st.sampled_from(["truncate", "replace", "splice"]),
)
def test_damaged_trajectory_files(saved_trajectory, tmp_path_factory, which, cut, junk, mode):
    folder = tmp_path_factory.mktemp("case")
    for f in saved_trajectory.iterdir():
        shutil.copy(f, folder / f.name)
    target = folder / which
    data = target.read_bytes()
    at = int(cut * len(data))
    if mode == "truncate":
        data = data[:at]
    elif mode == "replace":
        data = junk
    else:
        data = data[:at] + junk + data[at + len(junk) :]
    target.write_bytes(data)
    _load_or_gisp_error(folder)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@CASES
@given(
    path=st.lists(
        st.sampled_from(
            [
                "geometry",
                "steps",
                "structures",
                "gqa",
                "version",
                "num_layers",
                "intermediate_size",
                "num_heads",
                "sha256",
                0,
                1,
                "param_sparsity",
            ]
        ),
        min_size=1,
        max_size=3,
    ),
    value=json_values,
)
def test_edited_trajectory_metadata(saved_trajectory, tmp_path_factory, path, value):
    import json

    folder = tmp_path_factory.mktemp("meta")
    for f in saved_trajectory.iterdir():
        shutil.copy(f, folder / f.name)
    meta = json.loads((folder / "trajectory.json").read_text())
    node = meta
    for key in path[:-1]:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            break
    last = path[-1]
    if isinstance(node, dict):
        node[str(last)] = value
    elif isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = value
    (folder / "trajectory.json").write_text(json.dumps(meta))
    _load_or_gisp_error(folder)


@CASES
@given(
    lines=st.lists(st.binary(max_size=80) | st.text(max_size=80).map(str.encode), max_size=8),
    suffix=st.sampled_from([".jsonl", ".txt"]),
)
def test_random_calibration_files(tmp_path_factory, lines, suffix):
    path = tmp_path_factory.mktemp("data") / f"calib{suffix}"
    path.write_bytes(b"\n".join(lines))
    try:
        docs = load_documents(resolve_text_source(str(path)))
        assert docs and all(isinstance(d, str) and d.strip() for d in docs)
    except GispError:
        pass
    if suffix == ".jsonl":
        try:
            read_jsonl(path)
        except GispError:
            pass


@pytest.fixture(scope="module")
def task_heads(data_dir) -> dict[str, bytes]:
    """The first items of every task file, as the bytes a damaged copy starts from."""
    import bz2

    from gisp_engine.data.tasks import SOURCES

    heads = {}
    for name, source in SOURCES.items():
        path = data_dir / source.local
        if path.suffix == ".bz2":
            with bz2.open(path, "rt", encoding="utf-8") as fh:
                heads[name] = "".join(fh.readline() for _ in range(6 * 10)).encode()
        else:
            with open(path, "rb") as fh:
                heads[name] = b"".join(fh.readline() for _ in range(10))
    return heads


@CASES
@given(
    name=st.sampled_from(
        [
            "boolq",
            "piqa",
            "hellaswag",
            "winogrande",
            "arc_easy",
            "arc_challenge",
            "openbookqa",
            "gsm8k_train",
            "gsm8k_test",
        ]
    ),
    cut=st.floats(0, 1),
    junk=st.binary(max_size=48),
    mode=st.sampled_from(["truncate", "replace", "splice", "compressed-bytes"]),
)
def test_damaged_task_files(task_heads, tmp_path_factory, name, cut, junk, mode):
    import bz2

    from gisp_engine.data.tasks import SOURCES

    source = SOURCES[name]
    data = task_heads[name]
    at = int(cut * len(data))
    if mode == "truncate":
        data = data[:at]
    elif mode == "replace":
        data = junk
    elif mode == "splice":
        data = data[:at] + junk + data[at + len(junk) :]
    compressed = source.local.endswith(".bz2")
    if compressed:
        data = bz2.compress(data)
        if mode == "compressed-bytes":  # damage the container itself
            cut_at = int(cut * len(data))
            data = data[:cut_at] + junk + data[cut_at + len(junk) :]
    path = tmp_path_factory.mktemp("task") / Path(source.local).name
    path.write_bytes(data)
    try:
        items = source.parse(path, name)
        assert all(item.task == name for item in items)
    except GispError:
        pass
