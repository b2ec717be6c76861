"""The ``dioscope`` command line: a click group; each subcommand imports its module lazily.

The CLI is harness: it drives the model and is never imported by it.
"""

from __future__ import annotations

import click

from dioscope import __version__

PROFILE_CHOICES = ("5.9", "5.9-pin", "6.18", "all")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dioscope")
def main() -> None:
    """dioscope: an executable model of the Linux Direct I/O page-pinning path."""


@main.command()
@click.option(
    "--profile",
    type=click.Choice(PROFILE_CHOICES),
    default="all",
    show_default=True,
    help="Kernel profile to run, or all of them side by side.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the run's RNG.")
@click.option(
    "--size",
    default="64M",
    show_default=True,
    metavar="SIZE",
    help="Size of the demo, with a K/M/G suffix (e.g. 64M, 1G).",
)
@click.pass_context
def demo(ctx: click.Context, profile: str, seed: int, size: str) -> None:
    """Run a Direct I/O workload and show pins and references, before and after the series."""
    from dioscope.demo import main as demo_main

    rc = demo_main(profile=profile, seed=seed, size=size)
    ctx.exit(int(rc or 0))
