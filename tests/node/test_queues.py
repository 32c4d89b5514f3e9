"""The queue file: parsing, validation with errors naming queue and field, and reload on change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.queues import (
    ALL_TIERS,
    ALL_TRUSTS,
    ANYONE,
    DEFAULT_QUEUES_TOML,
    QueueConfig,
    QueueConfigError,
    QueueFile,
    Step,
    load_queues,
    parse_queues,
)
from registry.records import Trust

GOOD = """\
[queues.sales]
skills = { sales = 3, english = 2 }
priority = 10
service_level_pct = 90
service_level_s = 15.5
max_wait_s = 240
overflow = "queue:support"
ring_timeout_s = 12
wrap_up_s = 0
missed_offers_to_not_ready = 3

[[queues.sales.steps]]
after_s = 0
tiers = [1]
trusts = ["partner"]

[[queues.sales.steps]]
after_s = 30
tiers = [2, 3]
trusts = ["inhouse"]
sites = ["site-a", "site-b"]

[queues.support]
skills = {}
"""


def sales(extra: str = "", step: str = "", *, skills: str = "skills = { sales = 3 }") -> str:
    """A file with one queue, sales, with `extra` lines in its table and `step` in its 2nd step."""
    return f"""\
[queues.sales]
{skills}
{extra}

[[queues.sales.steps]]
after_s = 0
tiers = [1]
trusts = ["partner"]

