"""`hyperbench merge-lora`: thin command (registered in harness/cli/main.py); the work is harness/lora.py."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("merge-lora")
@click.option("--base", required=True, help="Base model: built-in name, HF folder or hub id (online only).")
@click.option("--adapter", required=True, type=click.Path(path_type=Path), help="peft LoRA adapter folder.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="New folder for the merged model.")
def merge_lora(base, adapter, out):
    """Fold a LoRA adapter into its base (peft merge_and_unload): an ordinary HF model folder."""
    from harness.lora import merge

    r = merge(base, adapter, out)
    click.echo(f"merged {r.modules} LoRA modules (rank {r.rank}) of {r.adapter} into {r.base}")
    click.echo(f"model folder: {r.out}")
