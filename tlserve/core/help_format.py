"""How every verb's --help reads: examples as written, and the default of every option that has one."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's examples as written; appends "(default: X)" to an option's help when X says
    something (not for flags, nor for options without a default)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        silent = action.default in (None, True, False, argparse.SUPPRESS) or not action.option_strings
        if silent or "%(default)" in text or "default" in text:  # the help already says what the default is
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"