[[queues.sales.steps]]
after_s = 30
tiers = [2]
trusts = ["inhouse"]
{step}
"""


def test_a_good_file_gives_every_field() -> None:
    queues = parse_queues(GOOD)
    assert list(queues) == ["sales", "support"]
    assert queues["sales"] == QueueConfig(
        name="sales",
        skills=(("english", 2), ("sales", 3)),
        priority=10,
        service_level_pct=90.0,
        service_level_s=15.5,
        steps=(
            Step(0.0, frozenset({1}), frozenset({Trust.PARTNER})),
            Step(
                30.0, frozenset({2, 3}), frozenset({Trust.INHOUSE}), frozenset({"site-a", "site-b"})
            ),
        ),
        max_wait_s=240.0,
        overflow="queue:support",
        ring_timeout_s=12.0,
        wrap_up_s=0.0,
        missed_offers_to_not_ready=3,
    )
    assert queues["sales"].overflow_queue == "support"


def test_defaults_fill_what_the_file_leaves_out() -> None:
    support = parse_queues(GOOD)["support"]
    assert support == QueueConfig("support", ())
    assert support.steps == ANYONE
    assert support.steps[0].tiers == ALL_TIERS
    assert support.steps[0].trusts == ALL_TRUSTS
    assert support.steps[0].sites is None
    assert (support.priority, support.max_wait_s, support.overflow) == (0, 300.0, "voicemail")
    assert support.overflow_queue is None


def test_the_built_in_sample_parses() -> None:
    queues = parse_queues(DEFAULT_QUEUES_TOML)
    assert set(queues) == {"sales", "support", "billing", "escalations"}
    first, second = queues["sales"].steps
    assert first == Step(0.0, frozenset({1}), frozenset({Trust.PARTNER}))
    assert second == Step(30.0, frozenset({2}), frozenset({Trust.INHOUSE}))
    assert queues["escalations"].steps == (Step(0.0, frozenset({2}), frozenset({Trust.INHOUSE})),)
    assert queues["escalations"].overflow_queue == "support"


BAD_FIELDS = [
    ('priority = "high"', "", "priority", "must be an integer"),
    ("priority = 1.5", "", "priority", "must be an integer"),
    ("priority = 2_000_000", "", "priority", "integer in -1000000-1000000"),
    ("service_level_pct = 0", "", "service_level_pct", "percentage"),
    ("service_level_pct = 120", "", "service_level_pct", "percentage"),
    ('service_level_s = "20"', "", "service_level_s", "must be a number"),
    ("service_level_s = 0", "", "service_level_s", "seconds above 0"),
    ("max_wait_s = -5", "", "max_wait_s", "seconds above 0"),
    ("max_wait_s = inf", "", "max_wait_s", "at most 86400"),
    ("max_wait_s = nan", "", "max_wait_s", "seconds above 0"),
    ("ring_timeout_s = true", "", "ring_timeout_s", "must be a number"),
    ("ring_timeout_s = 0", "", "ring_timeout_s", "seconds above 0"),
    ("wrap_up_s = -1", "", "wrap_up_s", "seconds at least 0"),
    ("missed_offers_to_not_ready = 0", "", "missed_offers_to_not_ready", "1-100"),
    ('overflow = "email"', "", "overflow", "voicemail, hangup or queue:NAME"),
    ("overflow = 3", "", "overflow", "must be a string"),
    ('overflow = "queue:no such"', "", "overflow", "overflow queue must be"),
    ('overflow = "queue:sales"', "", "overflow", "into itself"),
    ("", 'sites = ["site a"]', "steps[1].sites", "site must be"),
    ("", "sites = []", "steps[1].sites", "non-empty set of site ids"),
    ("", 'sites = "site-a"', "steps[1].sites", "list of site ids"),
    ("max_wait_s = 30", "", "steps[1].after_s", "never reached"),
]


@pytest.mark.parametrize(("extra", "step", "field", "message"), BAD_FIELDS)
def test_a_bad_field_names_the_queue_and_the_field(
    extra: str, step: str, field: str, message: str
) -> None:
    with pytest.raises(QueueConfigError) as caught:
        parse_queues(sales(extra, step))
    error = caught.value
    assert (error.queue, error.field) == ("sales", field)
    assert str(error).startswith(f"queue sales: {field}: ")
    assert message in str(error)
    assert error.code == "queue_config_invalid"
    assert isinstance(error, ValueError)


BAD_STEPS = [
    ("after_s = -1", "steps[0].after_s", "seconds at least 0"),
    ('after_s = "0"', "steps[0].after_s", "must be a number"),
    ("after_s = 5", "steps[0].after_s", "first step must start at after_s = 0"),
    ("tiers = []", "steps[0].tiers", "non-empty set of agent tiers"),
    ("tiers = [0]", "steps[0].tiers", "agent tiers 1-9"),
    ("tiers = [10]", "steps[0].tiers", "agent tiers 1-9"),
    ('tiers = ["1"]', "steps[0].tiers", "list of tiers"),
    ('trusts = ["friends"]', "steps[0].trusts", '"inhouse" and/or "partner"'),
    ("trusts = []", "steps[0].trusts", "non-empty set of inhouse"),
    ("", "steps[0].trusts", "missing"),
]


@pytest.mark.parametrize(("line", "field", "message"), BAD_STEPS)
def test_a_bad_step_names_the_queue_and_the_step(line: str, field: str, message: str) -> None:
    key = line.split(" ")[0] if line else "trusts"
    defaults = {"after_s": "after_s = 0", "tiers": "tiers = [1]", "trusts": 'trusts = ["partner"]'}
    defaults[key] = line
    text = "[queues.sales]\nskills = {}\n[[queues.sales.steps]]\n" + "\n".join(defaults.values())
    with pytest.raises(QueueConfigError) as caught:
        parse_queues(text)
    assert (caught.value.queue, caught.value.field) == ("sales", field)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("skills", "field", "message"),
    [
        ("skills = { sales = 11 }", "skills.sales", "integer in 1-10"),
        ("skills = { sales = 0 }", "skills.sales", "integer in 1-10"),
        ('skills = { sales = "3" }', "skills.sales", "integer in 1-10"),
        ('skills = { "two words" = 3 }', "skills", "skills name must be"),
        ('skills = ["sales"]', "skills", "table of skill = minimum level"),
        ("", "skills", "missing"),
    ],
)
def test_bad_skills_are_named(skills: str, field: str, message: str) -> None:
    with pytest.raises(QueueConfigError) as caught:
        parse_queues(sales(skills=skills))
    assert (caught.value.queue, caught.value.field) == ("sales", field)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "queue", "unknown"),
    [
        (sales("prioritty = 3"), "sales", "prioritty"),
        (sales(step="tier = [1]"), "sales", "tier"),
        (sales() + "\n[defaults]\npriority = 1\n", "", "defaults"),
        ("[queue.sales]\nskills = {}\n", "", "queue"),
    ],
)
def test_unknown_keys_are_rejected(text: str, queue: str, unknown: str) -> None:
    with pytest.raises(QueueConfigError, match=f"unknown .*{unknown}") as caught:
        parse_queues(text)
    assert caught.value.queue == queue


def test_an_unknown_step_key_names_the_step() -> None:
    with pytest.raises(QueueConfigError) as caught:
        parse_queues(sales(step="tier = [1]"))
    assert caught.value.field == "steps[1]"


def test_overflow_to_a_missing_queue_is_rejected() -> None:
    with pytest.raises(QueueConfigError) as caught:
        parse_queues(sales('overflow = "queue:support"'))
    assert (caught.value.queue, caught.value.field) == ("sales", "overflow")
    assert "'support', which is not configured" in str(caught.value)


def test_a_ring_of_overflows_is_rejected() -> None:
    text = (
        '[queues.a]\nskills = {}\noverflow = "queue:b"\n'
        '[queues.b]\nskills = {}\noverflow = "queue:c"\n'
        '[queues.c]\nskills = {}\noverflow = "queue:a"\n'
    )
    with pytest.raises(QueueConfigError, match=r"ring \(a -> b -> c -> a\)"):
        parse_queues(text)
    parse_queues(text.replace('"queue:a"', '"hangup"'))  # a chain is fine


@pytest.mark.parametrize("second", [0, 10, 20])
def test_steps_out_of_order_are_rejected(second: int) -> None:
    text = sales().replace("after_s = 30", "after_s = 20") + (
        f"\n[[queues.sales.steps]]\nafter_s = {second}\ntiers = [3]\ntrusts = ['inhouse']\n"
    )
    with pytest.raises(QueueConfigError) as caught:
        parse_queues(text)
    assert (caught.value.queue, caught.value.field) == ("sales", "steps[2].after_s")
    assert "increasing order of after_s" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[queues.sales\n", "not valid TOML"),
        ("", "no queues"),
        ("[queues]\n", "no queues"),
        ("queues = 3\n", "no queues"),
        ("[queues]\nsales = 3\n", "queue sales: must be a table"),
        ('[queues."two words"]\nskills = {}\n', "queue two words: name: name must be"),
        ("[queues.sales]\nskills = {}\nsteps = 3\n", "queue sales: steps: must be one or more"),
    ],
)
def test_broken_documents_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(QueueConfigError, match=message.replace("(", r"\(")):
        parse_queues(text)


def test_values_built_in_code_are_validated_too() -> None:
    with pytest.raises(QueueConfigError, match="queue q: steps: a queue needs at least one step"):
        QueueConfig("q", (), steps=())
    with pytest.raises(QueueConfigError, match="tiers"):
        Step(0.0, frozenset({1.5}), ALL_TRUSTS)  # type: ignore[arg-type]
    with pytest.raises(QueueConfigError, match="trusts"):
        Step(0.0, ALL_TIERS, frozenset({"inhouse"}))  # type: ignore[arg-type]
    with pytest.raises(QueueConfigError, match="queue q: skills"):
        QueueConfig("q", (("b", 1), ("a", 1)))


# -- the file --------------------------------------------------------------------------------


def test_load_queues_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "queues.toml"
    with pytest.raises(QueueConfigError, match=f"cannot read queue file {path}"):
        load_queues(path)
    path.write_text(sales("priority = 'x'"))
    with pytest.raises(QueueConfigError) as caught:
        load_queues(path)
    assert str(caught.value).startswith(f"queue sales: priority: {path}: must be an integer")
    path.write_text(GOOD)
    assert load_queues(path) == parse_queues(GOOD)


def write(path: Path, text: str, tick: int) -> None:
    """Write `text` with a modification time of its own, so a change shows however fast."""
    path.write_text(text)
    os.utime(path, ns=(tick * 10**9, tick * 10**9))


def test_queue_file_reloads_on_change(tmp_path: Path) -> None:
    path = tmp_path / "queues.toml"
    write(path, sales("priority = 1"), 1)
    queues = QueueFile(path)
    assert queues.current()["sales"].priority == 1
    assert queues.current()["sales"].priority == 1
    assert queues.reloads == 0  # unchanged: not read again
    write(path, sales("priority = 2"), 2)  # same size
    assert queues.current()["sales"].priority == 2
    assert queues.reloads == 1
    assert queues.last_error is None


def test_queue_file_keeps_the_last_good_config(tmp_path: Path) -> None:
    path = tmp_path / "queues.toml"
    write(path, sales("priority = 1"), 1)
    queues = QueueFile(path)
    write(path, sales("priority = 'one'"), 2)
    assert queues.current()["sales"].priority == 1
    error = queues.last_error
    assert error is not None
    assert (error.queue, error.field) == ("sales", "priority")
    queues.current()
    assert queues.reloads == 1  # a broken file is not parsed again until it changes
    path.unlink()
    assert queues.current()["sales"].priority == 1
    assert queues.last_error is not None
    assert "cannot read" in str(queues.last_error)
    write(path, sales("priority = 3"), 3)
    assert queues.current()["sales"].priority == 3
    assert queues.last_error is None


def test_queue_file_follows_a_config_map_swap(tmp_path: Path) -> None:
    """Kubernetes updates a mounted ConfigMap by pointing a symlink at a new directory."""
    for version, priority in (("v1", 1), ("v2", 2)):
        (tmp_path / version).mkdir()
        write(tmp_path / version / "queues.toml", sales(f"priority = {priority}"), 1)
    data = tmp_path / "..data"
    data.symlink_to("v1")
    path = tmp_path / "queues.toml"
    path.symlink_to("..data/queues.toml")
    queues = QueueFile(path)
    assert queues.current()["sales"].priority == 1
    (tmp_path / "..data_tmp").symlink_to("v2")
    (tmp_path / "..data_tmp").replace(data)
    assert queues.current()["sales"].priority == 2


def test_queue_file_needs_a_good_first_load(tmp_path: Path) -> None:
    path = tmp_path / "queues.toml"
    path.write_text(sales('overflow = "queue:nowhere"'))
    with pytest.raises(QueueConfigError, match="nowhere"):
        QueueFile(path)


def test_queue_file_without_a_path_serves_the_sample() -> None:
    queues = QueueFile(None)
    assert queues.current() == parse_queues(DEFAULT_QUEUES_TOML)


# -- a law: every valid queue survives the file format ----------------------------------------

names = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)
seconds = st.integers(0, 3_000).map(lambda n: n / 4)


@st.composite
def steps(draw: st.DrawFn) -> tuple[Step, ...]:
    later = draw(st.lists(seconds.filter(lambda s: s > 0), max_size=3, unique=True))
    return tuple(
        Step(
            after_s,
            frozenset(draw(st.sets(st.integers(1, 9), min_size=1))),
            frozenset(draw(st.sets(st.sampled_from(Trust), min_size=1))),
            draw(st.none() | st.frozensets(names, min_size=1, max_size=3)),
        )
        for after_s in [0.0, *sorted(later)]
    )


@st.composite
def queue_files(draw: st.DrawFn) -> dict[str, QueueConfig]:
    queue_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    queues = {}
    for i, name in enumerate(queue_names):
        chosen = draw(steps())
        overflow = draw(
            st.sampled_from(["voicemail", "hangup", *(f"queue:{n}" for n in queue_names[i + 1 :])])
        )
        queues[name] = QueueConfig(
            name=name,
            skills=tuple(
                sorted(draw(st.dictionaries(names, st.integers(1, 10), max_size=5)).items())
            ),
            priority=draw(st.integers(-1_000_000, 1_000_000)),
            service_level_pct=draw(st.integers(1, 400).map(lambda n: n / 4)),
            service_level_s=draw(seconds.filter(lambda s: s > 0)),
            steps=chosen,
            max_wait_s=chosen[-1].after_s + draw(st.integers(1, 1000)),
            overflow=overflow,
            ring_timeout_s=draw(st.integers(1, 600).map(float)),
            wrap_up_s=draw(seconds),
            missed_offers_to_not_ready=draw(st.integers(1, 100)),
        )
    return queues


def to_toml(queues: dict[str, QueueConfig]) -> str:
    lines = []
    for q in queues.values():
        skills = ", ".join(f"{name} = {level}" for name, level in q.skills)
        lines += [
            f"[queues.{q.name}]",
            f"skills = {{ {skills} }}",
            f"priority = {q.priority}",
            f"service_level_pct = {q.service_level_pct}",
            f"service_level_s = {q.service_level_s}",
            f"max_wait_s = {q.max_wait_s}",
            f'overflow = "{q.overflow}"',
            f"ring_timeout_s = {q.ring_timeout_s}",
            f"wrap_up_s = {q.wrap_up_s}",
            f"missed_offers_to_not_ready = {q.missed_offers_to_not_ready}",
        ]
        for step in q.steps:
            trusts = ", ".join(f'"{t.name.lower()}"' for t in sorted(step.trusts, key=str))
            lines += [
                f"[[queues.{q.name}.steps]]",
                f"after_s = {step.after_s}",
                f"tiers = {sorted(step.tiers)}",
                f"trusts = [{trusts}]",
            ]
            if step.sites is not None:
                lines.append(f"sites = {sorted(step.sites)!r}".replace("'", '"'))
    return "\n".join(lines) + "\n"


@given(queue_files())
def test_every_valid_configuration_survives_the_file(queues: dict[str, QueueConfig]) -> None:
    assert parse_queues(to_toml(queues)) == queues
