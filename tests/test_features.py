"""Stages 03/04: preprocessing, encoders, cache and incremental reuse, shards, PCA, neighbours."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmlens import artifacts, cli
from mmlens.artifacts import MissingArtifactError
from mmlens.config import Config
from mmlens.errors import UserError
from mmlens.features import image, merge_shards, neighbours, outputs, reduce, text, weights
from mmlens.features.precision import resolve_precision
from mmlens.features.weights import WeightsUnavailableError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def tiny_resnet() -> transformers.ResNetConfig:
    return transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])


def make_cfg(root: Path, dataset: str = "sample") -> Config:
    return Config(data_dir=root, dataset=dataset, sample_profile="test", seed=3, device="cpu")


def write_movies(cfg: Config, ids: list[int]) -> None:
    genres = [["Drama"], ["Comedy", "Drama"], ["Action"], ["Comedy"], ["Horror"], ["Action"]]
    movies = pd.DataFrame({
        "movieId": np.array(ids, dtype=np.int32),
        "title": [f"Movie {i} (2000)" for i in ids],
        "genres": [genres[k % len(genres)] for k in range(len(ids))],
    })
    artifacts.write_parquet(movies, artifacts.path(cfg, "movies"))


def poster(seed: int, size: tuple[int, int] = (60, 90), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(pixels, "RGB")
    if mode == "RGBA":
        alpha = Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8), "L")
        img.putalpha(alpha)
        return img
    return img.convert(mode)


def save_poster(cfg: Config, movie_id: int, img: Image.Image, fmt: str = "JPEG") -> None:
    folder = artifacts.path(cfg, "posters_dir")
    folder.mkdir(parents=True, exist_ok=True)
    img.save(folder / f"{movie_id}.jpg", format=fmt)


def image_world(root: Path) -> Config:
    """Movies 1..7: RGB, grayscale, CMYK, palette (PNG), RGBA (PNG), corrupt, no poster."""
    cfg = make_cfg(root)
    write_movies(cfg, [1, 2, 3, 4, 5, 6, 7])
    save_poster(cfg, 1, poster(1))
    save_poster(cfg, 2, poster(2, mode="L"))
    save_poster(cfg, 3, poster(3, mode="CMYK"))
    save_poster(cfg, 4, poster(4, mode="P"), "PNG")
    save_poster(cfg, 5, poster(5, mode="RGBA"), "PNG")
    (artifacts.path(cfg, "posters_dir") / "6.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return cfg


def run_tiny(cfg: Config, **options: object) -> dict:
    options = {"model_config": tiny_resnet(), "num_workers": 0, "batch_size": 4,
               "precision": "fp32", **options}
    return image.run(cfg, **options)  # type: ignore[arg-type]


def table(cfg: Config, modality: str) -> tuple[np.ndarray, pd.DataFrame, dict]:
    emb, index, meta = outputs.load_embeddings(cfg, modality)
    return np.array(emb), index, meta


def same_machine_free(index: pd.DataFrame) -> pd.DataFrame:
    """The index without ``input_stat`` (file size and mtime differ between directories)."""
    return index.drop(columns=["input_stat"])


# ------------------------------------------------------------------------------ preprocessing


def reference_pixels(resized: Image.Image, crop: int = 224) -> np.ndarray:
    """Independent numpy reference of CenterCrop + ToTensor + Normalize."""
    arr = np.asarray(resized.convert("RGB")).astype(np.float64)
    h, w = arr.shape[:2]
    top, left = int(round((h - crop) / 2)), int(round((w - crop) / 2))
    arr = arr[top:top + crop, left:left + crop] / 255.0
    arr = (arr - MEAN.astype(np.float64)) / STD.astype(np.float64)
    return arr.transpose(2, 0, 1)


def test_preprocess_matches_numpy_reference() -> None:
    exact = poster(0, size=(300, 256))  # shorter side already 256: no resampling involved
    out = image.preprocess(exact)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference_pixels(exact), atol=1e-5)
    tall = poster(1, size=(512, 641))
    resized = tall.resize((256, int(256 * 641 / 512)), Image.Resampling.BILINEAR)
    np.testing.assert_allclose(image.preprocess(tall), reference_pixels(resized), atol=1e-5)
    wide = poster(2, size=(90, 40))  # upscaled, landscape
    resized = wide.resize((int(256 * 90 / 40), 256), Image.Resampling.BILINEAR)
    np.testing.assert_allclose(image.preprocess(wide), reference_pixels(resized), atol=1e-5)


def test_to_rgb_handles_modes_and_alpha_on_white() -> None:
    for mode in ("L", "CMYK", "P", "RGBA", "LA", "1", "I;16"):
        assert image.to_rgb(poster(5, mode=mode) if mode != "I;16"
                            else Image.new("I;16", (8, 8), 300)).mode == "RGB"
    clear = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert np.asarray(image.to_rgb(clear)).min() == 255
    half = image.to_rgb(Image.new("LA", (4, 4), (0, 128)))
    assert np.abs(np.asarray(half).astype(int) - 127).max() <= 1
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([200, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert np.asarray(image.to_rgb(palette)).min() == 255
    with pytest.raises(ValueError):
        image.Preprocessing(resize=100, crop=224)


# --------------------------------------------------------------------------------- image stage


def test_image_stage_outputs_missing_and_corrupt(tmp_path: Path) -> None:
    cfg = image_world(tmp_path)
    result = run_tiny(cfg)
    emb, index, meta = table(cfg, "poster")
    assert emb.shape == (7, 16) and emb.dtype == np.float32
    assert index["movieId"].tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert index["row"].tolist() == list(range(7))
    assert index["has_poster"].tolist() == [True] * 5 + [False, False]
    assert index["status"].tolist() == ["ok"] * 5 + ["failed", "missing"]
    assert "6" in meta["failures"] and index.loc[5, "error"]
    assert not emb[5:].any() and np.abs(emb[:5]).sum(axis=1).min() > 0
    assert meta["weights"] == "random" and meta["dim"] == 16 and meta["n_present"] == 5
    assert meta["preprocessing"]["crop"] == 224 and result["status"] == "computed"
    assert result["n_computed"] == 6  # the corrupt file is tried, the missing one is not


def test_image_cache_hit_and_invalidation(tmp_path: Path) -> None:
    cfg = image_world(tmp_path)
    run_tiny(cfg)
    npy = artifacts.path(cfg, "embeddings", modality="poster")
    stamp = npy.stat().st_mtime_ns
    again = run_tiny(cfg)
    assert again["status"] == "up to date" and again["n_computed"] == 0
    assert npy.stat().st_mtime_ns == stamp
    recropped = run_tiny(cfg, crop=192)
    assert recropped["status"] == "computed" and recropped["n_computed"] == 6
    other_model = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 12], depths=[1, 1])
    changed = run_tiny(cfg, crop=192, model_config=other_model)
    assert changed["n_computed"] == 6 and table(cfg, "poster")[0].shape == (7, 12)
    save_poster(cfg, 1, poster(99))  # a poster's content changes: only that row is redone
    redo = run_tiny(cfg, crop=192, model_config=other_model)
    assert redo["n_computed"] == 1 and redo["n_reused"] == 5  # unchanged corrupt file: reused
    assert table(cfg, "poster")[1]["status"].tolist()[5] == "failed"


def test_image_determinism_and_worker_processes(tmp_path: Path) -> None:
    a, b = image_world(tmp_path / "a"), image_world(tmp_path / "b")
    run_tiny(a, num_workers=0)
    run_tiny(b, num_workers=2, batch_size=3)
    np.testing.assert_allclose(table(a, "poster")[0], table(b, "poster")[0], atol=1e-6)
    pd.testing.assert_frame_equal(same_machine_free(table(a, "poster")[1]),
                                  same_machine_free(table(b, "poster")[1]))


def test_image_incremental_new_movies(tmp_path: Path) -> None:
    cfg = image_world(tmp_path / "inc")
    run_tiny(cfg)
    write_movies(cfg, [1, 2, 3, 4, 5, 6, 7, 8, 9])
    save_poster(cfg, 8, poster(8))
    save_poster(cfg, 9, poster(9, size=(33, 47)))
    result = run_tiny(cfg)
    assert result["n_computed"] == 2 and result["n_reused"] == 6
    fresh = image_world(tmp_path / "fresh")
    write_movies(fresh, [1, 2, 3, 4, 5, 6, 7, 8, 9])
    save_poster(fresh, 8, poster(8))
    save_poster(fresh, 9, poster(9, size=(33, 47)))
    run_tiny(fresh)
    np.testing.assert_allclose(table(cfg, "poster")[0], table(fresh, "poster")[0], atol=1e-6)
    assert table(cfg, "poster")[2]["input_hash"] == table(fresh, "poster")[2]["input_hash"]


def test_shards_merge_equal_single_run(tmp_path: Path) -> None:
    single, sharded = image_world(tmp_path / "single"), image_world(tmp_path / "sharded")
    run_tiny(single)
    run_tiny(sharded, shard=(0, 3))
    run_tiny(sharded, shard="2/3")
    with pytest.raises(ValueError, match="complete"):
        merge_shards(sharded, "poster")
    part = run_tiny(sharded, shard=(1, 3))
    assert part["n_rows"] == 2
    merged = merge_shards(sharded, "poster")
    assert merged["status"] == "merged"
    s_emb, s_index, s_meta = table(single, "poster")
    m_emb, m_index, m_meta = table(sharded, "poster")
    np.testing.assert_allclose(s_emb, m_emb, atol=1e-6)
    pd.testing.assert_frame_equal(same_machine_free(s_index), same_machine_free(m_index))
    assert s_meta["input_hash"] == m_meta["input_hash"] and m_meta["failures"] == s_meta["failures"]
    assert run_tiny(sharded)["status"] == "up to date"
    with pytest.raises(ValueError):
        outputs.check_shard((3, 3))


def test_default_workers_cpu_and_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    for cores, cpu, cuda in ((1, 1, 1), (2, 2, 1), (16, 2, 8)):
        monkeypatch.setattr(image.os, "cpu_count", lambda c=cores: c)
        assert (image.default_num_workers("cpu"), image.default_num_workers("cuda")) == (cpu, cuda)


def test_image_encoder_streams_posters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first batch arrives after decoding only its own posters (never the whole catalog)."""
    cfg = image_world(tmp_path)
    paths = image.poster_inputs(cfg, outputs.read_catalog(cfg))[0]
    loaded: list[Path] = []
    real = image.load_poster
    monkeypatch.setattr(image, "load_poster", lambda p, prep: loaded.append(p) or real(p, prep))
    encoder = image.ImageEncoder(transformers.ResNetModel(tiny_resnet()), paths,
                                 image.Preprocessing(), batch_size=2, num_workers=0, device="cpu")
    batches = encoder.encode(np.arange(5))
    first = next(batches)
    assert first.rows.tolist() == [0, 1] and len(loaded) == 2
    assert [b.rows.tolist() for b in batches] == [[2, 3], [4]] and len(loaded) == 5


