from __future__ import annotations

import textwrap

import pytest

from appspec import AppSpec, AppSpecInvalidError, Finding, parse_appspec

HEADER = "version: 0.0\nos: linux\n"


def spec_of(body: str, *, header: str = HEADER) -> AppSpec:
    return parse_appspec(header + textwrap.dedent(body))


def errors_of(body: str, *, header: str = HEADER) -> list[Finding]:
    with pytest.raises(AppSpecInvalidError) as info:
        parse_appspec(header + textwrap.dedent(body), file="appspec.yml")
    return list(info.value.errors)


def codes(findings: list[Finding]) -> list[str]:
    return [f.code for f in findings]
