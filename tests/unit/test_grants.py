"""grants.sql as the code runs it: psql's placeholders replaced the way `psql -v` would."""

from __future__ import annotations

import re

from statusek.adapters.postgres.grants import grants_sql, render


def test_every_placeholder_is_replaced() -> None:
    """No :"role", :'role', :"schema" or :"database" is left after rendering."""
    rendered = render("statusek_worker", "public", "statusek")
    assert re.search(r""":["'](role|schema|database)["']""", rendered) is None
    assert 'GRANT USAGE ON SCHEMA "public" TO "statusek_worker";' in rendered
    assert "set_config('statusek.grant_role', 'statusek_worker', false)" in rendered


def test_names_are_quoted_as_identifiers_and_literals() -> None:
    """Quotes inside a role name are doubled, so a name cannot end the identifier or the string."""
    rendered = render("""we"ird'role""", "public", "statusek")
    assert 'TO "we""ird\'role";' in rendered
    assert "set_config('statusek.grant_role', 'we\"ird''role', false)" in rendered


def test_events_are_select_and_insert_only() -> None:
    """The file takes UPDATE and DELETE on events back after granting them on every table."""
    text = grants_sql()
    assert text.index("ON ALL TABLES IN SCHEMA") < text.index(
        'REVOKE UPDATE, DELETE ON TABLE :"schema".events'
    )
