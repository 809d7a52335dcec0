"""``falco bank build``, ``import-falco`` and ``info``: the fake bank FALCO pairs real faces with.

:mod:`falco.cli.root` adds :data:`bank_app` with ``app.add_typer(bank_app, name="bank")``.
Errors raised on purpose (``FalcoError``) reach ``falco.cli.main``, which prints one line and
exits 2. ``info`` exits 1 on an unfinished bank.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from falco.cli.options import APP_SETTINGS, Command, device_option, models_option

bank_app = typer.Typer(
    name="bank",
    help="Build and inspect fake banks (generated faces + features + FAISS index) for pairing.",
    **APP_SETTINGS,
)


@bank_app.command("build", cls=Command)
def build_command(
    out: Path = typer.Option(..., "--out", help="Bank directory (resumable: re-run to finish an interrupted build)."),
    num: int = typer.Option(..., "--num", min=1, help="Number of fakes (paper: 60000)."),
    truncation: float = typer.Option(0.7, "--truncation", min=0.0, max=1.0, help="Truncation psi (paper: 0.7)."),
    features: str = typer.Option("farl", "--features", help="Feature extractor: farl, clip or arcface."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Fakes per render/embed batch."),
    chunk_size: int = typer.Option(1000, "--chunk-size", min=1, help="Fakes per chunk file (unit of resuming)."),
    device: str = device_option(),
    models: Path | None = models_option(),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the z samples."),
    index: str = typer.Option("auto", "--index", help="auto (exact up to 250,000 fakes, else calibrated IVF), flat, ivf or hnsw."),
    thumbnail_size: int = typer.Option(64, "--thumbnail-size", min=8, max=256, help="Thumbnail side in px."),
    no_thumbnails: bool = typer.Option(False, "--no-thumbnails", help="Do not write contact sheets."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
) -> None:
    """Sample z (seeded), map to w, render, embed, and write w codes, features and a FAISS index."""
    from falco.config import BankConfig
    from falco.run.bank import run_bank_build

    cfg = BankConfig(out=out, num=num, truncation=truncation, features=features, batch_size=batch_size,
                     chunk_size=chunk_size, device=device, models=models, seed=seed, index=index,
                     thumbnails=not no_thumbnails, thumbnail_size=thumbnail_size, progress=not no_progress)
    path = run_bank_build(cfg, echo=lambda msg: typer.echo(msg, err=True))
    typer.echo(f"bank: {path} ({num} fakes)")


@bank_app.command("import-falco", cls=Command)
def import_falco_command(
    root: Path = typer.Argument(..., metavar="ROOT", help="A reference FALCO repository (its datasets/fake/...)."),
    out: Path = typer.Option(..., "--out", help="Bank directory (resumable: re-run to finish an interrupted import)."),
    fake_dataset: Optional[str] = typer.Option(None, "--fake-dataset", help="Which datasets/fake/ folder, when there are several."),
    generator: str = typer.Option("workspace", "--generator", help="workspace (ROOT/models/pretrained/genforce/<gan>.pth), models (the model set's) or a file."),
    features: str = typer.Option("farl", "--features", help="Feature extractor: farl, clip or arcface."),
    features_from: str = typer.Option("auto", "--features-from", help="auto (the workspace's <features>_features.pt when they agree with falco's, else computed), compute or workspace."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Fakes per render/embed batch."),
    chunk_size: int = typer.Option(1000, "--chunk-size", min=1, help="Fakes per chunk file (unit of resuming)."),
    device: str = device_option(),
    models: Path | None = models_option(),
    index: str = typer.Option("auto", "--index", help="auto, flat, ivf or hnsw."),
    thumbnail_size: int = typer.Option(64, "--thumbnail-size", min=8, max=256, help="Thumbnail side in px."),
    no_thumbnails: bool = typer.Option(False, "--no-thumbnails", help="Do not cut thumbnails from the fakes' image.jpg."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
) -> None:
    """Write the fakes of a reference FALCO workspace (codes, image.jpg) as a falco bank."""
    from falco.compat.falco_bank import run_import_falco

    path = run_import_falco(root, out, fake_dataset=fake_dataset, models=models, generator=generator,
                            features=features, features_from=features_from, device=device, batch_size=batch_size,
                            chunk_size=chunk_size, index=index, thumbnails=not no_thumbnails,
                            thumbnail_size=thumbnail_size, progress=not no_progress,
                            echo=lambda msg: typer.echo(msg, err=True))
    from falco.bank import Bank

    typer.echo(f"bank: {path} ({len(Bank.open(path))} fakes from {root})")


@bank_app.command("info", cls=Command)
def info_command(
    path: Path = typer.Argument(..., metavar="BANK", help="Bank directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
    verify: bool = typer.Option(False, "--verify", help="Re-hash every chunk file against the manifest."),
) -> None:
    """Describe a bank: size, generator, features, truncation, seed, index; or how far its build got."""
    from falco.bank import Bank, bank_status

    st = bank_status(path)
    if st["state"] == "unfinished":
        typer.echo(f"{path}: unfinished bank, {st['chunks_done']} of {st['chunks_total']} chunks written "
                   f"({st['count']} fakes planned); re-run the same `falco bank build --out {path} ...` to finish it")
        raise typer.Exit(1)
    bank = Bank.open(path)  # raises a one-line InputError for anything else
    m = bank.manifest
    if as_json:
        typer.echo(json.dumps(m, indent=2))
    else:
        g, f, ix = m["generator"], m["features"], m["index"]
        size = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
        lines = [
            f"bank       {path}  ({size / 2**20:.1f} MiB)",
            f"fakes      {m['count']}  (chunks of {m['chunk_size']}, "
            + (f"seed {m['seed']}" if m.get("seed") is not None else "imported") + f", truncation {m['truncation']})",
            f"generator  {g.get('name') or '?'}  w_dim {g['w_dim']}, {g['num_ws']} ws, {g.get('img_resolution')} px"
            + (f", file sha256 {g['sha256']}" if g.get("sha256") else "")
            + f"\n           weights fingerprint {g['fingerprint']}",
            (f"features   {f['name']} ({f.get('source') or '?'}), dim {f['dim']}, {f['metric']}, "
             f"fingerprint {f['fingerprint']}"),
            f"index      {ix['kind']} {ix['params'] or ''}".rstrip(),
            "thumbnails " + (f"{m['thumbnails']['size']} px, contact sheets in thumbs/" if m.get("thumbnails") else "none"),
            f"created    {m['created']}",
        ]
        src = m.get("source") or {}
        if src.get("falco_workspace"):
            lines.insert(1, f"source     FALCO workspace {src['falco_workspace']} ({src.get('fake_dataset')}; "
                            f"features {src.get('features', '?')})")
        if m.get("env", {}).get("tiny_models"):
            lines.append("warning    built with a tiny random model set: not meaningful")
        typer.echo("\n".join(lines))
    if verify:
        bad = bank.verify()
        if bad:
            typer.echo(f"corrupt: {', '.join(bad)}", err=True)
            raise typer.Exit(1)
        typer.echo(f"verified: {len(m['chunks'])} chunk files match the manifest")
