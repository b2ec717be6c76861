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
    help="Size of the data file the workload reads and writes (K/M/G suffix; >= 8M).",
)
@click.option("--ops", type=click.IntRange(1, 100000), default=300, show_default=True,
              help="Number of O_DIRECT operations per profile.")
@click.option("--device", type=click.Choice(("file", "mem")), default="file",
              show_default=True, help="A sparse host file (real O_DIRECT) or memory.")
@click.option("--gup", is_flag=True,
              help="Show the GUP demonstration instead (buffers pinned per profile).")
@click.pass_context
def demo(ctx: click.Context, profile: str, seed: int, size: str, ops: int, device: str,
         gup: bool) -> None:
    """Run a mixed O_DIRECT workload under each profile and compare pins, bios and bytes."""
    from dioscope.demo import main as demo_main

    rc = demo_main(profile=profile, seed=seed, size=size, ops=ops, device=device, gup=gup)
    ctx.exit(int(rc or 0))


_PATHS = click.argument(
    "paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=True)
)
_JSON = click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    metavar="FILE",
    help="Also write every result as JSON to FILE.",
)


@main.command()
@_PATHS
@click.option(
    "--profile",
    type=click.Choice(PROFILE_CHOICES),
    default="all",
    show_default=True,
    help="Kernel profile to run the scenarios under, or all of them.",
)
@_JSON
@click.pass_context
def run(ctx: click.Context, paths: tuple[str, ...], profile: str, json_path: str | None) -> None:
    """Run scenario files (or directories of them) in the model and check their expectations.

    One line per scenario (per profile with --profile all): ok, FAIL with the first mismatch
    as a sentence, or skip with the reason; then "N passed, N failed[, N skipped]". Exit
    status 1 when anything failed.
    """
    from dioscope.difftest.commands import run_command

    ctx.exit(run_command(paths, profile, json_path, echo=click.echo))


@main.command()
@_PATHS
@_JSON
@click.option(
    "--bios",
    is_flag=True,
    help="Also compare each step's bios (tracefs block:block_bio_queue on the host).",
)
@click.option(
    "--explain",
    is_flag=True,
    help="For a single scenario, print the model's view of each step next to the host's.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory on the filesystem under test (default $DIOSCOPE_HOST_DIR or /var/tmp).",
)
@click.pass_context
def diff(
    ctx: click.Context,
    paths: tuple[str, ...],
    json_path: str | None,
    bios: bool,
    explain: bool,
    workdir: str | None,
) -> None:
    """Run scenarios on the host kernel and in the model (profile 6.18, the host disk's
    queue limits), and report every difference as a sentence naming the step.

    The scenarios' expectations are checked against the host too. Everything is skipped,
    with the reason, when the host cannot answer (not Linux, not root, no stat_refresh).
    Exit status 1 when anything failed.
    """
    from dioscope.difftest.commands import diff_command

    try:
        rc = diff_command(
            paths, json_path, bios=bios, explain=explain, workdir=workdir, echo=click.echo
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    ctx.exit(rc)
