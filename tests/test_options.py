"""Every setting of a run is declared once (``gisp_engine.pruning.config.OPTIONS``: type, default, help, label and
what it accepts), and ``PruneConfig.validate``, ``gisp prune``'s flags and the Run page's widgets all read it."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from gisp_engine.cli import build_parser
from gisp_engine.core.errors import GispError
from gisp_engine.pruning.config import OPTIONS, PruneConfig, from_arguments

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = dataclasses.asdict(PruneConfig())
NOT_ON_THE_PAGE = {"device_map"}  # spreading a model over GPUs: the CLI's
OWN_WIDGET = {"calib"}  # the Run page lists the data folder's files and uploads: its own select box


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def other_value(name: str):
    """A value of the setting ``name`` other than its default, that its declaration accepts."""
    kind, opt = OPTIONS[name]
    default = DEFAULTS[name]
    if kind == "bool":
        return not default
    if opt.allowed():
        return next(c for c in opt.allowed() if c != default)
    if kind == "int":
        return (opt.minimum or 0) + 3
    if kind == "float":
        return 0.25
    return {"model": "some-model", "tasks": "boolq,piqa", "device": "cpu"}.get(name, f"other-{name}")


def test_every_field_is_declared_once():
    assert list(OPTIONS) == [f.name for f in dataclasses.fields(PruneConfig)]
    for name, (kind, opt) in OPTIONS.items():
        assert kind in {"int", "float", "str", "bool"}, name
        assert opt.help and opt.label, name
        if DEFAULTS[name] is None:
            assert opt.unset, f"{name}: what None means must be said"


def test_the_flags_are_the_declarations():
    """``gisp prune`` with no flag is the default config; each flag, given another value, reaches its field."""
    assert from_arguments(build_parser().parse_args(["prune"])) == PruneConfig()
    argv, expected = ["prune"], {}
    for name, (kind, _) in OPTIONS.items():
        value = expected[name] = other_value(name)
        argv += [flag(name) if value else "--no-" + flag(name)[2:]] if kind == "bool" else [flag(name), str(value)]
    assert dataclasses.asdict(from_arguments(build_parser().parse_args(argv))) == {**DEFAULTS, **expected}
    helps = " ".join(build_parser()._subparsers._group_actions[0].choices["prune"].format_help().split())
    for name, (_, opt) in OPTIONS.items():
        assert flag(name) in helps and " ".join(opt.help.split()[:4]) in helps, name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune", "--dtype", "int8"])  # a choice is refused by the parser too


@pytest.mark.parametrize(
    "name", [n for n, (k, o) in OPTIONS.items() if o.minimum is not None or o.fraction or o.allowed() or k == "bool"]
)
def test_validation_reads_the_declaration(name):
    kind, opt = OPTIONS[name]
    if kind == "bool":
        bad, message = "yes", f"{flag(name)} must be true or false"
    elif opt.minimum is not None:
        bad, message = opt.minimum - 1, f"{flag(name)} must be a whole number of at least {opt.minimum}"
    elif opt.fraction:
        bad, message = 1.0, f"{flag(name)} must be a fraction between 0 and 1"
    else:
        bad, message = "nope", f"unknown {opt.what or name} 'nope': choose one of {', '.join(opt.allowed())}"
    with pytest.raises(GispError, match=re.escape(message)):
        PruneConfig(**{name: bad}).validate()
    if DEFAULTS[name] is None:
        PruneConfig(**{name: None}).validate()  # "unset" is accepted
    else:
        with pytest.raises(GispError):
            PruneConfig(**{name: None}).validate()


def test_the_run_page_widgets_are_the_declarations(monkeypatch):
    """Every setting but the CLI's own has a widget keyed ``run_<name>`` with its declared label, help and default;
    each one set to another value reaches the config the page submits."""
    from streamlit.testing.v1 import AppTest

    from gisp_engine.jobs import background as jobs

    def refuse(config):  # the page shows a GispError as a message: it carries what was asked
        raise GispError("asked " + json.dumps(config.to_dict()))

    monkeypatch.setattr(jobs, "submit", refuse)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/1_Run.py").run()
    assert not at.exception, at.exception
    expected = {}
    for name, (kind, opt) in OPTIONS.items():
        if name in NOT_ON_THE_PAGE:
            continue
        key = f"run_{name}"
        if opt.allowed() or name in OWN_WIDGET or name == "device":
            widget = at.selectbox(key=key)
        elif kind == "bool":
            widget = at.checkbox(key=key)
        elif kind in ("int", "float"):
            widget = at.number_input(key=key)
        else:
            widget = at.text_input(key=key)
        assert widget.label.startswith(opt.label), (name, widget.label)
        if name in OWN_WIDGET:
            continue
        if name != "model":  # the model's help says what this server accepts
            assert widget.help == opt.help, name
        default = DEFAULTS[name]
        assert widget.value == (default if default is not None else (opt.minimum or 0) - 1), name
        if name in ("objective", "calib_items"):  # perplexity (which takes no items per task) stays
            continue
        value = expected[name] = other_value(name)
        widget.set_value(value)
    next(b for b in at.button if b.label == "Start the run").click().run()
    asked = [json.loads(e.value.split("asked ", 1)[1]) for e in at.error if "asked " in e.value]
    assert asked, [e.value for e in at.error]
    for name, value in expected.items():
        assert asked[0][name] == value, name


def test_the_readme_table_lists_every_flag():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("### `gisp prune`") :]
    table = table[: table.index("\n\n", table.index("| flag |"))]
    for name in OPTIONS:
        assert f"`{flag(name)}" in table or f"`--no-{flag(name)[2:]}`" in table, name
