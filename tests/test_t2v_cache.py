"""t2v.cache: `t2v prepare` and CachedLatentDataset, on the tiny Wan and samples/train/."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from t2v.buckets import BucketBatchSampler
from t2v.cache import (
    CachedLatentDataset,
    CacheError,
    ModelRef,
    PrepareConfig,
    collate_cached,
    prepare_cache,
)
from t2v.data import DataConfig, DataError, VideoTextDataset, read_samples
from t2v.families import get_family
from t2v.tiny import make_tiny

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "samples" / "train"
BUCKET = (9, 32, 48)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    """The tiny Wan and LTX, where ``tiny://NAME`` resolves for this module (and CLI runs in it)."""
    root = tmp_path_factory.mktemp("tiny-cache")
    make_tiny(root / "t2v", families=["wan", "ltx"])
    mp = pytest.MonkeyPatch()
    mp.setenv("DENSECAP_TINY_DIR", str(root))
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def wan(tiny_env):
    spec = get_family("wan")
    return spec, spec.load_components("tiny://wan", transformer=False)


def _cfg(data_path=TRAIN, **over) -> PrepareConfig:
    data = {"path": str(data_path), "buckets": [list(BUCKET)], "fps": 8, "long_clips": "windows",
            "max_windows_per_clip": 2, "probe_workers": 1}
    data.update(over.pop("data", {}))
    return PrepareConfig(model=ModelRef(family="wan", id="tiny://wan"), data=DataConfig(**data),
                         device="cpu", **over)


