"""Entry point: one ``vmcrypt`` command, one sub-command group per concern.

Every error vmcrypt raises on purpose becomes one line on stderr and an exit code from
:data:`vmcrypt.exceptions.EXIT_CODES`; a traceback is only ever shown for a bug, and
then with a request to report it.
"""

from __future__ import annotations

import sys

import typer

from vmcrypt import __version__
from vmcrypt.cli.disk import app as disk_app
from vmcrypt.cli.output import err
from vmcrypt.exceptions import VmcryptError, exit_code_for

app = typer.Typer(
    name="vmcrypt",
    help=(
        "Virtual machine encryption: KEKs from a key provider wrap the DEKs that encrypt "
        "each VM home and disk (XTS-AES-256, LUKS2 on-disk format)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(disk_app, name="disk")


@app.command()
def version() -> None:
    """Print the vmcrypt version."""
    print(__version__)


def main() -> None:
    """Run the CLI, turning deliberate errors into one clear line and an exit code."""
    try:
        # Standalone mode: usage errors print Typer's help hint and exit 2 by themselves.
        app()
    except VmcryptError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exit_code_for(exc))
    except OSError as exc:
        name = f" {exc.filename}" if exc.filename else ""
        err.print(f"[bold red]error:[/]{name}: {exc.strerror or exc}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
