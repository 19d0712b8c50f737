"""Logging tests in as a team: a real account in the current state folder's store, its token in
AIPLAT_TOKEN (or in a child process's environment). Nothing here bypasses verification: the CLI
and the access checks verify the token as they would a person's."""

from __future__ import annotations

import pytest

from aiplat.security.identity import TOKEN_ENV, TOKEN_FILE_ENV, ensure_local_accounts, normalize_team


def token_for(team: str, name: str | None = None) -> str:
    """A new account of `team` (`test-<team>` unless named) in the current store; its token."""
    team_n = normalize_team(team)
    assert team_n, team
    return ensure_local_accounts().add(name or f"test-{team_n.removeprefix('team:')}", team_n)


def act_as(monkeypatch: pytest.MonkeyPatch, team: str, name: str | None = None) -> str:
    """The CLI in this process acts as a new account of `team`; returns the token."""
    token = token_for(team, name)
    monkeypatch.setenv(TOKEN_ENV, token)
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    return token
