"""The strict completion parsers: table-driven accept/reject cases, then property tests.

The properties (hypothesis, about 12,000 generated cases in all): every valid output a
strategy builds parses back to what was built (through prompts.code's formatters and
escape()); random text, mutated valid outputs (truncated, extra quotes or parentheses,
bad escapes, wrong citations, unicode) and huge inputs never raise anything but
ParseError; whatever does parse satisfies the grammar's invariants and re-parses to
itself after formatting.
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.parsers import (
    MAX_QUERY_CHARS,
    ParseError,
    parse_answer,
    parse_check,
    parse_decision,
    parse_judgement,
    parse_ranking,
    parse_summary,
)
from prompts.actions import (
    SPACE_LIKE_CHARS,
    Answer,
    Keep,
    Revise,
    Search,
    Summary,
    Terminate,
    strip_citations,
)
from prompts.code import (
    collapse,
    defang,
    escape,
    format_answer,
    format_check,
    format_decision,
    format_summary,
)
from prompts.ranker import format_ranking


def fast(n: int) -> settings:
    """n generated cases, no per-case deadline (the machine is shared and noisy)."""
    return settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


SHOWN = frozenset({1, 2, 3})

# ---------------------------------------------------------------- table-driven cases

DECISION_OK = [
    ('Search("Ada Marrow")', Search("Ada Marrow")),
    (' Search("Ada Marrow")\n', Search("Ada Marrow")),
    ('\tSearch("x")  \r\n', Search("x")),
    ("Terminate()", Terminate()),
    (" Terminate() \n", Terminate()),
    ('Search("say \\"hi\\"")', Search('say "hi"')),
    ('Search("back\\\\slash")', Search("back\\slash")),
    ('Search("Zoë 中文 🚀")', Search("Zoë 中文 🚀")),
    ('Search("[link_id=3] is just text in a query")', Search("[link_id=3] is just text in a query")),
    ('Search("' + "x" * MAX_QUERY_CHARS + '")', Search("x" * MAX_QUERY_CHARS)),
]
DECISION_BAD = [
    ("", "expected Search"),
    ("   \n", "expected Search"),
    ('search("a")', "expected Search"),
    ("Search()", "expected '\"'"),
    ('Search("")', "empty query"),
    ('Search("   ")', "empty query"),
    ('Search("a")x', "unexpected text"),
    ('Search("a"))', "unexpected text"),
    ('Search(("a")', "expected '\"'"),
    ('Search("a" )', "expected ')'"),
    ('Search("a"', "expected ')'"),
    ('Search("a', "unterminated"),
    ('Search("a\\")', "unterminated"),
    ('Search("a\\', "unterminated"),
    ('Search("a\\nb")', "bad escape"),
    ('Search("a\\u0041")', "bad escape"),
    ('Search("a\tb")', "U+0009"),
    ('Search("a\u2028b")', "U+2028"),
    ('Search("a"b")', "expected ')'"),
    ("Search('a')", "expected '\"'"),
    ('Search("a")\nSearch("b")', "unexpected text"),
    ('\nSearch("a")', "expected Search"),
    ('Search("' + "x" * (MAX_QUERY_CHARS + 1) + '")', "257 characters"),
    ("Terminate( )", "expected Search"),
    ("Terminate() now", "unexpected text"),
    ("Terminate", "expected Search"),
    ('ACTION_SELECTED = Search("a")', "expected Search"),
]


@pytest.mark.parametrize(("text", "want"), DECISION_OK)
def test_decision_accepts(text, want):
    assert parse_decision(text) == want


@pytest.mark.parametrize(("text", "reason"), DECISION_BAD)
def test_decision_rejects(text, reason):
    with pytest.raises(ParseError, match=None) as err:
        parse_decision(text)
    assert reason in str(err.value)
    assert "\n" not in str(err.value)


SUMMARY_OK = [
    ("None", Summary(None, ())),
    (" None \n", Summary(None, ())),
    ('"X is Y [link_id=2]."', Summary("X is Y [link_id=2].", (2,))),
    (
        '"A [link_id=3]. B [link_id=1]. C [link_id=3]."',
        Summary("A [link_id=3]. B [link_id=1]. C [link_id=3].", (3, 1)),
    ),
    ('"Two sources [link_id=1][link_id=2]"', Summary("Two sources [link_id=1][link_id=2]", (1, 2))),
    ('"He said \\"no\\" [link_id=1]"', Summary('He said "no" [link_id=1]', (1,))),
]
SUMMARY_BAD = [
    ('"X is Y."', "no [link_id=N] citation"),
    ('""', "no [link_id=N] citation"),
    ('"None"', "no [link_id=N] citation"),
    ('"X [link_id=7]"', "[link_id=7] is not among"),
    ('"X [link_id=0]"', "[link_id=0] is not among"),
    ('"X [link_id=02]"', "malformed citation"),
    ('"X [link_id=2"', "malformed citation"),
    ('"X link_id=2"', "malformed citation"),
    ('"X [link_id = 2]"', "malformed citation"),
    ('"X [link_id=1, 2]"', "malformed citation"),
    ('"X [link_id=-1]"', "malformed citation"),
    ('"X [link_id=99999999999]"', "malformed citation"),
    ('"[link_id=2]"', "no facts"),
    ('"[link_id=2] [link_id=3]"', "no facts"),
    ("None.", "unexpected text"),
    ("Nothing relevant", "expected '\"'"),
    ("none", "expected '\"'"),
    ('"X [link_id=2]" [link_id=3]', "unexpected text"),
    ('"X [link_id=2]', "unterminated"),
    ('"X \\[link_id=2]"', "bad escape"),
]


@pytest.mark.parametrize(("text", "want"), SUMMARY_OK)
def test_summary_accepts(text, want):
    assert parse_summary(text, SHOWN) == want


@pytest.mark.parametrize(("text", "reason"), SUMMARY_BAD)
def test_summary_rejects(text, reason):
    with pytest.raises(ParseError) as err:
        parse_summary(text, SHOWN)
    assert reason in str(err.value)


ANSWER_OK = [
    ('"Ada Marrow [link_id=1]"', SHOWN, Answer("Ada Marrow [link_id=1]", (1,)), "Ada Marrow"),
    (
        ' "32 years [link_id=2] [link_id=3]"\n',
        SHOWN,
        Answer("32 years [link_id=2] [link_id=3]", (2, 3)),
        "32 years",
    ),
    ('"Paris [link_id=1]."', SHOWN, Answer("Paris [link_id=1].", (1,)), "Paris."),
    ('"Ada Marrow"', frozenset(), Answer("Ada Marrow", ()), "Ada Marrow"),
    ('"  spaced   out  [link_id=3] "', SHOWN, Answer("  spaced   out  [link_id=3] ", (3,)), "spaced out"),
]
ANSWER_BAD = [
    ('"Ada Marrow"', SHOWN, "no [link_id=N] citation"),
    ('"[link_id=1]"', SHOWN, "empty answer"),
    ('"   "', frozenset(), "empty answer"),
    ('"X [link_id=4]"', SHOWN, "not among"),
    ('"X [link_id=1]"', frozenset(), "not among"),
    ("Ada Marrow [link_id=1]", SHOWN, "expected '\"'"),
    ("None", SHOWN, "expected '\"'"),
    ('"A [link_id=1]" "B"', SHOWN, "unexpected text"),
    ('"A [link_id=1]\\t"', SHOWN, "bad escape"),
]


@pytest.mark.parametrize(("text", "valid", "want", "plain"), ANSWER_OK)
def test_answer_accepts(text, valid, want, plain):
    got = parse_answer(text, valid)
    assert got == want
    assert got.plain == plain


@pytest.mark.parametrize(("text", "valid", "reason"), ANSWER_BAD)
def test_answer_rejects(text, valid, reason):
    with pytest.raises(ParseError) as err:
        parse_answer(text, valid)
    assert reason in str(err.value)


CHECK_OK = [
    ("Keep()", Keep()),
    (" Keep()\n", Keep()),
    ('Revise("Norway [link_id=2]")', Revise(Answer("Norway [link_id=2]", (2,)))),
]
CHECK_BAD = [
    ("Keep", "expected Keep()"),
    ("keep()", "expected Keep()"),
    ("Keep() Keep()", "unexpected text"),
    ("Revise()", "expected '\"'"),
    ('Revise("Norway")', "no [link_id=N] citation"),
    ('Revise("Norway [link_id=9]")', "not among"),
    ('Revise("Norway [link_id=2]"))', "unexpected text"),
    ('Revise("Norway [link_id=2]"', "expected ')'"),
    ('Revise("[link_id=2]")', "empty answer"),
]


@pytest.mark.parametrize(("text", "want"), CHECK_OK)
def test_check_accepts(text, want):
    assert parse_check(text, SHOWN) == want


@pytest.mark.parametrize(("text", "reason"), CHECK_BAD)
def test_check_rejects(text, reason):
    with pytest.raises(ParseError) as err:
        parse_check(text, SHOWN)
    assert reason in str(err.value)


@pytest.mark.parametrize(("text", "want"), [("True", True), (" False\n", False), ("True  ", True)])
def test_judgement_accepts(text, want):
    assert parse_judgement(text) is want


@pytest.mark.parametrize("text", ["true", "Yes", "True.", "", "False False", "1", "CORRECT = True"])
def test_judgement_rejects(text):
    with pytest.raises(ParseError, match="judgement"):
        parse_judgement(text)


RANKING_OK = [
    (
        "Explanation: 2 cites the right snippet.\nBest: 2\nRanking: 2 > 1 > 3",
        ("2 cites the right snippet.", 1, [1, 0, 2]),
    ),
    ("Explanation: tie\r\nBest: 3\r\nRanking: 3>1>2\r\n\n", ("tie", 2, [2, 0, 1])),
    ("  Explanation:   padded  \n Best: 1 \n Ranking:  1 >  3 > 2  ", ("padded", 0, [0, 2, 1])),
]
RANKING_BAD = [
    ("Explanation: x\nBest: 2\nRanking: 1 > 2 > 3", "Best is 2 but the Ranking starts with 1"),
    ("Explanation: x\nBest: 1\nRanking: 1 > 2", "exactly once"),
    ("Explanation: x\nBest: 1\nRanking: 1 > 2 > 2", "exactly once"),
    ("Explanation: x\nBest: 1\nRanking: 1 > 2 > 3 > 3", "exactly once"),
    ("Explanation: x\nBest: 0\nRanking: 0 > 1 > 2", "candidate number 1..3"),
    ("Explanation: x\nBest: 4\nRanking: 4 > 1 > 2", "candidate number 1..3"),
    ("Explanation: x\nBest: two\nRanking: 2 > 1 > 3", "candidate number 1..3"),
    ("Explanation: x\nBest: 01\nRanking: 1 > 2 > 3", "candidate number 1..3"),
    ("Explanation: x\nBest: 1\nRanking: 1, 2, 3", "candidate number 1..3"),
    ("Explanation:\nBest: 1\nRanking: 1 > 2 > 3", "empty explanation"),
    ("Best: 1\nRanking: 1 > 2 > 3", "expected 3 lines"),
    ("Explanation: x\n\nBest: 1\nRanking: 1 > 2 > 3", "expected 3 lines"),
    ("Explanation: x\nBest: 1\nRanking: 1 > 2 > 3\nThanks!", "expected 3 lines"),
    ("Reasoning: x\nBest: 1\nRanking: 1 > 2 > 3", "'Explanation:'"),
    ("Explanation: x\nbest: 1\nRanking: 1 > 2 > 3", "'Best:'"),
]


@pytest.mark.parametrize(("text", "want"), RANKING_OK)
def test_ranking_accepts(text, want):
    assert parse_ranking(text, 3) == want


@pytest.mark.parametrize(("text", "reason"), RANKING_BAD)
def test_ranking_rejects(text, reason):
    with pytest.raises(ParseError) as err:
        parse_ranking(text, 3)
    assert reason in str(err.value)


@pytest.mark.parametrize("k", [0, -1, True, 2.0, None])
def test_ranking_rejects_bad_k(k):
    with pytest.raises(ParseError, match="k must be a positive int"):
        parse_ranking("Explanation: x\nBest: 1\nRanking: 1", k)


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("Ada Marrow [link_id=4]", "Ada Marrow"),
        ("Ada [link_id=1] and Bob [link_id=22].", "Ada and Bob."),
        ("  a\n\tb  [link_id=1][link_id=2]  ", "a b"),
        ("kept [link_id=x] and [link_id=07]", "kept [link_id=x] and [link_id=07]"),
        ("", ""),
    ],
)
def test_strip_citations(text, plain):
    assert strip_citations(text) == plain


@pytest.mark.parametrize("parse", [parse_decision, parse_judgement, lambda t: parse_summary(t, SHOWN)])
@pytest.mark.parametrize("value", [None, 3, b'Search("a")', ["Terminate()"]])
def test_non_strings_are_parse_errors(parse, value):
    with pytest.raises(ParseError, match="expected str"):
        parse(value)


@pytest.mark.parametrize(
    "text",
    [
        '"' + " " * 1_000_000 + 'x [link_id=1]"',
        '"' + "x " * 500_000 + '[link_id=1]"',
        '"' + "[link_id=1]" * 100_000 + 'x"',
        'Search("' + "\\\\" * 500_000 + '")',
        '"' + "link_" * 200_000 + '"',
    ],
    ids=["spaces", "words", "citations", "escapes", "near-citations"],
)
def test_megabyte_inputs_are_read_in_linear_time(text):
    """A pathological completion of ~1 MB is read in one pass (a quadratic scan would hang here)."""
    for parse in (parse_decision, lambda t: parse_summary(t, SHOWN), lambda t: parse_answer(t, SHOWN)):
        try:
            parse(text)
        except ParseError:
            pass
    strip_citations(text)


def test_space_like_set_is_complete():
    """escape() and the scanner agree on one set; nothing above U+3000 belongs in it."""
    beyond = [
        c
        for c in map(chr, range(0x3001, 0x110000))
        if (c.isspace() and c != " ") or unicodedata.category(c) == "Cc"
    ]
    assert beyond == []
    assert "\n" in SPACE_LIKE_CHARS and "\u2028" in SPACE_LIKE_CHARS and " " not in SPACE_LIKE_CHARS


# ---------------------------------------------------------------- strategies

ANY_CHAR = st.characters(codec=None, exclude_categories=())  # surrogates and unassigned included
TRICKY = st.sampled_from(
    list('"\\()[]=_ \n\r\t\x00\x85\u2028\u3000')
    + ["link_id", "[link_id=", "[link_id=1]", "[link_id=9]", '\\"', "Keep()", "None"]
)
ANY_TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=60),
    st.lists(st.one_of(TRICKY, st.text(max_size=4)), max_size=15).map("".join),
)


@st.composite
def huge(draw):
    """Long inputs (up to ~200k characters), bare or wrapped in a valid-looking frame."""
    piece = draw(st.one_of(TRICKY, st.text(ANY_CHAR, min_size=1, max_size=8)))
    body = piece * draw(st.integers(1_000, 25_000))
    frame = draw(
        st.sampled_from(
            [
                "{}",
                'Search("{}")',
                '"{}"',
                '"{} [link_id=1]"',
                'Revise("{}")',
                "Explanation: {}\nBest: 1\nRanking: 1 > 2",
            ]
        )
    )
    return frame.format(body)


TRICKY_CHAR = st.sampled_from(list('"\\()[]=_ \n\t\u2028'))


def plain_text(max_size: int = 24):
    """Free text as an author would write it: anything, once collapsed and defanged, non-blank."""
    return (
        st.text(ANY_CHAR | TRICKY_CHAR, min_size=1, max_size=max_size)
        .map(lambda s: defang(collapse(s)))
        .filter(bool)
    )


queries = plain_text(max_size=80).filter(lambda q: len(q) <= MAX_QUERY_CHARS)
ids = st.integers(0, 10**9 - 1)


@st.composite
def cited_text(draw, allowed_ids=ids, min_facts=1):
    """(text, citations): facts each followed by 1-2 citations; citations deduped in order."""
    facts = draw(
        st.lists(
            st.tuples(plain_text(), st.lists(allowed_ids, min_size=1, max_size=2)),
            min_size=min_facts,
            max_size=4,
        )
    )
    text = " ".join(f + "".join(f" [link_id={n}]" for n in ns) for f, ns in facts)
    cited: list[int] = []
    for _, ns in facts:
        for n in ns:
            if n not in cited:
                cited.append(n)
    return text, tuple(cited)


decisions = st.one_of(st.just(Terminate()), queries.map(Search))


@st.composite
def summaries(draw):
    if draw(st.booleans()):
        return Summary(None, ()), frozenset(draw(st.sets(ids, max_size=3)))
    text, cited = draw(cited_text())
    return Summary(text, cited), frozenset(cited) | draw(st.sets(ids, max_size=3))


@st.composite
def answers(draw):
    if draw(st.integers(0, 4)) == 0:  # no snippets shown: no citations at all
        return Answer(draw(plain_text()), ()), frozenset()
    text, cited = draw(cited_text())
    return Answer(text, cited), frozenset(cited) | draw(st.sets(ids, max_size=3))


@st.composite
def checks(draw):
    if draw(st.booleans()):
        return Keep(), frozenset(draw(st.sets(ids, max_size=3)))
    answer, valid = draw(answers())
    return Revise(answer), valid


@st.composite
def rankings(draw):
    k = draw(st.integers(1, 16))
    order = draw(st.permutations(range(k)))
    return draw(plain_text(max_size=80)), order[0], list(order), k


# ---------------------------------------------------------------- round trips (valid outputs)


@fast(1000)
@given(decisions)
def test_decision_round_trip(action):
    assert parse_decision(format_decision(action)) == action
    assert parse_decision(format_decision(action).strip() + "\n") == action


@fast(700)
@given(summaries())
def test_summary_round_trip(built):
    summary, shown = built
    assert parse_summary(format_summary(summary), shown) == summary


@fast(700)
@given(answers())
def test_answer_round_trip(built):
    answer, valid = built
    got = parse_answer(format_answer(answer), valid)
    assert got == answer
    assert got.plain == strip_citations(answer.text) and "[link_id=" not in got.plain


@fast(500)
@given(checks())
def test_check_round_trip(built):
    verdict, valid = built
    assert parse_check(format_check(verdict), valid) == verdict


@fast(500)
@given(rankings())
def test_ranking_round_trip(built):
    explanation, best, ranking, k = built
    assert parse_ranking(format_ranking(explanation, best, ranking), k) == (explanation, best, ranking)


@fast(300)
@given(st.text(ANY_CHAR, max_size=80))
def test_escape_round_trip_through_the_scanner(text):
    """Any text escaped into a literal reads back as itself, modulo whitespace collapsing."""
    q = collapse(text)
    if q and len(q) <= MAX_QUERY_CHARS:
        assert parse_decision('Search("' + escape(text) + '")') == Search(q)
    else:
        with pytest.raises(ParseError):
            parse_decision('Search("' + escape(text) + '")')


# ---------------------------------------------------------------- robustness (any input)


def check_decision(text: str) -> None:
    try:
        got = parse_decision(text)
    except ParseError as e:
        assert str(e).startswith("decision: ") and "\n" not in str(e)
        return
    if isinstance(got, Search):
        assert got.query.strip() and len(got.query) <= MAX_QUERY_CHARS
        assert not any(c in SPACE_LIKE_CHARS for c in got.query)
        assert parse_decision(format_decision(got)) == Search(collapse(got.query))
    else:
        assert got == Terminate()


def check_summary(text: str, shown: frozenset[int]) -> None:
    try:
        got = parse_summary(text, shown)
    except ParseError as e:
        assert str(e).startswith("summary: ") and "\n" not in str(e)
        return
    if got.text is not None:
        assert got.citations and set(got.citations) <= shown and strip_citations(got.text)
        assert parse_summary(format_summary(got), shown) == Summary(collapse(got.text), got.citations)


def check_answer(text: str, valid: frozenset[int]) -> None:
    try:
        got = parse_answer(text, valid)
    except ParseError as e:
        assert str(e).startswith("answer: ") and "\n" not in str(e)
        return
    assert set(got.citations) <= valid and bool(got.citations) == bool(valid) and got.plain
    assert parse_answer(format_answer(got), valid) == Answer(collapse(got.text), got.citations)


def check_check(text: str, valid: frozenset[int]) -> None:
    try:
        got = parse_check(text, valid)
    except ParseError as e:
        assert str(e).startswith("check: ") and "\n" not in str(e)
        return
    if isinstance(got, Revise):
        assert set(got.answer.citations) <= valid and got.answer.plain


def check_judgement(text: str) -> None:
    try:
        assert parse_judgement(text) in (True, False)
    except ParseError as e:
        assert "\n" not in str(e)


def check_ranking(text: str, k: int) -> None:
    try:
        explanation, best, ranking = parse_ranking(text, k)
    except ParseError as e:
        assert str(e).startswith("ranking: ") and "\n" not in str(e)
        return
    assert explanation and sorted(ranking) == list(range(k)) and ranking[0] == best


def check_all(text: str, valid: frozenset[int]) -> None:
    check_decision(text)
    check_summary(text, valid)
    check_answer(text, valid)
    check_check(text, valid)
    check_judgement(text)
    check_ranking(text, max(len(valid), 1))


@fast(2500)
@given(ANY_TEXT, st.frozensets(st.integers(0, 12), max_size=4))
def test_random_text_only_raises_parse_error(text, valid):
    check_all(text, valid)


@fast(150)
@given(huge(), st.frozensets(st.integers(0, 3), max_size=3))
def test_huge_inputs_only_raise_parse_error(text, valid):
    check_all(text, valid)


MUTATION = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(
        st.just("insert"), st.integers(0, 10**6), st.one_of(TRICKY, st.text(ANY_CHAR, min_size=1, max_size=2))
    ),
    st.tuples(st.just("delete"), st.integers(0, 10**6)),
    st.tuples(st.just("double"), st.integers(0, 10**6)),
    st.tuples(st.just("renumber"), st.integers(0, 12)),
)


def mutate(text: str, ops) -> str:
    for op, *args in ops:
        i = args[0] % (len(text) + 1) if op != "renumber" else 0
        if op == "truncate":
            text = text[:i]
        elif op == "insert":
            text = text[:i] + args[1] + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + 1 :]
        elif op == "double":
            text = text[:i] + text[i : i + 1] * 2 + text[i + 1 :]
        else:
            text = text.replace("[link_id=", f"[link_id={args[0]}", 1)
    return text


@st.composite
def valid_completions(draw):
    """(kind, completion, ids it may cite) for a valid completion of any step."""
    kind = draw(st.sampled_from(["decision", "summary", "answer", "check", "judgement", "ranking"]))
    if kind == "decision":
        return kind, format_decision(draw(decisions)), frozenset({1, 2, 3})
    if kind == "summary":
        summary, shown = draw(summaries())
        return kind, format_summary(summary), shown
    if kind == "answer":
        answer, valid = draw(answers())
        return kind, format_answer(answer), valid
    if kind == "check":
        verdict, valid = draw(checks())
        return kind, format_check(verdict), valid
    if kind == "judgement":
        return kind, " " + str(draw(st.booleans())), frozenset()
    explanation, best, ranking, k = draw(rankings())
    return kind, format_ranking(explanation, best, ranking), frozenset(range(k))


PARSE = {
    "decision": lambda t, v: parse_decision(t),
    "summary": parse_summary,
    "answer": parse_answer,
    "check": parse_check,
    "judgement": lambda t, v: parse_judgement(t),
    "ranking": lambda t, v: parse_ranking(t, len(v)),
}


@fast(3000)
@given(valid_completions(), st.lists(MUTATION, min_size=1, max_size=3))
def test_mutated_outputs_only_raise_parse_error(built, ops):
    _, text, valid = built
    check_all(mutate(text, ops), valid)


@fast(1000)
@given(valid_completions(), st.integers(1, 10**6))
def test_truncated_outputs_are_rejected(built, drop):
    """Cutting a valid completion short (as a token cap does) never leaves a valid one."""
    kind, text, valid = built
    body = text.strip()
    cut = body[: len(body) - 1 - drop % len(body)]
    PARSE[kind](text, valid)
    with pytest.raises(ParseError):
        PARSE[kind](cut, valid)
