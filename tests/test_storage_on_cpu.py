"""The run-storage check's reading side: what a node reports for the token it is shown (``rest.cluster``)."""

from __future__ import annotations

from rest.cluster import token_problem


def test_a_node_reports_a_missing_or_foreign_token_and_accepts_its_own(tmp_path):
    token = tmp_path / ".storage-check-abc"
    assert token_problem(token, "abc").startswith("cannot read it: No such file")
    token.write_text("xyz")
    assert token_problem(token, "abc") == "it holds another run's token"
    token.write_text("abc")
    assert token_problem(token, "abc") is None
