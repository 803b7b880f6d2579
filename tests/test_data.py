"""The data layer on small files made here: every dataset meets the TrainData contract, errors name the input."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from alphaflow.core.conventions import NULL_LABEL
from alphaflow.data import (DATA_OPTIONS, DATASETS, TrainData, build_dataset, check_data_options, dataset_class,
                            dataset_from_config, dataset_options, extract_latents, load_digits)
from alphaflow.data.cifar10 import BATCHES
from alphaflow.data.imagefolder import load_image
from conftest import make_image_folder


def _check_contract(data: TrainData, rows: int = 5, raw_shape=None) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.get(list(range(rows)))
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert tuple(x.shape) == (rows, *(raw_shape or data.shape)) and tuple(y.shape) == (rows,)
    x2, y2 = data.get(torch.arange(rows))
    assert torch.equal(x, x2) and torch.equal(y, y2)  # deterministic fetch
    if data.num_classes:
        assert 0 <= int(y.min()) and int(y.max()) < data.num_classes
    else:
        assert (y == NULL_LABEL).all()
    return x, y


# ---- digits and toys -------------------------------------------------------------------------

def test_digits():
    data = build_dataset("digits")
    assert data.num_classes == 10 and data.shape == (1, 8, 8) and len(data) == 1797
    x, _ = _check_contract(data)
    full, labels = data.get(range(len(data)))
    assert full.min() == -1 and full.max() == 1 and set(labels.tolist()) == set(range(10))
    assert torch.equal(data.prepare(x, None), x) and torch.equal(data.to_images(x), x)
    assert data.state_dict() == {}
    assert torch.equal(full, load_digits()[0])  # the demo's loader still agrees
    with pytest.raises(IndexError, match="1797"):
        data.get([1797])


def test_digits_file_is_sklearn_load_digits():
    """The loader reads scikit-learn's shipped CSV itself (no sklearn import at start-up): the same images and labels."""
    from sklearn.datasets import load_digits as sklearn_digits

    x, y = load_digits(torch.float64)
    bunch = sklearn_digits()
    assert torch.equal(x, torch.as_tensor(bunch.images).unsqueeze(1) / 16.0 * 2.0 - 1.0)
    assert torch.equal(y, torch.as_tensor(bunch.target)) and y.dtype == torch.int64


@pytest.mark.parametrize("toy,classes", [("moons", 2), ("gaussians8", 8), ("checkerboard", 0)])
def test_toy2d(toy, classes):
    data = build_dataset("toy2d", toy=toy, toy_size=512, seed=3)
    assert data.shape == (2,) and data.num_classes == classes and len(data) == 512
    _check_contract(data)
    x, y = data.get(range(512))
    assert torch.allclose(x.std(0), torch.ones(2), atol=1e-4) and x.mean(0).abs().max() < 1e-4
    if classes:
        assert set(y.tolist()) == set(range(classes))
    assert torch.equal(x, build_dataset("toy2d", toy=toy, toy_size=512, seed=3).get(range(512))[0])
    assert not torch.equal(x, build_dataset("toy2d", toy=toy, toy_size=512, seed=4).get(range(512))[0])
    assert data.to_images(x) is None


def test_checkerboard_squares_alternate():
    from alphaflow.data.toy2d import _checkerboard

    # before standardisation the board is [−2, 2]² with unit squares: all points share one parity
    raw, _ = _checkerboard(2000, torch.Generator().manual_seed(0))
    parity = (torch.floor(raw[:, 0]) + torch.floor(raw[:, 1])) % 2
    assert (parity == parity[0]).all() and raw.abs().max() <= 2


def test_toy2d_unknown_kind():
    with pytest.raises(ValueError, match="unknown toy 'spiral'.*checkerboard, gaussians8, moons"):
        build_dataset("toy2d", toy="spiral")


# ---- cifar10 ---------------------------------------------------------------------------------

def _write_batch(folder, name, rows, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (rows, 3072), dtype=np.uint8)
    labels = list(rng.integers(0, 10, rows))
    with open(folder / name, "wb") as f:
        pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, f)
    return data, labels