def test_local_weights_dir_is_loaded_and_hashed(tmp_path: Path) -> None:
    cfg = image_world(tmp_path / "w")
    torch.manual_seed(0)
    model = transformers.ResNetModel(tiny_resnet()).eval()
    weights = tmp_path / "weights"
    model.save_pretrained(weights)
    result = image.run(cfg, model_id="tiny-resnet", weights_dir=weights, num_workers=0,
                       random_init=False, precision="fp32")
    emb, _, meta = table(cfg, "poster")
    assert result["weights"] == outputs.sha256_file(weights / "model.safetensors")
    assert meta["weights_path"] == str(weights) and meta["model_id"] == "tiny-resnet"
    pixels = torch.from_numpy(image.load_poster(artifacts.path(cfg, "posters_dir") / "3.jpg"))
    with torch.inference_mode():
        direct = model(pixel_values=pixels[None]).pooler_output.flatten(1).numpy()[0]
    np.testing.assert_allclose(emb[2], direct, atol=1e-5)
    with pytest.raises(WeightsUnavailableError, match="config.json"):
        image.run(cfg, weights_dir=tmp_path / "posters-not-weights", random_init=False)


def test_real_resnet50_config_on_two_images(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Sample mode: ResNet-50 with a seeded random init by default, labelled so."""
    cfg = make_cfg(tmp_path)
    write_movies(cfg, [10, 20])
    save_poster(cfg, 10, poster(10, size=(120, 180)))
    save_poster(cfg, 20, poster(20, size=(200, 150), mode="L"))
    result = image.run(cfg, num_workers=0, batch_size=2)
    emb, index, meta = table(cfg, "poster")
    assert emb.shape == (2, 2048) and meta["model_id"] == "ResNet-50 (random init)"
    assert meta["config_source"] == "microsoft/resnet-50"
    assert meta["weights_origin"] == "sample mode"
    assert result["weights"] == "random" and index["has_poster"].all()
    assert np.isfinite(emb).all() and (emb >= 0).all()  # pooled after ReLU
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "ResNet-50 (random init)" in summary and "2 vectors computed" in summary


def offline_hub(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model hub switched off; ``cache`` (empty unless filled) is the Hugging Face cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))


def real_cfg(root: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """A real (non-sample) dataset with two posters; the hub switched off, an empty HF cache."""
    offline_hub(root / "hf-cache", monkeypatch)
    cfg = make_cfg(root, "ml-latest-small")
    write_movies(cfg, [1, 2])
    save_poster(cfg, 1, poster(1))
    save_poster(cfg, 2, poster(2, mode="L"))
    return cfg


def test_real_dataset_without_weights_stops_with_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = real_cfg(tmp_path, monkeypatch)
    with pytest.raises(WeightsUnavailableError) as caught:
        image.run(cfg, num_workers=0)
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in message
    for needed in ("microsoft/resnet-50", "weights_dir=", "HF_HUB_OFFLINE", "config.json",
                   "random_init=True"):
        assert needed in message
    assert not artifacts.path(cfg, "embeddings", modality="poster").exists()
    status = cli.main(["03", "--data-dir", str(tmp_path), "--dataset", cfg.dataset,
                       "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.count("\n") == 0 and "weights_dir=" in err  # no traceback


def test_real_dataset_explicit_random_init_is_labelled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = real_cfg(tmp_path, monkeypatch)
    image.run(cfg, random_init=True, num_workers=0, precision="fp32")
    _, _, meta = table(cfg, "poster")
    assert meta["model_id"] == "ResNet-50 (random init)" and meta["weights"] == "random"
    assert meta["weights_origin"] == "random_init=True"
    assert "random init" in capsys.readouterr().out
    weights = tmp_path / "weights"
    transformers.ResNetModel(tiny_resnet()).save_pretrained(weights)
    image.run(cfg, weights_dir=weights, num_workers=0, precision="fp32")  # a real run: real weights
    _, _, meta = table(cfg, "poster")
    assert meta["model_id"] == "microsoft/resnet-50" and meta["weights_origin"] == "folder"
    assert meta["weights"] == outputs.sha256_file(weights / "model.safetensors")


def test_weights_come_from_the_cache_then_the_hub(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "snapshot"
    transformers.ResNetModel(tiny_resnet()).save_pretrained(folder)
    calls: list[bool] = []

    def fake_snapshot(model_id: str, *, allow_patterns: object = None,
                      local_files_only: bool = False) -> str:
        calls.append(local_files_only)
        if local_files_only and not cached:
            raise huggingface_hub.utils.LocalEntryNotFoundError("not cached")
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    cached = True
    assert weights.locate("org/model") == weights.Located(folder, "cache") and calls == [True]
    cached, calls[:] = False, []
    assert weights.locate("org/model") == weights.Located(folder, "hub") and calls == [True, False]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls[:] = []
    found = weights.locate("org/model")
    assert found.folder is None and "HF_HUB_OFFLINE" in found.origin and calls == [True]


def test_missing_inputs_name_the_notebook(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    with pytest.raises(MissingArtifactError, match="01"):
        run_tiny(cfg)
    write_movies(cfg, [1])
    with pytest.raises(MissingArtifactError, match="02"):
        run_tiny(cfg)
    with pytest.raises(MissingArtifactError, match="02"):
        text.run(cfg)


# ---------------------------------------------------------------------------------- text stage


def test_chunk_spans_cover_every_token() -> None:
    for n in (0, 1, 5, 16, 17, 100):
        spans = text.chunk_spans(n, 16, 4)
        covered = sorted({t for a, b in spans for t in range(a, b)})
        assert covered == list(range(n)) and all(b - a <= 16 for a, b in spans)
        assert all(a2 == b1 - 4 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False))
    with pytest.raises(ValueError):
        text.chunk_spans(10, 4, 4)


LONG = ("A retired lighthouse keeper discovers that the ships he once guided were never real, "
        "and sets out across a frozen sea to find the harbour that appears only on old maps. "
        "Along the way he meets a cartographer who has been erasing towns from the world.")


def text_world(root: Path, dataset: str = "sample") -> Config:
    cfg = make_cfg(root, dataset)
    write_movies(cfg, [1, 2, 3, 4, 5, 6])
    synopses = pd.DataFrame({
        "movieId": np.array([1, 2, 3, 4, 6], dtype=np.int32),
        "synopsis": ["A dog learns to surf.", LONG, "", "   ", "Two chefs fall in love."],
        "source": ["tmdb"] * 5,
    })
    artifacts.write_parquet(synopses, artifacts.path(cfg, "synopses"))
    return cfg


@pytest.fixture(scope="module")
def minilm() -> tuple[object, object]:
    model_dir = text.default_model_dir()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModel.from_pretrained(str(model_dir)).eval()
    return tokenizer, model


def direct_embedding(tokenizer: object, model: object, ids: list[int]) -> np.ndarray:
    with torch.inference_mode():
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]  # type: ignore[operator]
    return hidden.mean(0).numpy()


def test_text_stage_real_minilm(tmp_path: Path, minilm: tuple[object, object]) -> None:
    tokenizer, model = minilm
    cfg = text_world(tmp_path)
    result = text.run(cfg, batch_size=2, precision="fp32")
    emb, index, meta = table(cfg, "text")
    assert emb.shape == (6, 384) and emb.dtype == np.float32
    assert index["has_text"].tolist() == [True, True, False, False, False, True]
    assert not emb[2:5].any() and result["n_present"] == 3
    np.testing.assert_allclose(np.linalg.norm(emb[[0, 1, 5]], axis=1), 1.0, atol=1e-5)
    assert meta["max_length"] == 256 and meta["normalized"] is True
    ids = tokenizer("A dog learns to surf.")["input_ids"]  # type: ignore[operator]
    ref = direct_embedding(tokenizer, model, ids)
    np.testing.assert_allclose(emb[0], ref / np.linalg.norm(ref), atol=1e-5)
    assert text.run(cfg, batch_size=2, precision="fp32")["status"] == "up to date"
    assert text.run(cfg, stride=16, precision="fp32")["n_computed"] == 3  # chunking changed


def test_text_default_model_per_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Sample: the packaged MiniLM. Real data: bert-base-uncased from the cache (or the hub);
    offline without it, the packaged MiniLM, said in one line and in the metadata. A model the
    user names is never replaced."""
    cache = tmp_path / "hf-cache"
    offline_hub(cache, monkeypatch)
    sample = text.resolve_text_model(make_cfg(tmp_path))
    assert (sample.name, sample.origin, sample.note) == (text.MINILM_NAME, "packaged", None)
    real = text_world(tmp_path / "real", "ml-latest-small")
    text.run(real, precision="fp32")
    meta = table(real, "text")[2]
    notice = [line for line in capsys.readouterr().out.splitlines() if "bert-base-uncased" in line]
    assert len(notice) == 1 and "all-MiniLM-L6-v2" in notice[0] and "HF_HUB_OFFLINE" in notice[0]
    assert meta["model_id"] == text.MINILM_NAME and meta["model_fallback"] == notice[0]
    with pytest.raises(WeightsUnavailableError, match="model_id=<folder"):
        text.run(real, model_id="org/not-cached")
    snapshot = cache / "models--bert-base-uncased" / "snapshots" / "0123abcd"
    tiny_bert = transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=32)
    transformers.BertModel(tiny_bert).save_pretrained(snapshot)
    for name in text.TOKENIZER_FILES:
        if (text.default_model_dir() / name).exists():
            shutil.copy(text.default_model_dir() / name, snapshot / name)
    (cache / "models--bert-base-uncased" / "refs").mkdir()
    (cache / "models--bert-base-uncased" / "refs" / "main").write_text("0123abcd")
    assert text.run(real, precision="fp32")["n_computed"] == 3  # another model: recomputed
    emb, _, meta = table(real, "text")
    assert meta["model_id"] == "bert-base-uncased" and meta["model_origin"] == "cache"
    assert emb.shape == (6, 16) and meta["model_fallback"] is None


