"""`sstparse inspect`: what a shard root holds, read from the manifests only (no part is opened, so it is fast and
works the same on an s3 root)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from sstparse.data.shards import list_domains, read_manifest


def _table(headers: list[str], rows: list[list[Any]], text_columns: int) -> str:
    """Plain fixed-width table: the first ``text_columns`` left-aligned, the (numeric) rest right-aligned."""
    cells = [headers] + [[f"{v:,}" if isinstance(v, int) else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(v.ljust(w) if i < text_columns else v.rjust(w)
                         for i, (v, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def _split_rows(name: str, manifest: dict[str, Any]) -> list[list[Any]]:
    splits, skipped = manifest["splits"], manifest.get("skipped", [])
    rows = [[name, split, s["count"], len(s["parts"]), sum(r.get("split") == split for r in skipped)]
            for split, s in sorted(splits.items())]
    # Skipped records that name no split (older or other producers) still count in the total.
    rows.append([name, "total", sum(s["count"] for s in splits.values()),
                 sum(len(s["parts"]) for s in splits.values()), len(skipped)])
    return rows


def _histogram_rows(manifest: dict[str, Any]) -> list[list[Any]]:
    pixels = [sum(col) for col in zip(*(s["class_pixels"] for s in manifest["splits"].values()))]
    pixels = pixels or [0] * len(manifest["classes"])
    total = sum(pixels)
    return [[name, n, f"{100 * n / total:.2f}" if total else "-"] for name, n in zip(manifest["classes"], pixels)]


def summarize(root: str, storage_options: dict | None = None,
              domains: Iterable[str] | Mapping[str, Any] | None = None) -> str:
    """Per-domain split table (domain, split, images, parts, skipped) and one class pixel histogram per domain.

    ``domains``: names to report (a list must name domains that exist under ``root``), or a mapping such as
    :func:`~sstparse.domains.load_domains` returns (reports the domains it shares with ``root``); default: all
    domains under ``root`` that have a manifest.
    """
    present = list_domains(root, storage_options)
    if domains is None:
        names = present
    elif isinstance(domains, Mapping):
        names = [n for n in present if n in domains]
    else:
        names = sorted(domains)  # read_manifest below names any that is missing
    if not names:
        return f"{root}: no shards (no <domain>/manifest.json)"
    manifests = {n: read_manifest(root, n, storage_options) for n in names}
    rows = [row for n, m in manifests.items() for row in _split_rows(n, m)]
    blocks = [f"shards under {root}\n" + _table(["domain", "split", "images", "parts", "skipped"], rows, 2)]
    for n, m in manifests.items():
        blocks.append(f"{n}: class pixels\n" + _table(["class", "pixels", "percent"], _histogram_rows(m), 1))
    return "\n\n".join(blocks)
