"""`aiplat`: the platform's terminal interface. Each command group lives in aiplat/commands/."""

from __future__ import annotations

import importlib
import sys

import click

# Command groups are imported lazily so that `aiplat stack status` does not pay for torch,
# presidio or feast imports it never uses.
COMMAND_MODULES: dict[str, str] = {
    "stack": "aiplat.commands.stack",
    "ingest": "aiplat.commands.ingest",
    "demo-data": "aiplat.commands.demo_data",
    "materialize": "aiplat.commands.materialize",
    "pii": "aiplat.commands.pii",
    "models": "aiplat.commands.models",
    "index": "aiplat.commands.index",
    "features": "aiplat.commands.features",
    "endpoints": "aiplat.commands.endpoints",
    "adapters": "aiplat.commands.endpoints",  # the name these commands had before every endpoint was an adapter
    "chat": "aiplat.commands.chat",
    "gateway": "aiplat.commands.gateway",
    "promote": "aiplat.commands.promote",
    "rollback": "aiplat.commands.rollback",
    "cost": "aiplat.commands.cost",
    "audit": "aiplat.commands.audit",
    "accounts": "aiplat.commands.accounts",
    "pipeline": "aiplat.commands.pipeline",
    "k8s": "aiplat.commands.k8s",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = COMMAND_MODULES.get(cmd_name)
        if module_name is None:
            return None
        return importlib.import_module(module_name).cli


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ai-platform")
def cli() -> None:
    """ai-platform: operate the AI lifecycle from a terminal."""


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
