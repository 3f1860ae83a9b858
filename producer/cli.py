"""The ``producer`` command: the group every command is added to (producer/commands), each
ending as producer/endings.py says; every mistake is one line, exit 1."""

from __future__ import annotations

from typing import Any

import click

from producer.commands import COMMANDS
from producer.endings import endings


class Main(click.Group):
    """Each command ends as producer/endings.py says: troubles as one line, exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        with endings():
            return super().invoke(ctx)


@click.group(cls=Main)
def main() -> None:
    """Tag images with Chinese labels: `producer tag ./images`, or enqueue for a fleet.

    Configuration comes from the environment: CELERY_BROKER_URL, DATABASE_URL, TAGGER_* and
    boto3's AWS_* settings. With none of them set, everything runs on this machine under
    TAGGER_HOME (a per-user data folder).
    """


for command in COMMANDS:
    main.add_command(command)