def test_cifar10(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    first = _write_batch(root, "data_batch_1", 3, 0)
    _write_batch(root, "data_batch_2", 2, 1)
    with pytest.raises(ValueError, match="data_batch_3, data_batch_4, data_batch_5"):
        build_dataset("cifar10", path=str(root))
    for i, name in enumerate(BATCHES[2:]):
        _write_batch(root, name, 2, i + 2)
    for path in (root, tmp_path):  # the batches folder, or the folder it was unpacked into
        data = build_dataset("cifar10", path=str(path))
        assert len(data) == 11 and data.num_classes == 10 and data.shape == (3, 32, 32)
    x, y = _check_contract(data, rows=3)
    pixels, labels = first
    # row 1, channel green (bytes 1024..2047), pixel (h=5, w=7): byte 1024 + 5·32 + 7
    assert x[1, 1, 5, 7].item() == pytest.approx(pixels[1, 1024 + 5 * 32 + 7] / 127.5 - 1)
    assert torch.allclose(x, torch.from_numpy(pixels.reshape(3, 3, 32, 32)).float() / 127.5 - 1)
    assert y.tolist() == [int(v) for v in labels]


def test_cifar10_malformed_batch(tmp_path):
    for name in BATCHES:
        _write_batch(tmp_path, name, 2, 0)
    with open(tmp_path / "data_batch_4", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match="data_batch_4.*uint8 \\[n, 3072\\]"):
        build_dataset("cifar10", path=tmp_path)
    (tmp_path / "data_batch_4").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="cannot read .*data_batch_4"):
        build_dataset("cifar10", path=tmp_path)


# ---- image folders ---------------------------------------------------------------------------

def test_imagefolder(tmp_path):
    from PIL import Image

    root = make_image_folder(tmp_path / "imgs")
    Image.new("RGB", (40, 25), (255, 0, 51)).save(root / "cat" / "solid.png")
    data = build_dataset("imagefolder", path=str(root), resolution=8)
    assert data.classes == ["ant", "cat"] and data.num_classes == 2 and data.shape == (3, 8, 8)
    assert len(data) == 7  # the .txt is not an image
    x, y = data.get(range(len(data)))
    _check_contract(data, rows=7)
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 1] and x.min() >= -1 and x.max() <= 1
    solid = x[data.files.index("cat/solid.png")]
    expected = torch.tensor([1.0, -1.0, 51 / 127.5 - 1]).view(3, 1, 1).expand(3, 8, 8)
    assert torch.allclose(solid, expected, atol=1e-6)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(ValueError, match="no class folders"):
        build_dataset("imagefolder", path=tmp_path)
    (tmp_path / "dog").mkdir()
    with pytest.raises(ValueError, match="no images"):
        build_dataset("imagefolder", path=tmp_path)
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    data = build_dataset("imagefolder", path=tmp_path, resolution=4)
    with pytest.raises(ValueError, match="cannot decode image .*broken.jpg"):
        data.get([0])


# ---- latents end to end ----------------------------------------------------------------------

def test_extract_latents_matches_vae(latents):
    tmp, vae, out = latents
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num"] == 8 and meta["shape"] == [4, 8, 8] and meta["classes"] == ["ant", "cat"]
    assert meta["resolution"] == 16 and meta["dtype"] == "float16"
    assert not [p for p in tmp.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    data = build_dataset("latents", path=out)
    assert len(data) == 8 and data.shape == (4, 8, 8) and data.num_classes == 2
    raw, y = _check_contract(data, rows=8, raw_shape=(8, 8, 8))
    assert raw.shape == (8, 8, 8, 8) and y.tolist() == [0] * 4 + [1] * 4
    image = load_image(tmp / "imgs" / "cat" / "1.PNG", 16)
    with torch.no_grad():
        posterior = vae.encode(image[None]).latent_dist
    assert torch.allclose(raw[5, :4], posterior.mean[0], atol=2e-3, rtol=1e-3)
    assert torch.allclose(raw[5, 4:], posterior.logvar[0], atol=2e-2, rtol=1e-3)
    with pytest.raises(ValueError, match="already exists"):
        extract_latents(tmp / "imgs", tmp / "vae", out, resolution=16)
    with pytest.raises(ValueError, match="local diffusers folder"):
        extract_latents(tmp / "imgs", tmp / "no-vae", tmp / "lat2", resolution=16)


def test_extract_latents_crash_leaves_nothing(latents, tmp_path):
    tmp, _, _ = latents
    (tmp_path / "imgs" / "dog").mkdir(parents=True)
    (tmp_path / "imgs" / "dog" / "a.png").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="cannot decode image"):
        extract_latents(tmp_path / "imgs", tmp / "vae", tmp_path / "lat", resolution=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]  # neither `lat` nor a temporary folder


class _Rows(torch.utils.data.Dataset):
    """dataset[list of rows] → one batch, the way a trainer can wire ``get`` into a DataLoader."""

    def __init__(self, data: TrainData) -> None:
        self.data = data

    def __getitem__(self, rows):
        return self.data.get(rows)


def test_latents_in_dataloader_workers(latents):
    _, _, out = latents
    data = build_dataset("latents", path=out)
    sampler = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(range(8)), 4, drop_last=False)
    loader = torch.utils.data.DataLoader(_Rows(data), batch_size=None, sampler=sampler, num_workers=2)
    raw = torch.cat([x for x, _ in loader])
    assert torch.equal(raw, data.get(range(8))[0])


