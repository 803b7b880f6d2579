"""``alphaflow import-official`` and ``alphaflow.load_model``: a snapshot in the official α-Flow code's layout, from a
model written here after the description of its modules (names, shapes, forward; docs/official_code.md), imported
and compared output for output in float64."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import alphaflow
from alphaflow.cli.main import main
from alphaflow.core.conventions import NULL_LABEL
from alphaflow.official import import_official

DT = torch.float64


# ----------------------------------------------------------------------------- a model in their layout

def their_sinusoid(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=DT) / half)
    args = t[:, None].to(DT) * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def their_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """MAE's 2-D sin-cos: the first half from the column index, the second from the row index, [sin, cos] each."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
    w, h = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    one = lambda pos: np.concatenate([np.sin(pos.reshape(-1)[:, None] * omega), np.cos(pos.reshape(-1)[:, None] * omega)], 1)  # noqa: E731
    return torch.from_numpy(np.concatenate([one(w), one(h)], axis=1))[None]


class Embedder(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))

    def forward(self, t):
        return self.mlp(their_sinusoid(t))


class Labels(nn.Module):
    def __init__(self, rows: int, d: int) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(rows, d)

    def forward(self, onehot):  # an all-zero row (dropped or unconditional) takes the table's last row
        idx = torch.where(onehot.sum(1) > 0, onehot.argmax(1), self.embedding_table.num_embeddings - 1)
        return self.embedding_table(idx)


