"""``sstparse`` command line. Each command is a thin wrapper over a package function.

Commands import their package module when they run, not here: ``sstparse --help`` and a quick ``inspect`` should
not pay for importing torch, Ray and MLflow (seconds each).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from sstparse.config import ConfigError, TrackingConfig
from sstparse.data.shards import SPLITS, BadRecord, StorageError


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
    try:
        manifests = generate(out, domains, seed=seed, scale=scale, workers=workers)
    except StorageError as err:
        raise click.ClickException(str(err)) from None
    for m in manifests:
        counts = ", ".join(f"{k} {m['splits'][k]['count']}" for k in SPLITS if k in m["splits"])
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
    counts = ", ".join(f"{k} {m['splits'][k]['count']}" for k in SPLITS if k in m["splits"])
    click.echo(f"{m['domain']}: {counts}; skipped {len(m['skipped'])}")
    for s in m["skipped"]:
        click.echo(f"  skipped {s['source']}: {s['reason']}")


@main.command()
@click.argument("root")
@click.option("--verify", is_flag=True, help="Also re-hash every part against its manifest's sha256 (reads all the "
                                             "bytes; training checks each part as it reads it anyway).")
def inspect(root, verify):
    """Per-domain summary and class histograms of a shard root."""
    from sstparse.data.inspect import summarize
    from sstparse.data.shards import list_domains, verify as verify_domain

    click.echo(summarize(root))
    if verify:
        problems = [p for d in list_domains(root) for p in verify_domain(root, d)]
        for p in problems:
            click.echo(p, err=True)
        if problems:
            raise click.ClickException(f"{len(problems)} shard part(s) do not match their manifest under {root}")
        click.echo(f"verified: every part under {root} matches its manifest's sha256")


@main.command()
@click.argument("root")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--domain", "names", multiple=True, help="Domains to show (default: all in ROOT).")
def preview(root, out, names):
    """Write a preview grid (images and coloured labels, one row per domain) of a shard root."""
    from sstparse.data.shards import list_domains

    _write_preview(root, _domains(names or tuple(list_domains(root))), out)


_TRACKING_URI_HELP = ("Tracking/registry store for models:/ and runs:/ URIs (default: $MLFLOW_TRACKING_URI, else "
                      "sqlite:///mlruns.db).")
_VERBOSE_HELP = ("Ray's own lines in the console too (each rank's reports, Ray Data's plans and progress bars); the "
                 "default console is one line per epoch, the rest stays in the log files named at the start.")


@main.command()
@click.option("--model", "model_uri", required=True,
              help="MLflow model URI: models:/sst-universal@champion, models:/name/3, runs:/<id>/model, a folder.")
@click.option("--domain", default=None, help="Which head (label set) to predict; required if the model has several.")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", required=True, help="Output folder or s3:// prefix.")
@click.option("--flip-tta", is_flag=True, help="Average with the mirrored image (left/right classes swapped).")
@click.option("--keep-going", is_flag=True,
              help="Skip undecodable images, list them at the end and exit 0 (default: stop at the first one; "
                   "--ray always skips and lists them in <out>/skipped.csv).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--tracking-uri", default=None, help=_TRACKING_URI_HELP)
@click.option("--ray", "on_ray", is_flag=True,
              help="Run on Ray Data (the cluster of `ray job submit` or `ray start`, else a local instance): an "
                   "actor pool, resumable, bad images skipped and listed.")
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(min=1),
              help="--ray: actors in the pool; each loads the model once.")
@click.option("--num-gpus-per-actor", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="--ray: GPUs per actor (1 for one GPU each; a fraction packs several actors on one GPU).")
@click.option("--num-cpus-per-actor", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="--ray: CPUs per actor (decoding and encoding run in the actor's threads).")
@click.option("--overwrite", is_flag=True,
              help="--ray: redo images whose outputs exist (default: keep them, so a re-run resumes).")
def predict(model_uri, domain, inputs, out, flip_tta, keep_going, batch_size, tracking_uri, on_ray, concurrency,
            num_gpus_per_actor, num_cpus_per_actor, overwrite):
    """Parse INPUTS (image files, folders, s3:// prefixes); write <name>.png (class indices), <name>_color.png and
    <name>_overlay.jpg under --out."""
    if on_ray:
        return _predict_on_ray(model_uri, domain, inputs, out, flip_tta, batch_size, tracking_uri, concurrency,
                               num_gpus_per_actor, num_cpus_per_actor, overwrite)
    from sstparse.predict import predict as run_predict

    try:
        result = run_predict(model_uri, inputs, out, domain=domain, flip_tta=flip_tta, keep_going=keep_going,
                             batch_size=batch_size, tracking_uri=tracking_uri)
    except (BadRecord, FileNotFoundError, StorageError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"wrote {len(result.written)} image(s) to {out}")
    if result.skipped:
        click.echo(f"skipped {len(result.skipped)} image(s):")
        for source, reason in result.skipped:
            click.echo(f"  {source}: {reason}")


def _predict_on_ray(model_uri, domain, inputs, out, flip_tta, batch_size, tracking_uri, concurrency,
                    num_gpus_per_actor, num_cpus_per_actor, overwrite):
    from sstparse.batch_predict import predict_ray

    try:
        result = predict_ray(model_uri, inputs, out, domain=domain, flip_tta=flip_tta, batch_size=batch_size,
                             concurrency=concurrency, num_gpus_per_actor=num_gpus_per_actor,
                             num_cpus_per_actor=num_cpus_per_actor, overwrite=overwrite, tracking_uri=tracking_uri)
    except (FileNotFoundError, StorageError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(result.summary())


@main.command()
@click.option("--model", "source", required=True,
              help="A Ray Train checkpoint folder (meta.json + state.pt) or an MLflow model URI of the pyfunc.")
@click.option("--format", "fmt", type=click.Choice(["torchscript", "onnx"]), required=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="File to write; <out>.json is the head layout sidecar.")
@click.option("--heads", multiple=True, help="Keep only these heads (repeatable; default: all).")
@click.option("--tracking-uri", default=None, help=_TRACKING_URI_HELP)
def export(source, fmt, out, heads, tracking_uri):
    """Export the inference network (no SST module) with dynamic batch and size, checked against PyTorch."""
    from sstparse.export import ExportError, export as run_export, sidecar_path

    try:
        sidecar = run_export(source, fmt, out, heads=heads or None, tracking_uri=tracking_uri)
    except (ExportError, FileNotFoundError, KeyError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"wrote {out} ({fmt}, heads {list(sidecar['heads'])}, {sidecar['parameters']:,} parameters) and "
               f"{sidecar_path(out)}")
    for r in sidecar["parity"]:
        click.echo(f"  parity at {r['shape']}: max |logit diff| {r['max_abs_diff']:.2e}, argmax agreement "
                   f"{r['argmax_agreement']:.4%}")



@main.command()
@click.option("--config", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Job YAML (jobs/configs/universal.yaml, dedicated.yaml, single.yaml, ...).")
@click.option("--smoke-test", is_flag=True, help="One tiny epoch on one worker; registers as <name>-smoke.")
@click.option("--out", default=None, help="Folder for the pictures (default: a temp folder; they go to MLflow too).")
@click.option("--verbose", is_flag=True, help=_VERBOSE_HELP)
@click.argument("overrides", nargs=-1)
def train(config, smoke_test, out, verbose, overrides):
    """Train an SST parser on Ray: the job YAML plus key=value OVERRIDES (e.g. train.epochs=3). On a local Ray
    instance, or on the cluster when run under `ray job submit` (the same as jobs/train.py)."""
    from sstparse.train.job import run as run_job

    run_job(config, list(overrides), smoke_test, out, verbose)


@main.command()
@click.option("--config", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Sweep YAML (jobs/configs/sweep.yaml, sweep_dedicated.yaml).")
@click.option("--smoke-test", is_flag=True, help="Two tiny one-epoch trials.")
@click.option("--out", default=None, help="Folder for the sweep's table and plots (default: a temp folder).")
@click.option("--verbose", is_flag=True, help=_VERBOSE_HELP)
@click.argument("overrides", nargs=-1)
def tune(config, smoke_test, out, verbose, overrides):
    """Sweep a job with Ray Tune (Optuna + ASHA), or resume the sweep of the same name: OVERRIDES are the sweep's
    key=value settings, job.<key>=value for the job's (the same as jobs/tune.py)."""
    from sstparse.tune.job import run as run_sweep

    run_sweep(config, list(overrides), smoke_test, out, verbose)


@main.command()
@click.option("--model", "name", required=True, help="Registered model name, e.g. sst-universal.")
@click.option("--data", "data_root", default="data/synth", show_default=True,
              help="Shard root holding the validation split of every head (local or s3://).")
@click.option("--margin", default=0.0, show_default=True, type=float,
              help="mIoU (0-1) by which the challenger's mean must beat the champion's.")
@click.option("--min-score", default=None, type=click.FloatRange(0, 1),
              help="mIoU (0-1) the challenger's mean must reach as well (with no champion and no other version of "
                   "its layout, the only bar).")
@click.option("--flip-tta", is_flag=True, help="Score both with flip TTA.")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Validation images per domain (default: all).")
@click.option("--tracking-uri", default=None, help=_TRACKING_URI_HELP)
def promote(name, data_root, margin, min_score, flip_tta, limit, tracking_uri):
    """Move the `champion` alias to `challenger` if it scores better on the validation shards than the champion
    (with no champion: than the best registered version of its layout). An MLflow run records the comparison, and
    the challenger's version gets the decision and both scores as tags."""
    from sstparse.promote import promote as run_promote

    cfg = TrackingConfig(tracking_uri=tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                         or TrackingConfig().tracking_uri)
    try:
        result = run_promote(cfg, name, data_root, margin=margin, flip_tta=flip_tta, limit=limit,
                             min_score=min_score)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(result.summary())
    if result.run_id:
        click.echo(f"comparison recorded as MLflow run {result.run_id}")

def run():
    """Entry point that turns expected user errors into one clear line instead of a traceback."""
    try:
        main(standalone_mode=False)
    except (ConfigError, BadRecord, FileNotFoundError, KeyError, StorageError, ValueError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        sys.exit(1)


if __name__ == "__main__":
    run()
