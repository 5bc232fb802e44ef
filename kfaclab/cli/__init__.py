"""`python -m kfaclab {train,bench,sweep,harvest,harvest-merge,results,nqm}`: the program and its errors.

Each family of commands keeps its parsers beside its bodies: `cli.train` (train, bench),
`cli.sweep` (sweep, harvest, harvest-merge), `cli.results` and `cli.nqm`; `cli.args` holds the
checked argument types they share. This module assembles them and turns errors into exit codes:
bad input is one line on stderr naming the problem and the fix, with exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kfaclab.cli import nqm, results, sweep, train
from kfaclab.cli.args import EXIT_INTERRUPTED, EXIT_USAGE, Parser
from kfaclab.errors import UsageError


def build_parser():
    # `kfaclab` (the console command of the installed package) and `python -m kfaclab` are one program.
    prog = "kfaclab" if Path(sys.argv[0]).name == "kfaclab" else "python -m kfaclab"
    parser = Parser(prog=prog, description="kfaclab: large-batch second-order optimization")
    sub = parser.add_subparsers(dest="command", parser_class=Parser, required=True)
    parser.commands = {}  # command name -> its body
    for family in (train, sweep, results, nqm):  # each adds its commands' parsers, returns their bodies
        parser.commands.update(family.add_parsers(sub))
    return parser


def main(argv=None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        return parser.commands[args.command](args)
    except UsageError as e:
        print(f"kfaclab: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`kfaclab results ... | head`): not an error of ours. Python would
        # still try to flush stdout at exit and print a second traceback; point it at devnull.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
