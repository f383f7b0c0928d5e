"""``sstparse`` command line. Each command is a thin wrapper over a package function."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sstparse.config import ConfigError
from sstparse.data.shards import BadRecord


def _domains(names: tuple[str, ...], synthetic_only: bool = False):
    from sstparse.domains import load_domains

    domains = load_domains()
    if not names:
        return [d for d in domains.values() if d.is_synthetic or not synthetic_only]
    unknown = [n for n in names if n not in domains]
    if unknown:
        raise click.BadParameter(f"unknown domain(s) {unknown}; known: {sorted(domains)}", param_hint="--domain")
    return [domains[n] for n in names]


@click.group()
@click.version_option(package_name="sstparse")
def main():
    """Multi-domain human parsing with Scalable Semantic Transfer on Ray."""


@main.command()
@click.option("--out", required=True, help="Shard root: a local folder or s3://bucket/prefix.")
@click.option("--domain", "names", multiple=True, help="Synthetic domain(s) to generate (default: all syn_*).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--scale", default=1.0, show_default=True, type=float,
              help="Multiply every domain's default train/val image counts.")
@click.option("--workers", default=1, show_default=True, type=int, help="Rendering processes.")
@click.option("--preview", type=click.Path(dir_okay=False), help="Also write a preview grid PNG here.")
def synth(out, names, seed, scale, workers, preview):
    """Generate the synthetic multi-domain humans as shards."""
    from sstparse.data.generate import generate

    domains = _domains(names, synthetic_only=True)
    for m in generate(out, domains, seed=seed, scale=scale, workers=workers):
        counts = ", ".join(f"{k} {v['count']}" for k, v in m["splits"].items())
        click.echo(f"{m['domain']}: {counts}")
    if preview:
        _write_preview(out, domains, preview)


def _write_preview(root, domains, path):
    from sstparse.data.preview import preview_grid

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    preview_grid(root, domains).save(path)
    click.echo(f"preview: {path}")


@main.command()
@click.option("--dataset", required=True, help="Domain card name: lip, cihp, atr or pascal_person_part.")
@click.option("--src", required=True, type=click.Path(exists=True, file_okay=False), help="Raw dataset folder.")
@click.option("--out", required=True, help="Shard root: a local folder or s3://bucket/prefix.")
@click.option("--on-bad-record", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="Stop at the first bad record, or skip it and list it in the manifest.")
def convert(dataset, src, out, on_bad_record):
    """Convert a real dataset's raw layout into shards."""
    from sstparse.data.convert import convert as run

    m = run(dataset, src, out, on_bad_record=on_bad_record)
    counts = ", ".join(f"{k} {v['count']}" for k, v in m["splits"].items())
    click.echo(f"{m['domain']}: {counts}; skipped {len(m['skipped'])}")
    for s in m["skipped"]:
        click.echo(f"  skipped {s['source']}: {s['reason']}")


@main.command()
@click.argument("root")
def inspect(root):
    """Per-domain summary and class histograms of a shard root."""
    from sstparse.data.inspect import summarize

    click.echo(summarize(root))


@main.command()
@click.argument("root")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--domain", "names", multiple=True, help="Domains to show (default: all in ROOT).")
def preview(root, out, names):
    """Write a preview grid (images and coloured labels, one row per domain) of a shard root."""
    from sstparse.data.shards import list_domains

    _write_preview(root, _domains(names or tuple(list_domains(root))), out)


def run():
    """Entry point that turns expected user errors into one clear line instead of a traceback."""
    try:
        main(standalone_mode=False)
    except (ConfigError, BadRecord, FileNotFoundError, KeyError, ValueError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        sys.exit(1)


if __name__ == "__main__":
    run()
