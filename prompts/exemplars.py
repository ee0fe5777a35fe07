"""Few-shot exemplars as data: one small invented world, seen at every step.

Six made-up questions (a novel's publisher, a bridge's architect, two institutions'
ages, an opera's composer, a town's lighthouse, a cup winner's coach) are followed
through decision, summarize, answer and both self-checks, so the exemplars of one step
agree with those of the others. Link ids are global within each episode (first search
1-3, second 4-6, third 7-9). Outputs are written in the completion grammar (without
the leading space); a test parses every one of them against the ids shown.
Counts follow the paper: decision 9, summarize 6, answer 5, relevance 6, grounding 5;
and 5 for the Check_Answer judge.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.search import Snippet
from prompts.code import Note


@dataclass(frozen=True)
class DecisionExample:
    question: str
    notes: tuple[Note, ...]
    remaining: int
    output: str


@dataclass(frozen=True)
class SummarizeExample:
    question: str
    query: str
    snippets: tuple[Snippet, ...]
    output: str


@dataclass(frozen=True)
class AnswerExample:
    question: str
    notes: tuple[Note, ...]
    output: str


@dataclass(frozen=True)
class RelevanceExample:
    question: str
    answer: str
    shown: tuple[int, ...]
    """Link ids shown earlier in that episode (what a revision may cite)."""
    output: str


@dataclass(frozen=True)
class GroundingExample:
    question: str
    notes: tuple[Note, ...]
    answer: str
    output: str


@dataclass(frozen=True)
class JudgeExample:
    question: str
    answer: str
    reference: str
    correct: bool


Q_NOVEL = "Who founded the publishing house that first printed the novel The Salt Orchard?"
Q_BRIDGE = "In which country was the architect of the Kessler Bridge born?"
Q_OLDER = "Which is older, the Corvan Observatory or the Halden Museum of Art?"
Q_OPERA = "What instrument did the composer of the opera Night Ferry play?"
Q_LIGHT = "How many years after Port Ellery was founded did its first lighthouse open?"
Q_CUP = "Who coached the team that won the 1994 Marlow Cup?"

N_NOVEL_1 = Note(
    "The Salt Orchard novel publisher",
    "The Salt Orchard was first printed in 1931 by Marrow & Finch [link_id=2].",
)
N_NOVEL_2 = Note(
    "Marrow & Finch founder", "Marrow & Finch was founded in London in 1904 by Ada Marrow [link_id=4]."
)
N_BRIDGE_1 = Note(
    "Kessler Bridge architect",
    "The Kessler Bridge was designed by the architect Oskar Lindqvist [link_id=1].",
)
N_BRIDGE_2 = Note("Oskar Lindqvist birthplace", None)
N_BRIDGE_3 = Note(
    "Oskar Lindqvist architect early life",
    "Oskar Lindqvist was born in Bergen, Norway, in 1862 [link_id=8]. He studied in Dresden [link_id=8].",
)
N_OLDER_1 = Note("Corvan Observatory opened", "The Corvan Observatory opened in 1877 [link_id=1].")
N_OLDER_2 = Note("Halden Museum of Art founded", "The Halden Museum of Art was founded in 1902 [link_id=5].")
N_OPERA_1 = Note(
    "Night Ferry opera composer",
    "Night Ferry is an opera by Teodora Vance [link_id=1]. It premiered in Vienna in 1958 [link_id=3].",
)
N_OPERA_2 = Note(
    "Teodora Vance instrument",
    "Teodora Vance was a concert cellist before she turned to composing [link_id=6].",
)
N_LIGHT_1 = Note("Port Ellery founded", "Port Ellery was founded in 1789 by fishing families [link_id=2].")
N_LIGHT_2 = Note(
    "Port Ellery first lighthouse", "The first Port Ellery lighthouse was lit in 1821 [link_id=5]."
)
N_CUP_1 = Note("1994 Marlow Cup winner", "The 1994 Marlow Cup was won by the Dunmore Rovers [link_id=2].")

DECISION: tuple[DecisionExample, ...] = (
    DecisionExample(Q_NOVEL, (), 10, 'Search("The Salt Orchard novel publisher")'),
    DecisionExample(Q_NOVEL, (N_NOVEL_1,), 9, 'Search("Marrow & Finch founder")'),
    DecisionExample(Q_NOVEL, (N_NOVEL_1, N_NOVEL_2), 8, "Terminate()"),
    DecisionExample(Q_BRIDGE, (N_BRIDGE_1,), 9, 'Search("Oskar Lindqvist birthplace")'),
    DecisionExample(Q_BRIDGE, (N_BRIDGE_1, N_BRIDGE_2), 8, 'Search("Oskar Lindqvist architect early life")'),
    DecisionExample(Q_OLDER, (), 10, 'Search("Corvan Observatory opened")'),
    DecisionExample(Q_OLDER, (N_OLDER_1, N_OLDER_2), 8, "Terminate()"),
    DecisionExample(Q_LIGHT, (N_LIGHT_1,), 9, 'Search("Port Ellery first lighthouse")'),
    DecisionExample(Q_CUP, (N_CUP_1,), 0, "Terminate()"),
)


def _snips(first: int, *pairs: tuple[str, str]) -> tuple[Snippet, ...]:
    return tuple(Snippet(first + i, f"ex-{first + i}", title, text) for i, (title, text) in enumerate(pairs))


SUMMARIZE: tuple[SummarizeExample, ...] = (
    SummarizeExample(
        Q_NOVEL,
        "The Salt Orchard novel publisher",
        _snips(
            1,
            ("Salt (disambiguation)", "Salt is a mineral composed mainly of sodium chloride."),
            (
                "The Salt Orchard",
                "The Salt Orchard is a 1931 novel by Ruth Calloway, first printed by Marrow & Finch.",
            ),
            ("Ruth Calloway", "Ruth Calloway (1899-1970) was a novelist known for rural family sagas."),
        ),
        '"The Salt Orchard was first printed in 1931 by Marrow & Finch [link_id=2]."',
    ),
    SummarizeExample(
        Q_NOVEL,
        "Marrow & Finch founder",
        _snips(
            4,
            ("Marrow & Finch", "Marrow & Finch is a London publishing house founded in 1904 by Ada Marrow."),
            ("Finch (bird)", "Finches are small seed-eating passerine birds."),
            ("Ada Marrow", "Ada Marrow was an English publisher and suffragist."),
        ),
        '"Marrow & Finch was founded in London in 1904 by Ada Marrow [link_id=4]. Ada Marrow was an English publisher [link_id=6]."',
    ),
    SummarizeExample(
        Q_BRIDGE,
        "Oskar Lindqvist birthplace",
        _snips(
            4,
            (
                "Oskar Lindqvist (footballer)",
                "Oskar Lindqvist is a Swedish footballer born in Malmo in 1991.",
            ),
            ("Lindqvist", "Lindqvist is a Swedish surname."),
            ("Birthplace", "A birthplace is the place where a person was born."),
        ),
        "None",
    ),
    SummarizeExample(
        Q_OLDER,
        "Corvan Observatory opened",
        _snips(
            1,
            (
                "Corvan Observatory",
                "The Corvan Observatory is an astronomical observatory that opened in 1877.",
            ),
            ("Corvan", "Corvan is a market town on the river Leys."),
            ("Observatory", "An observatory is a place used for observing celestial events."),
        ),
        '"The Corvan Observatory opened in 1877 [link_id=1]."',
    ),
    SummarizeExample(
        Q_OPERA,
        "Night Ferry opera composer",
        _snips(
            1,
            ("Night Ferry (opera)", "Night Ferry is an opera in three acts by Teodora Vance."),
            ("Night Ferry (film)", "Night Ferry is a 2004 thriller film set in Dover."),
            ("Vienna State Opera", "In 1958 the Vienna State Opera gave the premiere of Night Ferry."),
        ),
        '"Night Ferry is an opera by Teodora Vance [link_id=1]. It premiered in Vienna in 1958 [link_id=3]."',
    ),
    SummarizeExample(
        Q_LIGHT,
        "Port Ellery first lighthouse",
        _snips(
            4,
            ("Port Ellery", "Port Ellery is a harbour town with a population of 12,000."),
            (
                "Port Ellery Light",
                "The first Port Ellery lighthouse was lit in 1821; the present tower dates from 1903.",
            ),
            ("Lighthouse", "A lighthouse is a tower that emits light to guide ships."),
        ),
        '"The first Port Ellery lighthouse was lit in 1821 [link_id=5]."',
    ),
)

ANSWER: tuple[AnswerExample, ...] = (
    AnswerExample(Q_NOVEL, (N_NOVEL_1, N_NOVEL_2), '"Ada Marrow [link_id=4]"'),
    AnswerExample(Q_BRIDGE, (N_BRIDGE_1, N_BRIDGE_2, N_BRIDGE_3), '"Norway [link_id=1] [link_id=8]"'),
    AnswerExample(Q_OLDER, (N_OLDER_1, N_OLDER_2), '"The Corvan Observatory [link_id=1] [link_id=5]"'),
    AnswerExample(Q_OPERA, (N_OPERA_1, N_OPERA_2), '"The cello [link_id=6]"'),
    AnswerExample(Q_LIGHT, (N_LIGHT_1, N_LIGHT_2), '"32 years [link_id=2] [link_id=5]"'),
)

RELEVANCE: tuple[RelevanceExample, ...] = (
    RelevanceExample(Q_NOVEL, "Ada Marrow [link_id=4]", (1, 2, 3, 4, 5, 6), "Keep()"),
    RelevanceExample(
        Q_BRIDGE, "Bergen, Norway [link_id=8]", tuple(range(1, 10)), 'Revise("Norway [link_id=8]")'
    ),
    RelevanceExample(
        Q_OLDER,
        "The Corvan Observatory opened in 1877 and the Halden Museum of Art in 1902 [link_id=1] [link_id=5]",
        (1, 2, 3, 4, 5, 6),
        'Revise("The Corvan Observatory [link_id=1] [link_id=5]")',
    ),
    RelevanceExample(Q_OPERA, "The cello [link_id=6]", (1, 2, 3, 4, 5, 6), "Keep()"),
    RelevanceExample(
        Q_LIGHT,
        "Port Ellery was founded in 1789 and its lighthouse was lit in 1821 [link_id=2] [link_id=5]",
        (1, 2, 3, 4, 5, 6),
        'Revise("32 years [link_id=2] [link_id=5]")',
    ),
    RelevanceExample(
        Q_CUP,
        "The Dunmore Rovers, coached by Glen Harcourt [link_id=2] [link_id=5]",
        (1, 2, 3, 4, 5, 6),
        'Revise("Glen Harcourt [link_id=5]")',
    ),
)

GROUNDING: tuple[GroundingExample, ...] = (
    GroundingExample(Q_NOVEL, (N_NOVEL_1, N_NOVEL_2), "Ada Marrow [link_id=4]", "Keep()"),
    GroundingExample(
        Q_BRIDGE, (N_BRIDGE_1, N_BRIDGE_2, N_BRIDGE_3), "Sweden [link_id=1]", 'Revise("Norway [link_id=8]")'
    ),
    GroundingExample(
        Q_OLDER,
        (N_OLDER_1, N_OLDER_2),
        "The Halden Museum of Art [link_id=5]",
        'Revise("The Corvan Observatory [link_id=1] [link_id=5]")',
    ),
    GroundingExample(Q_OPERA, (N_OPERA_1, N_OPERA_2), "The cello [link_id=6]", "Keep()"),
    GroundingExample(
        Q_LIGHT,
        (N_LIGHT_1, N_LIGHT_2),
        "34 years [link_id=2] [link_id=5]",
        'Revise("32 years [link_id=2] [link_id=5]")',
    ),
)

CHECK_ANSWER: tuple[JudgeExample, ...] = (
    JudgeExample("Who founded Marrow & Finch?", "It was founded by Ada Marrow in 1904.", "Ada Marrow", True),
    JudgeExample("In which country was the architect Oskar Lindqvist born?", "Sweden", "Norway", False),
    JudgeExample(
        "Which is older, the Corvan Observatory or the Halden Museum of Art?",
        "the observatory at Corvan",
        "Corvan Observatory",
        True,
    ),
    JudgeExample(
        "Who were the two founders of the Kessler Trust?", "Maria Kessler", "Maria and Paul Kessler", False
    ),
    JudgeExample("When was the first Port Ellery lighthouse lit?", "In the spring of 1821", "1821", True),
)
