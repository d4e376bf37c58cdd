"""The command line as a run records and prints it: the Hub token never appears in it."""

from __future__ import annotations

_TOKEN_FLAGS = ("--hub-token", "--hub_token")


def redact_argv(argv: list[str]) -> list[str]:
    """`argv` with the value of `--hub-token` replaced, so a saved or printed command never holds the token."""
    redacted: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            redacted.append("<HUB_TOKEN>")
            hide_next = False
        elif arg in _TOKEN_FLAGS:
            redacted.append(arg)
            hide_next = True
        elif arg.startswith(tuple(f"{flag}=" for flag in _TOKEN_FLAGS)):
            redacted.append(arg.split("=", 1)[0] + "=<HUB_TOKEN>")
        else:
            redacted.append(arg)
    return redacted