def test_text_bf16_matches_fp32_and_is_recorded(tmp_path: Path) -> None:
    cfg = text_world(tmp_path)
    text.run(cfg, precision="fp32")
    exact = table(cfg, "text")[0]
    assert text.run(cfg, precision="bf16")["n_computed"] == 3  # another precision: recompute
    emb, _, meta = table(cfg, "text")
    assert meta["precision"] == "bf16"
    present = [0, 1, 5]
    cosine = (emb[present] * exact[present]).sum(1)  # both unit length
    assert cosine.min() > 0.999 and not np.array_equal(emb, exact)


def test_precision_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmlens import capabilities

    for fast, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(capabilities, "cpu_has_fast_bf16", lambda fast=fast: fast)
        assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", "cpu")


def test_poster_bf16_matches_fp32_and_is_recorded(tmp_path: Path) -> None:
    cfg = image_world(tmp_path)
    first = run_tiny(cfg)
    exact = table(cfg, "poster")[0]
    assert run_tiny(cfg, precision="bf16")["n_computed"] == first["n_computed"]  # recomputed
    emb, index, meta = table(cfg, "poster")
    assert meta["precision"] == "bf16" and not np.array_equal(emb, exact)
    a, b = emb[index["has_poster"].to_numpy()], exact[index["has_poster"].to_numpy()]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert len(a) == 5 and cosine.min() > 0.99


