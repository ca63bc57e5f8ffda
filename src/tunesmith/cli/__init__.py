"""The `tunesmith` command: flags (cli.parser) -> one call of the Python API (cli.commands) -> printed
result and exit code."""

from __future__ import annotations

import sys

from rich.markup import escape

from tunesmith.cli.console import err
from tunesmith.cli.parser import build_parser
from tunesmith.core.errors import DataError, TunesmithError


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code: 0 done, 1 failed (the error printed), 2 bad usage, 130 interrupted."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv  # `train --nproc N` runs this command line again under torchrun
    if args.command is None:  # `tunesmith` or a group such as `tunesmith models` without its subcommand
        args.parser.print_help()
        return 2
    # Imported here, once, after parsing: the commands import the API and with it torch (seconds), which
    # `tunesmith --help` and a mistyped flag never need.
    from tunesmith.cli.commands import COMMANDS

    try:
        return COMMANDS[args.command](args)
    except DataError as problem:
        err.print(f"[red]error:[/] {escape(str(problem))}", highlight=False)
        return 1
    except TunesmithError as problem:
        err.print(f"error: {problem}", highlight=False, markup=False)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