def test_latents_prepare_and_stats(latents):
    _, _, out = latents
    data = build_dataset("latents", path=out)
    raw, _ = data.get(range(8))
    with pytest.raises(RuntimeError, match="latent statistics not fitted"):
        data.prepare(raw, torch.Generator().manual_seed(0))
    data.fit_stats(torch.Generator().manual_seed(1), num_samples=64)
    draws = torch.stack([data.prepare(raw, torch.Generator().manual_seed(s)) for s in range(50)])  # [50, 8, 4, 8, 8]
    flat = draws.flatten(0, 1)
    assert flat.mean(0).abs().mean() < 0.3 and (flat.std(0) - 1).abs().mean() < 0.3
    g = torch.Generator().manual_seed(7)
    first, second = data.prepare(raw, g), data.prepare(raw, g)
    assert not torch.equal(first, second)  # a fresh posterior sample per load
    assert torch.equal(first, data.prepare(raw, torch.Generator().manual_seed(7)))

    fresh = build_dataset("latents", path=out)
    fresh.load_state_dict(data.state_dict())
    assert torch.equal(fresh.prepare(raw, torch.Generator().manual_seed(3)),
                       data.prepare(raw, torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="latent_mean has shape"):
        fresh.load_state_dict({"latent_mean": torch.zeros(4, 4, 4), "latent_std": torch.ones(4, 4, 4)})
    with pytest.raises(ValueError, match="exactly the keys"):
        fresh.load_state_dict({})
    with pytest.raises(ValueError, match="keeps no statistics"):
        build_dataset("digits").load_state_dict(data.state_dict())


def test_latents_decoder_and_pickle(latents):
    tmp, _, out = latents
    data = build_dataset("latents", path=out)
    data.fit_stats(torch.Generator().manual_seed(0), num_samples=64)
    x = data.prepare(data.get([0, 1])[0], torch.Generator().manual_seed(0))
    assert data.to_images(x) is None
    data.attach_decoder(str(tmp / "vae"))
    images = data.to_images(x)
    assert images.shape == (2, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    clone = pickle.loads(pickle.dumps(data))
    assert torch.equal(clone.get([3, 6])[0], data.get([3, 6])[0])
    assert torch.equal(clone.state_dict()["latent_std"], data.state_dict()["latent_std"])


def test_latents_malformed_folder(latents, tmp_path):
    _, _, out = latents
    with pytest.raises(ValueError, match="no meta.json"):
        build_dataset("latents", path=tmp_path)
    for name in ("meta.json", "mean.npy", "logvar.npy", "labels.npy"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    np.save(tmp_path / "logvar.npy", np.zeros((7, 4, 8, 8), np.float16))
    with pytest.raises(ValueError, match="logvar.npy holds float16 \\(7, 4, 8, 8\\).*\\(8, 4, 8, 8\\)"):
        build_dataset("latents", path=tmp_path)


# ---- the registry ----------------------------------------------------------------------------

def test_build_dataset_errors(tmp_path):
    assert set(DATASETS) == {"digits", "toy2d", "cifar10", "imagefolder", "latents"}
    with pytest.raises(ValueError, match="unknown dataset 'imagefoldr'.*Did you mean 'imagefolder'"):
        build_dataset("imagefoldr")
    for name in ("cifar10", "imagefolder", "latents"):
        with pytest.raises(ValueError, match="needs data.path"):
            build_dataset(name)
        with pytest.raises(ValueError, match="data.path .*nowhere.* does not exist"):
            build_dataset(name, path=tmp_path / "nowhere")


# ---- capabilities ----------------------------------------------------------------------------

def test_every_dataset_declares_its_options_and_capabilities():
    import inspect

    for name, cls in DATASETS.items():
        assert issubclass(cls, TrainData) and dataset_class(name) is cls
        params = inspect.signature(cls.__init__).parameters
        assert set(cls.options) <= set(params), f"{name} declares options its constructor does not take"
        assert set(params) - {"self"} <= set(cls.options), f"{name} takes arguments it does not declare"
        assert ("path" in cls.options) == (cls.needs_path is not None), name
        assert isinstance(cls.decodes_samples, bool) and isinstance(cls.reference_from_source_images, bool)
        shape, classes = cls.planned_shape(256)
        assert all(isinstance(s, int) and s > 0 for s in shape) and classes >= 0
    assert [n for n, c in DATASETS.items() if c.decodes_samples] == ["latents"]
    assert [n for n, c in DATASETS.items() if c.reference_from_source_images] == ["latents"]
    assert DATA_OPTIONS == ("toy", "toy_size", "path", "resolution")


def _cifar_folder(root):
    for i, name in enumerate(BATCHES):
        _write_batch(root, name, 2, i)
    return root


def test_planned_shape_agrees_with_the_built_dataset(tmp_path):
    built = {"digits": build_dataset("digits"), "cifar10": build_dataset("cifar10", path=_cifar_folder(tmp_path))}
    for data in built.values():
        assert type(data).planned_shape(256) == (data.shape, data.num_classes)
    for toy in ("moons", "gaussians8", "checkerboard"):
        data = build_dataset("toy2d", toy=toy, toy_size=16)
        assert type(data).planned_shape(256)[0] == data.shape  # planned unconditional: see Toy2DData
    folder = build_dataset("imagefolder", path=make_image_folder(tmp_path / "imgs"), resolution=8)
    assert type(folder).planned_shape(8)[0] == folder.shape


def test_latent_capabilities(latents):
    tmp, _, out = latents
    data = build_dataset("latents", path=out)
    assert data.decodes_samples and data.reference_from_source_images
    assert data.source_resolution(99) == 16  # the resolution meta.json records
    assert type(data).planned_shape(64) == ((4, 8, 8), 1000)  # planned as SD-VAE latents (factor 8)
    assert data.shape[0] == type(data).planned_shape(16)[0][0]
    data.fit_stats(torch.Generator().manual_seed(0), num_samples=16)
    x = data.prepare(data.get([0])[0], torch.Generator().manual_seed(0))
    assert data.to_images(x) is None  # no decoder yet: the samples are latents, not images
    digits = build_dataset("digits")
    assert not digits.decodes_samples and not digits.reference_from_source_images
    assert digits.source_resolution(99) == 99
    with pytest.raises(TypeError, match="DigitsData has no decoder to attach"):
        digits.attach_decoder(tmp / "vae")


def test_build_dataset_passes_only_declared_options(monkeypatch):
    seen = {}

    class Probe(TrainData):
        options = ("toy", "seed")

        def __init__(self, toy="moons", seed=0):
            seen.update(toy=toy, seed=seed)

    monkeypatch.setitem(DATASETS, "probe", Probe)
    build_dataset("probe", toy="x", resolution=32, path="/nowhere", seed=5)  # resolution, path: not read
    assert seen == {"toy": "x", "seed": 5}
    build_dataset("probe")
    assert seen == {"toy": "moons", "seed": 0}  # the dataset's own defaults
    with pytest.raises(ValueError, match="unknown data option\\(s\\) 'resolutoin', 'tyo'"):
        build_dataset("digits", resolutoin=32, tyo="moons")
    # digits reads no option: those of other datasets are ignored, not refused
    assert build_dataset("digits", path="/nowhere", resolution=3, toy="spiral").shape == (1, 8, 8)


def test_dataset_from_config(tmp_path):
    from types import SimpleNamespace

    cfg = SimpleNamespace(name="toy2d", path="/nowhere", resolution=7, toy="gaussians8", toy_size=64,
                          stats_samples=2048, workers=0, vae_path=None)
    assert dataset_options(cfg) == {"toy": "gaussians8", "toy_size": 64}
    data = dataset_from_config(cfg, seed=3)
    assert torch.equal(data.get(range(64))[0], build_dataset("toy2d", toy="gaussians8", toy_size=64,
                                                             seed=3).get(range(64))[0])
    as_dict = {"name": "imagefolder", "path": str(make_image_folder(tmp_path / "i")), "resolution": 4}
    assert dataset_options(as_dict) == {"path": as_dict["path"], "resolution": 4}
    assert dataset_from_config(as_dict).shape == (3, 4, 4)
    with pytest.raises(ValueError, match="unknown dataset 'digit'"):
        dataset_options(SimpleNamespace(name="digit"))


def test_check_data_options_uses_needs_path(tmp_path):
    assert check_data_options("digits", "/nowhere") is None and check_data_options("toy2d", None) is None
    assert check_data_options("latents", tmp_path) == tmp_path
    with pytest.raises(ValueError, match="needs data.path: a folder written by extract_latents"):
        check_data_options("latents", "")


def test_capabilities_drive_evaluation_and_the_memory_plan(latents, tmp_path):
    from types import SimpleNamespace

    from alphaflow.config import load_config
    from alphaflow.evaluate.quality import reference_stats_all
    from alphaflow.metrics.choice import LATENT_REFERENCE
    from alphaflow.perf.memplan import data_shape

    _, _, out = latents
    with pytest.raises(ValueError, match="come from the images the latents were encoded from"):
        reference_stats_all(build_dataset("latents", path=out), "latents", [SimpleNamespace(name="x")], tmp_path)
    assert "--ref-images" in LATENT_REFERENCE
    expected = {"latents": ((4, 64, 64), 1000), "imagefolder": ((3, 512, 512), 1000), "cifar10": ((3, 32, 32), 10),
                "digits": ((1, 8, 8), 10), "toy2d": ((2,), 0)}
    for name, planned in expected.items():
        assert data_shape(load_config(None, [f"data.name={name}", "data.resolution=512"])) == planned
