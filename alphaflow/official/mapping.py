"""The official α-Flow DiT's state dict in this project's names (docs/official_code.md#importing-checkpoints).

Their latent-diffusion wrapper holds the DiT under a prefix (``model.``) beside its VAE (``autoencoder.*``) and the
latent statistics (``autoencoder_mean``, ``autoencoder_var``: per-element mean and variance, float64
[1, C, H, W] or [1, C, 1, 1]); FSDP and activation checkpointing may add ``_fsdp_wrapped_module.`` and
``_checkpoint_wrapped_module.`` to every key. ``find_dit`` finds the DiT by its patch-embedding key, ``map_dit``
renames each of its keys by ``RULES`` and refuses any it cannot rename.

What differs beyond names: their label table has K rows when trained without label dropout and K + 1 with it, the
null label always its last row (``embed_table``); their positional embedding orders its halves (columns, then rows)
the other way round from ours, so the checkpoint's tensor is used as it is (``model.pos_embed=stored``).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

WRAPPERS = re.compile(r"(^|\.)(_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")
PATCH_KEY = "x_embedder.proj.weight"
_W = r"(weight|bias)"
RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(f"^{a}$"), b) for a, b in (
    (rf"x_embedder\.proj\.{_W}", r"x_embedder.\1"),
    (r"pos_embed", "pos_embed"),
    (rf"noise_labels_embedder\.mlp\.([02])\.{_W}", r"t_embedder.mlp.\1.\2"),
    (rf"noise_labels_next_embedder\.mlp\.([02])\.{_W}", r"d_embedder.mlp.\1.\2"),
    (r"y_embedder\.embedding_table\.weight", "y_embedder.weight"),
    (rf"blocks\.(\d+)\.attn\.(qkv|proj)\.{_W}", r"blocks.\1.attn.\2.\3"),
    (rf"blocks\.(\d+)\.mlp\.fc1\.{_W}", r"blocks.\1.mlp.0.\2"),
    (rf"blocks\.(\d+)\.mlp\.fc2\.{_W}", r"blocks.\1.mlp.2.\2"),
    (rf"blocks\.(\d+)\.adaLN_modulation\.1\.{_W}", r"blocks.\1.adaLN_modulation.1.\2"),
    (rf"final_layer\.linear\.{_W}", r"final_layer.linear.\1"),
    (rf"final_layer\.adaLN_modulation\.1\.{_W}", r"final_layer.adaLN_modulation.1.\1"),
))


def strip_wrappers(key: str) -> str:
    """A key without FSDP / activation-checkpointing / torch.compile wrapper components."""
    while True:
        stripped = WRAPPERS.sub(r"\1", key)
        if stripped == key:
            return key
        key = stripped


def find_dit(state: dict[str, Any]) -> tuple[str, dict[str, Tensor], dict[str, Any]]:
    """(prefix, the DiT's entries without it, every other entry) of a wrapper's state dict, wrapper components
    stripped. The DiT is where ``x_embedder.proj.weight`` is; none or several such places are refused."""
    clean = {strip_wrappers(k): v for k, v in state.items()}
    prefixes = sorted(k[: -len(PATCH_KEY)] for k in clean if k == PATCH_KEY or k.endswith("." + PATCH_KEY))
    if len(prefixes) != 1:
        raise ValueError(f"expected one DiT (a key ending in {PATCH_KEY!r}) in the snapshot's weights, found "
                         f"{len(prefixes)}{': ' + ', '.join(repr(p) for p in prefixes) if prefixes else ''}")
    prefix = prefixes[0]
    dit = {k[len(prefix):]: v for k, v in clean.items() if k.startswith(prefix)}
    rest = {k: v for k, v in clean.items() if not k.startswith(prefix)}
    return prefix, dit, rest


def architecture(dit: dict[str, Tensor]) -> dict[str, int]:
    """What the shapes say: depth, hidden_size, patch_size, in_channels, tokens (of pos_embed, 0 if absent) and
    table_rows (of the label table)."""
    w = dit[PATCH_KEY]
    blocks = {int(m.group(1)) for k in dit if (m := re.match(r"blocks\.(\d+)\.", k))}
    if blocks != set(range(len(blocks))):
        raise ValueError(f"the snapshot's DiT has blocks {sorted(blocks)}, expected 0 … {len(blocks) - 1}")
    table = dit.get("y_embedder.embedding_table.weight")
    return {"depth": len(blocks), "hidden_size": int(w.shape[0]), "patch_size": int(w.shape[2]),
            "in_channels": int(w.shape[1]), "tokens": int(dit["pos_embed"].shape[1]) if "pos_embed" in dit else 0,
            "table_rows": 0 if table is None else int(table.shape[0])}


def embed_table(table: Tensor, num_classes: int) -> Tensor:
    """Their label table [K or K + 1, D] as ours [K + 1, D] (the null label last). With K rows (trained without
    label dropout) their null input means the last row, class K − 1: that row is repeated as the null row, so the
    network answers a null label exactly as theirs does."""
    rows = table.shape[0]
    if rows == num_classes + 1:
        return table
    if rows == num_classes and num_classes > 0:
        return torch.cat([table, table[-1:]], dim=0)
    raise ValueError(f"the label table has {rows} rows, which fits neither {num_classes} classes nor {num_classes} "
                     "classes and a null row; give --num-classes")


def map_dit(dit: dict[str, Tensor], num_classes: int) -> dict[str, Tensor]:
    """Their DiT's entries renamed by ``RULES`` (the label table through ``embed_table``); a key no rule renames
    fails the import, all such keys listed."""
    out: dict[str, Tensor] = {}
    unmapped = []
    for key, value in dit.items():
        for pattern, target in RULES:
            if pattern.match(key):
                out[pattern.sub(target, key)] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise ValueError(f"{len(unmapped)} key(s) of the snapshot's DiT have no counterpart here: "
                         f"{', '.join(sorted(unmapped)[:12])}{' …' if len(unmapped) > 12 else ''}")
    if "y_embedder.weight" in out:
        out["y_embedder.weight"] = embed_table(out["y_embedder.weight"], num_classes)
    return out