def test_long_text_is_chunked_and_averaged(tmp_path: Path,
                                           minilm: tuple[object, object]) -> None:
    tokenizer, model = minilm
    cfg = text_world(tmp_path)
    text.run(cfg, max_length=16, stride=4, batch_size=3, normalize=False, precision="fp32")
    emb = table(cfg, "text")[0]
    tokens = tokenizer(LONG, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    assert len(tokens) > 40
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id  # type: ignore[attr-defined]
    chunks, start = [], 0
    while True:  # windows of 14 text tokens, 4 of overlap, written out independently
        chunks.append(tokens[start:start + 14])
        if start + 14 >= len(tokens):
            break
        start += 10
    assert [t for c in chunks for t in c[4 if c is not chunks[0] else 0:]] == tokens
    ref = np.mean([direct_embedding(tokenizer, model, [cls, *c, sep]) for c in chunks], axis=0)
    np.testing.assert_allclose(emb[1], ref, atol=1e-5)


def test_text_encoder_streams_blocks(minilm: tuple[object, object],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Texts are tokenised block by block: the first batch needs only its own block."""
    tokenizer, model = minilm
    monkeypatch.setattr(text, "TEXTS_PER_BLOCK", 2)
    encoder = text.TextEncoder(model, tokenizer, ["One.", "Two.", "Three.", None, "Five."],
                               max_length=32, stride=4, batch_size=8, normalize=True,
                               device="cpu")
    seen: list[str] = []
    real = encoder.chunks
    monkeypatch.setattr(encoder, "chunks", lambda t: seen.extend(t) or real(t))
    batches = encoder.encode(np.arange(5))
    assert next(batches).rows.tolist() == [0, 1] and seen == ["One.", "Two."]
    rest = list(batches)
    assert [b.rows.tolist() for b in rest] == [[2, 3], [4]]
    assert rest[0].errors == [None, "no tokens"]


def test_text_batch_plan_caps_chunks_and_tokens(minilm: tuple[object, object]) -> None:
    tokenizer, model = minilm
    encoder = text.TextEncoder(model, tokenizer, [], max_length=32, stride=4, batch_size=3,
                               normalize=True, device="cpu")
    encoder.cpu_batch_tokens = 10  # (chunks in the batch) x (longest chunk) <= 10
    lengths = [5, 2, 3, 2, 4, 1]
    assert encoder.plan_batches(lengths) == [[5, 1, 3], [2, 4], [0]]
    assert encoder.plan_batches([20, 1]) == [[1], [0]]  # a chunk over the cap goes alone
    encoder.device = "cuda"  # no token cap there: only batch_size
    assert encoder.plan_batches(lengths) == [[5, 1, 3], [2, 4, 0]]


def test_text_shards_merge(tmp_path: Path) -> None:
    single, sharded = text_world(tmp_path / "one"), text_world(tmp_path / "two")
    text.run(single, precision="fp32")
    text.run(sharded, shard=(0, 2), precision="fp32")
    text.run(sharded, shard=(1, 2), precision="fp32")
    assert text.run(sharded, merge=True)["status"] == "merged"
    np.testing.assert_allclose(table(single, "text")[0], table(sharded, "text")[0], atol=1e-5)
    pd.testing.assert_frame_equal(same_machine_free(table(single, "text")[1]),
                                  same_machine_free(table(sharded, "text")[1]))


# ------------------------------------------------------------------------ PCA and neighbours


def test_pca_reduce_against_svd() -> None:
    rng = np.random.default_rng(0)
    emb = (rng.normal(size=(50, 6)) * np.array([5, 3, 1, 0.5, 0.1, 0.01])).astype(np.float32)
    has = np.ones(50, dtype=bool)
    has[[3, 7]] = False
    emb[~has] = 0.0
    reduced, info = reduce.pca_reduce(emb, has, 3)
    x = emb[has].astype(np.float64) - emb[has].mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    np.testing.assert_allclose(info["explained_variance_ratio"], (s**2 / (s**2).sum())[:3],
                               atol=1e-5)
    np.testing.assert_allclose(np.abs(reduced[has]), np.abs(x @ vt[:3].T), atol=1e-4)
    assert reduced.dtype == np.float32 and not reduced[~has].any()
    with pytest.raises(ValueError):
        reduce.pca_reduce(emb, has, 7)


def test_pca_option_writes_reduced_table(tmp_path: Path) -> None:
    cfg = image_world(tmp_path)
    result = run_tiny(cfg, pca_dim=4)
    folder = artifacts.path(cfg, "embeddings_pca", modality="poster", dim="4")
    reduced = np.load(folder / "embeddings.npy")
    assert reduced.shape == (7, 4) and not reduced[5:].any()
    assert np.load(folder / "components.npy").shape == (4, 16)
    assert len(result["pca"]["explained_variance_ratio"]) == 4


def test_neighbours_projection_and_genre_agreement() -> None:
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0], [5, 5]], dtype=np.float32)
    has = np.array([True, True, True, True, False])
    near = neighbours.nearest(emb, has, 0, k=3)
    assert near["row"].tolist() == [1, 2, 3] and near["similarity"].iloc[0] > 0.99
    with pytest.raises(ValueError):
        neighbours.nearest(emb, has, 4)
    coords = neighbours.project_2d(emb, has)
    assert coords.shape == (5, 2) and np.isnan(coords[4]).all() and np.isfinite(coords[:4]).all()
    rng = np.random.default_rng(1)
    names = ["Drama", "Comedy", "Action", "Horror", "Sci-Fi"]
    genres = [list(rng.choice(names, size=rng.integers(1, 3), replace=False)) for _ in range(200)]
    onehot = np.array([[g in gs for g in names] for gs in genres], dtype=np.float32)
    all_rows = np.ones(200, dtype=bool)
    aligned = neighbours.genre_agreement(onehot, all_rows, genres, n_pairs=3000)
    noise = neighbours.genre_agreement(rng.normal(size=(200, 8)), all_rows, genres, n_pairs=3000)
    assert aligned["spearman"] > 0.8 and abs(noise["spearman"]) < 0.15
    assert aligned["mean_cosine_shared_genre"] > aligned["mean_cosine_no_shared_genre"]


def test_unchanged_posters_are_not_rehashed(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = image_world(tmp_path)
    ids = outputs.read_catalog(cfg)
    paths, hashes, stats = image.poster_inputs(cfg, ids)
    assert hashes[6] is None and stats[6] is None and hashes[5] is not None
    assert hashes[0] == outputs.sha256_file(paths[0])
    run_tiny(cfg)
    calls: list[Path] = []
    real = outputs.sha256_file
    monkeypatch.setattr(outputs, "sha256_file", lambda p: calls.append(p) or real(p))
    assert image.poster_inputs(cfg, ids)[1] == hashes and calls == []
    save_poster(cfg, 2, poster(77, mode="L"))
    assert image.poster_inputs(cfg, ids)[1][1] != hashes[1] and len(calls) == 1
