"""``lorakit data get``: thin; :func:`lorakit.data.get.get_dataset` does the work."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["get_command"]


@click.command("get")
@click.argument("name", required=False, metavar="NAME")
@click.option(
    "--to",
    "to",
    type=click.Path(file_okay=False, path_type=Path),
    help="Parent folder: the files go to TO/NAME/ (default: LORAKIT_DATA_HOME, else "
    "~/.cache/lorakit/data, where `--bench NAME` without a path looks).",
)
@click.option(
    "--mirror",
    metavar="URL_OR_DIR",
    help="Download MIRROR/NAME/FILE instead of each upstream URL (default: "
    "LORAKIT_DATA_MIRROR); checksums are checked all the same.",
)
@click.option("--force", is_flag=True, help="Download again over a complete earlier download.")
@click.option(
    "--list", "as_list", is_flag=True, help="List the datasets, their sources and licences."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def get_command(
    name: str | None, to: Path | None, mirror: str | None, force: bool, as_list: bool, as_json: bool
) -> None:
    """Download public dataset NAME (medquad, pubmedqa, medqa, medmcqa, mmlu) at its pinned
    revision, verify its checksums and print its licence."""
    from lorakit.data.get import DATASETS, data_home, describe, get_dataset
    from lorakit.errors import ConfigError

    if as_list or name is None:
        if name is None and not as_list:
            raise ConfigError(
                "name a dataset",
                field="NAME",
                hint=f"one of {', '.join(DATASETS)}; --list says more",
            )
        listing = describe()
        if as_json:
            click.echo(json.dumps(listing, indent=2))
            return
        for item in listing:
            click.echo(f"{item['name']:<9} {item['title']}")
            click.echo(f"{'':<9} {item['upstream']} @ {item['revision'] or 'no revision'}")
            click.echo(f"{'':<9} licence {item['licence']}; checksums {item['checksums']}")
        return
    result = get_dataset(name, to, mirror=mirror, force=force)
    if as_json:
        click.echo(json.dumps({**result.to_dict(), "already": result.already}, indent=2))
        return
    m = result.manifest
    state = "already here" if result.already else "fetched"
    click.echo(f"{m.name}: {state} in {result.folder}")
    click.echo(f"  from {m.upstream} @ {m.revision or 'no revision (unpinned)'}")
    for f in result.files:
        if f.kind == "derived":
            check = "derived here"
        elif f.verified:
            check = "verified"
        else:
            check = "UNVERIFIED (no pinned checksum; recorded)"
        what = "(tree digest of the unpacked files)" if f.kind == "tree" else f.path
        click.echo(f"  {what:<32} sha256 {f.sha256}  {check}")
    click.echo(f"  licence: {m.licence} ({m.licence_url})")
    if m.note:
        click.echo(f"  note: {m.note}")
    click.echo(f"  train on it: --set data.source={result.source_uri()}")
    for bench, path in result.bench_paths().items():
        click.echo(f"  benchmark: --bench {bench}:{path}")
    if result.bench_paths() and to is not None and to.resolve() != data_home().resolve():
        click.echo(
            f"  (--bench {next(iter(m.bench))} alone looks in LORAKIT_DATA_HOME; set it to {to})"
        )
