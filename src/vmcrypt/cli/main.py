"""Entry point: one ``vmcrypt`` command, one sub-command group per concern.

Every error vmcrypt raises on purpose becomes one line on stderr and an exit code from
:data:`vmcrypt.exceptions.EXIT_CODES`; a traceback is only ever shown for a bug, and
then with a request to report it.
"""

from __future__ import annotations

import logging
import sys
import traceback

import typer
from rich.markup import escape

from vmcrypt import __version__
from vmcrypt.cli.control import app as control_app
from vmcrypt.cli.disk import app as disk_app
from vmcrypt.cli.events import events as events_command
from vmcrypt.cli.host import app as host_app
from vmcrypt.cli.inventory import (
    add_host_commands,
    cluster_app,
    datastore_app,
    token_app,
    user_app,
)
from vmcrypt.cli.kms import app as kms_app
from vmcrypt.cli.output import err
from vmcrypt.cli.pki import app as pki_app
from vmcrypt.cli.providers import kp_app, policy_app
from vmcrypt.cli.trust import app as trust_app
from vmcrypt.cli.up import up as up_command
from vmcrypt.cli.vm import vm_app
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
app.add_typer(control_app, name="control")
app.add_typer(disk_app, name="disk")
app.add_typer(host_app, name="host")
app.add_typer(kms_app, name="kms")
app.add_typer(pki_app, name="pki")
app.add_typer(trust_app, name="trust")
app.command("up")(up_command)
app.add_typer(cluster_app, name="cluster")
add_host_commands(host_app)
app.add_typer(datastore_app, name="datastore")
app.add_typer(kp_app, name="kp")
app.add_typer(policy_app, name="policy")
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")
app.add_typer(vm_app, name="vm")
app.command("events")(events_command)


@app.command()
def version() -> None:
    """Print the vmcrypt version."""
    print(__version__)


class _OncePerMessage(logging.Filter):
    """A command reads a header several times; say each warning once."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self._seen:
            return False
        self._seen.add(message)
        return True


def _warnings_to_stderr() -> None:
    """vmcrypt's log warnings (e.g. one bad header copy) as ``warning: …`` lines on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    handler.addFilter(_OncePerMessage())
    logger = logging.getLogger("vmcrypt")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)


def main() -> None:
    """Run the CLI, turning deliberate errors into one clear line and an exit code."""
    _warnings_to_stderr()
    try:
        # Standalone mode: usage errors print Typer's help hint and exit 2 by themselves.
        app(prog_name="vmcrypt")
    except VmcryptError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(exit_code_for(exc))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        err.print(f"[bold red]error:[/] {escape(f'{where}{exc.strerror or exc}')}",
                  highlight=False)
        sys.exit(1)
    except Exception:
        traceback.print_exc()
        err.print(
            "[bold red]error:[/] unexpected failure: this is a bug in vmcrypt; "
            "please report it with the traceback above",
            highlight=False,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