def _index(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "index.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def prepared(wan, tmp_path_factory):
    """A cache of samples/train/ (3 clips x 2 windows = 6 samples) in 2 shards."""
    root = tmp_path_factory.mktemp("cache") / "c"
    result = prepare_cache(_cfg(shard_size=4), root, components=wan[1])
    return root, result


# --------------------------------------------------------------------------------------------------


def test_round_trip_equals_fresh_encoding(wan, prepared):
    spec, c = wan
    root, result = prepared
    assert (result.total, result.cached, result.present, result.failed) == (6, 6, 0, 0)
    assert result.shards_written == 2 and result.empty_prompt
    assert sorted(p.name for p in (root / "shards").iterdir()) == ["shard-00001.safetensors", "shard-00002.safetensors"]
    info = json.loads((root / "cache.json").read_text())
    assert info["complete"] and info["samples"] == 6 and info["keyed_on"]["model"]["id"] == "tiny://wan"

    ds = VideoTextDataset(read_samples(TRAIN), _cfg().data)
    cache = CachedLatentDataset(root, family="wan")
    assert len(cache) == len(ds) == 6
    entries = _index(root)
    for i in range(len(ds)):  # the index is in dataset order
        item = ds[i]
        assert entries[i]["sample_key"] == ds.sample_key(i)
        assert entries[i]["frame_times"] == item["frame_times"]
        got = cache[i]
        dist = spec.encode_video(c, item["video"][None])
        cond = spec.encode_prompts(c, [item["caption"]])
        assert torch.equal(got["mean"], dist["mean"][0]) and torch.equal(got["logvar"], dist["logvar"][0])
        assert got["mean"].shape == (4, 3, 4, 6) and got["mean"].dtype == torch.float32
        assert set(got["cond"]) == {"prompt_embeds"}
        assert got["cond"]["prompt_embeds"].shape == (512, 32)
        assert torch.equal(got["cond"]["prompt_embeds"], cond["prompt_embeds"][0])
        assert got["caption"] == item["caption"] and got["bucket"] == BUCKET and got["source"] == item["source"]
    ds.close()  # no open PyAV readers left for a forked DataLoader worker to free (see _close_readers)
    assert torch.equal(cache.empty_cond()["prompt_embeds"], spec.encode_prompts(c, [""])["prompt_embeds"][0])
    # the zero padding of Wan's embeddings is not stored
    from safetensors import safe_open

    with safe_open(str(root / "shards" / entries[0]["shard"]), framework="pt") as f:
        stored = f.get_slice(f"{entries[0]['key']}.cond.prompt_embeds").get_shape()
    assert stored[0] < 512 and stored[1] == 32


def test_batched_bf16_and_decode_workers(wan, prepared, tmp_path):
    root, _ = prepared
    res = prepare_cache(_cfg(batch_size=3, store_dtype="bfloat16", empty_prompt=False, decode_workers=2),
                        tmp_path / "b", components=wan[1])
    assert res.cached == 6 and res.shards_written == 1 and not (tmp_path / "b" / "empty_prompt.safetensors").exists()
    one, many = CachedLatentDataset(root), CachedLatentDataset(tmp_path / "b")
    assert one.keys() == many.keys()
    for i in range(len(one)):
        a, b = one[i], many[i]
        assert b["mean"].dtype == torch.bfloat16
        torch.testing.assert_close(b["mean"].float(), a["mean"], rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(b["cond"]["prompt_embeds"].float(), a["cond"]["prompt_embeds"], rtol=1e-2, atol=1e-2)
    with pytest.raises(CacheError, match="empty_prompt: true"):
        many.empty_cond()


def test_resume_recomputes_only_what_is_missing(wan, prepared, tmp_path):
    c = wan[1]
    root = tmp_path / "r"
    cfg = _cfg(shard_size=2)

    class Killed(Exception):
        pass

    def kill_after_first_shard(msg: str) -> None:
        if msg.startswith("shard-00001"):
            raise Killed

    with pytest.raises(Killed):
        prepare_cache(cfg, root, components=c, progress=kill_after_first_shard)
    assert len(_index(root)) == 2
    assert not json.loads((root / "cache.json").read_text())["complete"]
    assert len(CachedLatentDataset(root)) == 2  # a partial cache is readable
    res = prepare_cache(cfg, root, components=c)
    assert (res.cached, res.present) == (4, 2)
    assert [e["key"] for e in _index(root)] == [e["key"] for e in _index(prepared[0])]

    # lose the last index line, a whole shard, and leave a torn line behind
    lines = (root / "index.jsonl").read_text().splitlines(keepends=True)
    by_shard = {}
    for e in map(json.loads, lines):
        by_shard.setdefault(e["shard"], []).append(e["key"])
    last = json.loads(lines[-1])
    victim = next(s for s in sorted(by_shard) if s != last["shard"])
    (root / "shards" / victim).unlink()
    (root / "index.jsonl").write_text("".join(lines[:-1]) + '{"key": "torn', encoding="utf-8")
    missing = 1 + len(by_shard[victim])
    res = prepare_cache(cfg, root, components=c)
    assert (res.cached, res.present, res.failed) == (missing, 6 - missing, 0)
    keys = [e["key"] for e in _index(root)]
    assert len(keys) == len(set(keys)) == 6
    assert keys == [e["key"] for e in _index(prepared[0])]
    referenced = {e["shard"] for e in _index(root)}
    assert {p.name for p in (root / "shards").iterdir()} == referenced  # orphans and temp files removed
    a, b = CachedLatentDataset(root), CachedLatentDataset(prepared[0])
    for i in range(6):
        assert torch.equal(a[i]["mean"], b[i]["mean"])
        assert torch.equal(a[i]["cond"]["prompt_embeds"], b[i]["cond"]["prompt_embeds"])
    # nothing left to do: the models are not needed
    res = prepare_cache(cfg, root, components=None)
    assert (res.cached, res.present) == (0, 6)


def test_other_settings_are_refused_naming_the_difference(wan, prepared):
    root, _ = prepared
    with pytest.raises(CacheError, match=r"data\.buckets: \[\[9, 32, 48\]\] then, \[\[9, 32, 32\]\] now"):
        prepare_cache(_cfg(data={"buckets": [[9, 32, 32]]}), root, components=wan[1])
    other = _cfg()
    other.model = ModelRef(family="wan", id="Wan-AI/Wan2.1-T2V-14B-Diffusers")
    with pytest.raises(CacheError, match=r"model\.id: \"tiny://wan\" then, \"Wan-AI/Wan2.1-T2V-14B-Diffusers\" now"):
        prepare_cache(other, root, components=wan[1])
    with pytest.raises(CacheError, match="store_dtype"):
        prepare_cache(_cfg(store_dtype="bfloat16"), root, components=wan[1])
    # settings that do not change what is stored are not part of the key
    res = prepare_cache(_cfg(batch_size=2, shard_size=1, data={"caption_dropout": 0.5}), root, components=None)
    assert (res.cached, res.present) == (0, 6)


def test_a_cache_that_holds_nothing_can_be_rekeyed(wan, tmp_path):
    with pytest.raises(DataError, match="no such dataset"):
        prepare_cache(_cfg(tmp_path / "typo"), tmp_path / "c", components=wan[1])
    assert not (tmp_path / "c" / "cache.json").exists()

    def stop(msg: str) -> None:
        if msg.startswith("6 of 6 samples"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # killed before the first shard
        prepare_cache(_cfg(data={"buckets": [[9, 32, 32]]}), tmp_path / "c", components=wan[1], progress=stop)
    assert (tmp_path / "c" / "cache.json").exists()
    res = prepare_cache(_cfg(shard_size=6), tmp_path / "c", components=wan[1])
    assert res.cached == 6 and res.empty_prompt


def test_not_a_cache_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match="not empty"):
        prepare_cache(_cfg(), tmp_path)
    with pytest.raises(CacheError, match="not a latent cache"):
        CachedLatentDataset(tmp_path)


def test_bad_clips_are_reported_and_the_rest_cached(wan, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "broken.mp4").write_bytes(random.Random(0).randbytes(20000))
    rows = [json.loads(line) for line in (TRAIN / "captions.jsonl").read_text().splitlines()]
    for r in rows:
        r["video"] = str(TRAIN / r["video"])
    rows.insert(1, {"video": "broken.mp4", "start": None, "end": None, "caption": "A bird."})
    (data / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # one clip fails at decode time (after indexing)
    orig = VideoTextDataset.__getitem__

    def flaky(self, ref):
        if self.samples[ref[0]].spec.video.endswith("cockatoo_crest.mp4"):
            raise DataError("captions.jsonl:4: cockatoo_crest.mp4: decode failed")
        return orig(self, ref)

    monkeypatch.setattr(VideoTextDataset, "__getitem__", flaky)
    res = prepare_cache(_cfg(data, data={"long_clips": "head"}), tmp_path / "c", components=wan[1])
    assert (res.total, res.cached, res.failed) == (3, 2, 2)
    errors = [json.loads(line) for line in (tmp_path / "c" / "errors.jsonl").read_text().splitlines()]
    assert [(e["source"].rsplit("/", 1)[-1], e["stage"]) for e in errors] == [
        ("captions.jsonl:2", "index"), ("captions.jsonl:4", "decode")]
    assert "broken.mp4" in errors[0]["reason"] and "decode failed" in errors[1]["reason"]
    assert len(CachedLatentDataset(tmp_path / "c")) == 2
    info = json.loads((tmp_path / "c" / "cache.json").read_text())
    assert not info["complete"] and info["failed"] == 2
    # a later run retries the failed clip and errors.jsonl reports that run only
    monkeypatch.setattr(VideoTextDataset, "__getitem__", orig)
    res = prepare_cache(_cfg(data, data={"long_clips": "head"}), tmp_path / "c", components=wan[1])
    assert (res.cached, res.present, res.failed) == (1, 2, 1)
    assert len((tmp_path / "c" / "errors.jsonl").read_text().splitlines()) == 1
    info = json.loads((tmp_path / "c" / "cache.json").read_text())
    assert not info["complete"] and info["failed"] == 1 and info["samples"] == 3  # broken.mp4 is still listed
    # nothing usable: the dataset's own error
    (data / "captions.jsonl").write_text(json.dumps(rows[1]) + "\n")
    with pytest.raises(DataError, match="no video files could be read"):
        prepare_cache(_cfg(data), tmp_path / "d", components=wan[1])


def test_stale_samples_are_dropped(wan, prepared, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(TRAIN, data)
    root = tmp_path / "c"
    assert prepare_cache(_cfg(data), root, components=wan[1]).cached == 6
    lines = (data / "captions.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["caption"] = "A white cockatoo leans towards the camera."
    (data / "captions.jsonl").write_text("\n".join([json.dumps(row), lines[1]]) + "\n")
    res = prepare_cache(_cfg(data), root, components=wan[1])
    assert (res.total, res.cached, res.present, res.stale) == (4, 2, 2, 4)
    cache = CachedLatentDataset(root)
    assert [cache[i]["caption"] for i in range(4)][:2] == [row["caption"]] * 2
    # a clip unreadable for now keeps its cached samples; once it is back (a new file), they are redone
    clip = data / json.loads(lines[1])["video"]
    good = clip.read_bytes()
    clip.write_bytes(random.Random(1).randbytes(5000))
    res = prepare_cache(_cfg(data), root, components=wan[1])
    assert (res.total, res.cached, res.failed, res.stale) == (2, 0, 1, 0)
    assert len(CachedLatentDataset(root)) == 4
    assert not json.loads((root / "cache.json").read_text())["complete"]
    clip.write_bytes(good)
    res = prepare_cache(_cfg(data), root, components=wan[1])
    assert (res.total, res.cached, res.present, res.failed, res.stale) == (4, 2, 2, 0, 2)
    assert len(CachedLatentDataset(root)) == 4


def test_dataset_items_collate_and_compatibility(prepared):
    root, _ = prepared
    cache = CachedLatentDataset(root)
    assert cache.sample_buckets() == [BUCKET] * 6 and cache.bucket_counts() == {BUCKET: 6}
    batch = collate_cached([cache[0], cache[3], cache[5]])
    assert batch["mean"].shape == batch["logvar"].shape == (3, 4, 3, 4, 6)
    assert batch["cond"]["prompt_embeds"].shape == (3, 512, 32)
    assert batch["bucket"] == BUCKET and len(batch["key"]) == 3 and batch["position"] is None
    cache.check_compatible("wan", "tiny://wan")
    with pytest.raises(CacheError, match="made with the wan family"):
        cache.check_compatible("ltx")
    with pytest.raises(CacheError, match="made with tiny://wan"):
        cache.check_compatible("wan", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    with pytest.raises(CacheError, match="made for the wan family"):
        CachedLatentDataset(root, family="cogvideox")
    with pytest.raises(ValueError, match="mixes buckets"):
        collate_cached([cache[0], {**cache[1], "bucket": (9, 32, 32)}])
    # caption dropout swaps in the empty prompt, seeded by (seed, epoch, index)
    drop = CachedLatentDataset(root, caption_dropout=1.0)
    item = drop[2]
    assert item["caption"] == "" and item["caption_dropped"]
    assert torch.equal(item["cond"]["prompt_embeds"], cache.empty_cond()["prompt_embeds"])
    half = CachedLatentDataset(root, caption_dropout=0.5, seed=3)
    assert [half[(i, 1, 0)]["caption_dropped"] for i in range(6)] == [half[(i, 1, 0)]["caption_dropped"]
                                                                        for i in range(6)]


def test_dataloader_with_workers(prepared):
    import gc

    gc.collect()  # video readers other tests left as garbage must not be freed in a forked worker
    root, _ = prepared
    cache = CachedLatentDataset(root)
    cache[0]  # a handle opened in the parent must not leak into the workers
    sampler = BucketBatchSampler(cache, batch_size=2, seed=0)
    loader = torch.utils.data.DataLoader(cache, batch_sampler=sampler, collate_fn=collate_cached, num_workers=2)
    seen = []
    for batch in loader:
        assert batch["mean"].shape == (2, 4, 3, 4, 6) and batch["cond"]["prompt_embeds"].shape == (2, 512, 32)
        seen += batch["key"]
        state = sampler.state_dict(after=batch)
    assert sorted(seen) == sorted(cache.keys())
    assert state["epoch"] == 1 and state["batches_consumed"] == 0
    ref = {k: cache[i]["mean"] for i, k in enumerate(cache.keys())}
    for batch in torch.utils.data.DataLoader(cache, batch_size=3, collate_fn=collate_cached, num_workers=2):
        for k, m in zip(batch["key"], batch["mean"]):
            assert torch.equal(m, ref[k])


def test_ltx_mask_round_trip(tiny_env, tmp_path):
    """LTX's conditioning has a boolean attention mask and T5 outputs past the prompt (not zeros):
    both come back exactly."""
    spec = get_family("ltx")
    c = spec.load_components("tiny://ltx", transformer=False)
    cfg = PrepareConfig(model=ModelRef(family="ltx", id="tiny://ltx"), device="cpu",
                        data=DataConfig(path=str(TRAIN), buckets=[[9, 32, 64]], fps=8, probe_workers=1))
    assert prepare_cache(cfg, tmp_path / "c", components=c).cached == 3
    cache = CachedLatentDataset(tmp_path / "c", family="ltx")
    for i in range(3):
        item = cache[i]
        cond = spec.encode_prompts(c, [item["caption"]])
        assert set(item["cond"]) == {"prompt_embeds", "prompt_attention_mask"}
        for name, t in cond.items():
            assert item["cond"][name].dtype == t.dtype and torch.equal(item["cond"][name], t[0])
    batch = collate_cached([cache[0], cache[2]])
    assert batch["cond"]["prompt_attention_mask"].shape == (2, 128) and batch["mean"].shape == (2, 8, 2, 1, 2)
    empty = cache.empty_cond()
    assert empty["prompt_attention_mask"].sum() == 1  # "" is one end-of-text token
    cache.check_compatible("ltx", "tiny://ltx")


def test_cli_end_to_end(tiny_env, tmp_path, monkeypatch):
    from t2v.cli import cli

    monkeypatch.chdir(REPO)  # configs/prepare/tiny.yaml reads samples/train relative to the repo
    out = tmp_path / "cache"
    result = CliRunner().invoke(cli, ["prepare", "--config", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "6 cached, 0 already present (skipped), 0 failed" in result.output
    assert f"cache: {out}" in result.output
    cache = CachedLatentDataset(out, family="wan")
    assert len(cache) == 6 and cache.complete
    result = CliRunner().invoke(cli, ["prepare", "--config", "tiny", "--out", str(out)])
    assert result.exit_code == 0 and "0 cached, 6 already present (skipped)" in result.output
    result = CliRunner().invoke(cli, ["prepare", "--config", "tiny", "--out", str(out), "--set", "data.fps=4"])
    assert result.exit_code == 1 and "error:" in result.output and "data.fps: 8.0 then, 4.0 now" in result.output
    result = CliRunner().invoke(cli, ["prepare", "--config", "nope"])
    assert result.exit_code == 1 and "presets: tiny, wan" in result.output