class Patch(nn.Module):
    def __init__(self, c: int, d: int, p: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(c, d, p, p)


class Attn(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def modulate(norm, x, shift, scale):
    return norm(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn, self.mlp = Attn(d, heads), Mlp(d)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x, c):
        sa, ca, ga, sm, cm, gm = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + ga.unsqueeze(1) * self.attn(modulate(self.norm1, x, sa, ca))
        return x + gm.unsqueeze(1) * self.mlp(modulate(self.norm2, x, sm, cm))


class Final(nn.Module):
    def __init__(self, d: int, p: int, c: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(d, p * p * c)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final, x, shift, scale))


class TheirDiT(nn.Module):
    """u(x, t, r | one-hot label): c = emb(t) + emb_next(t − r) + emb(label), patch → blocks → final → unpatchify."""

    def __init__(self, *, c: int, size: int, p: int, d: int, depth: int, heads: int, rows: int) -> None:
        super().__init__()
        self.c, self.p, self.grid = c, p, size // p
        self.x_embedder = Patch(c, d, p)
        self.pos_embed = nn.Parameter(their_pos_embed(d, self.grid).float(), requires_grad=False)
        self.noise_labels_embedder, self.noise_labels_next_embedder = Embedder(d), Embedder(d)
        self.y_embedder = Labels(rows, d)
        self.blocks = nn.ModuleList([Block(d, heads) for _ in range(depth)])
        self.final_layer = Final(d, p, c)

    def forward(self, x, sigma, onehot, sigma_next):
        h = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        cond = self.noise_labels_embedder(sigma) + self.noise_labels_next_embedder(sigma - sigma_next)
        cond = cond + self.y_embedder(onehot)
        for block in self.blocks:
            h = block(h, cond)
        out = self.final_layer(h, cond)
        n, g, p = x.shape[0], self.grid, self.p
        out = out.reshape(n, g, g, p, p, self.c)
        return torch.einsum("nhwpqc->nchpwq", out).reshape(n, self.c, g * p, g * p)


class Wrapper(nn.Module):
    """Their latent-diffusion wrapper: the DiT as ``model``, a VAE beside it, the latent mean and variance."""

    def __init__(self, dit: TheirDiT, c: int, size: int) -> None:
        super().__init__()
        self.model = dit
        self.autoencoder = nn.Linear(3, 3)
        self.register_buffer("autoencoder_mean", torch.randn(1, c, size, size, dtype=DT))
        self.register_buffer("autoencoder_var", torch.rand(1, c, size, size, dtype=DT) + 0.5)
        self.register_buffer("are_ldm_stats_inited", torch.tensor(1.0))


class TheirConfigStruct:  # a class of theirs the importer cannot know: must arrive as an inert stand-in
    def __init__(self, note: str) -> None:
        self.note = note


TINY = {"c": 4, "size": 8, "p": 2, "d": 64, "depth": 2, "heads": 2}  # DiT-N/2's shapes
B2 = {"c": 4, "size": 8, "p": 2, "d": 768, "depth": 12, "heads": 12}  # DiT-B/2's keys (8×8 latents: few tokens)


def their_pair(arch: dict, classes: int, dropout: float, seed: int = 0) -> tuple[Wrapper, Wrapper]:
    """(net, ema) wrappers with different random weights, off any zero init."""
    out = []
    for k in range(2):
        torch.manual_seed(seed + k)
        dit = TheirDiT(**arch, rows=classes + (1 if dropout > 0 else 0)).to(DT)
        with torch.no_grad():
            for name, p in dit.named_parameters():
                if name != "pos_embed":
                    p.normal_(0.0, 0.05)
        out.append(Wrapper(dit, arch["c"], arch["size"]))
    return out[0], out[1]


def save_snapshot(path, net: Wrapper, ema: Wrapper, *, classes: int, dropout: float, arch: dict, fsdp: bool = False,
                  precond: str | None = None):
    state = {k: v for k, v in ema.state_dict().items()}
    if fsdp:  # FSDP and activation checkpointing put their wrapper names into every key
        state = {k.replace("model.", "model._fsdp_wrapped_module._checkpoint_wrapped_module.", 1): v
                 for k, v in state.items()}
    cfg = {"model": {"num_blocks": arch["depth"], "dim": arch["d"], "num_heads": arch["heads"],
                     "label_dropout": dropout}, "dataset": {"label_shape": [classes]}}
    if precond is not None:  # the wrapper's preconditioning, where their config names it
        cfg["model"]["precond"] = precond
    torch.save({"net": net.state_dict(), "ema": state, "cfg": cfg, "stats": {"cur_step": 1234},
                "optimizer": None, "vis": TheirConfigStruct("grids")}, path)


def inputs(classes: int, n: int = 5, size: int = 8):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(n, 4, size, size, generator=g, dtype=DT)
    t = torch.rand(n, generator=g, dtype=DT)
    r = t * torch.rand(n, generator=g, dtype=DT)
    labels = torch.randint(0, classes, (n,), generator=g)
    labels[1] = NULL_LABEL
    onehot = torch.zeros(n, classes, dtype=DT)
    keep = labels != NULL_LABEL
    onehot[keep, labels[keep]] = 1.0
    return z, r, t, labels, onehot


def check_outputs(run, theirs: Wrapper, classes: int, weights: str = "ema") -> None:
    net = alphaflow.load_model(run, weights).double()
    z, r, t, labels, onehot = inputs(classes)
    with torch.no_grad():
        torch.testing.assert_close(net(z, r, t, labels), theirs.model(z, t, onehot, r), rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- the tests

@pytest.mark.parametrize("dropout", [0.1, 0.0], ids=["null-row", "no-null-row"])
def test_an_imported_snapshot_gives_their_outputs(tmp_path, dropout):
    net, ema = their_pair(TINY, classes=10, dropout=dropout)
    save_snapshot(tmp_path / "snap.pt", net, ema, classes=10, dropout=dropout, arch=TINY, fsdp=dropout == 0.0)
    run = import_official(tmp_path / "snap.pt", tmp_path / "run", log=lambda _: None)
    check_outputs(run, ema, 10)
    record = json.loads((run / "import.json").read_text())
    assert record["model"] == "DiT-N/2" and record["num_classes"] == 10 and record["weights"] == "ema"
    assert ("repeated" in record["null_row"]) == (dropout == 0.0)
    ckpt = torch.load(next((run / "checkpoints").glob("step-*.pt")), weights_only=True)
    assert ckpt["step"] == 1234 and (run / "DONE").exists()
    std = (ema.autoencoder_var[0] + 1e-16).sqrt().float()
    torch.testing.assert_close(ckpt["data_stats"]["latent_std"], std)
    torch.testing.assert_close(ckpt["data_stats"]["latent_mean"], ema.autoencoder_mean[0].float())


def test_the_raw_weights_and_the_command_line(tmp_path, capsys):
    net, ema = their_pair(TINY, classes=10, dropout=0.1, seed=5)
    save_snapshot(tmp_path / "snap.pt", net, ema, classes=10, dropout=0.1, arch=TINY)
    out = tmp_path / "raw"
    assert main(["import-official", str(tmp_path / "snap.pt"), "--out", str(out), "--weights", "net"]) == 0
    check_outputs(out, net, 10)
    assert main(["import-official", str(tmp_path / "snap.pt"), "--out", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_unknown_keys_and_unreadable_architectures_are_refused(tmp_path):
    net, ema = their_pair(TINY, classes=10, dropout=0.1)
    ema.model.blocks[0].register_buffer("extra_scale", torch.ones(3))
    save_snapshot(tmp_path / "snap.pt", net, ema, classes=10, dropout=0.1, arch=TINY)
    with pytest.raises(ValueError, match=r"1 key\(s\) of the snapshot's DiT have no counterpart here: blocks.0.extra_scale"):
        import_official(tmp_path / "snap.pt", tmp_path / "run", log=lambda _: None)
    torch.save({"net": {"w": torch.ones(1)}, "ema": {"w": torch.ones(1)}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="expected one DiT"):
        import_official(tmp_path / "bad.pt", tmp_path / "run2", log=lambda _: None)
    with pytest.raises(ValueError, match="does not fit the snapshot's DiT"):
        save_snapshot(tmp_path / "ok.pt", *their_pair(TINY, 10, 0.1), classes=10, dropout=0.1, arch=TINY)
        import_official(tmp_path / "ok.pt", tmp_path / "run3", model="DiT-T/2", log=lambda _: None)


def test_only_the_alpha_flow_wrapper_is_imported(tmp_path, capsys):
    """cfg['model']['precond'] = alphaflow imports (the DiT's output is u); another wrapper (recflow scales the input
    and the output) is refused in one line naming the key, the value and the expected value."""
    net, ema = their_pair(TINY, classes=10, dropout=0.1)
    save_snapshot(tmp_path / "ok.pt", net, ema, classes=10, dropout=0.1, arch=TINY, precond="alphaflow")
    run = import_official(tmp_path / "ok.pt", tmp_path / "run", log=lambda _: None)
    check_outputs(run, ema, 10)
    assert json.loads((run / "import.json").read_text())["precond"] == "alphaflow"
    save_snapshot(tmp_path / "rf.pt", net, ema, classes=10, dropout=0.1, arch=TINY, precond="recflow")
    expected = r"the snapshot's cfg\['model'\]\['precond'\] is 'recflow', expected 'alphaflow'"
    with pytest.raises(ValueError, match=expected):
        import_official(tmp_path / "rf.pt", tmp_path / "run2", log=lambda _: None)
    assert not (tmp_path / "run2").exists(), "nothing is written for a refused snapshot"
    assert main(["import-official", str(tmp_path / "rf.pt"), "--out", str(tmp_path / "run3")]) == 2
    err = capsys.readouterr().err
    assert "cfg['model']['precond'] is 'recflow', expected 'alphaflow'" in err and len(err.strip().splitlines()) == 1


def test_the_snapshot_runs_none_of_its_code(tmp_path):
    import subprocess

    class Payload:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(tmp_path / "ran")],))

    torch.save({"net": {}, "ema": {}, "cfg": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="expected one DiT"):
        import_official(tmp_path / "evil.pt", tmp_path / "run", log=lambda _: None)
    assert not (tmp_path / "ran").exists()


@pytest.mark.slow
def test_the_b2_key_shapes_import(tmp_path):
    net, ema = their_pair(B2, classes=1000, dropout=0.0)
    save_snapshot(tmp_path / "snap.pt", ema, ema, classes=1000, dropout=0.0, arch=B2)
    run = import_official(tmp_path / "snap.pt", tmp_path / "run", log=lambda _: None)
    assert json.loads((run / "import.json").read_text())["model"] == "DiT-B/2"
    check_outputs(run, ema, 1000)
