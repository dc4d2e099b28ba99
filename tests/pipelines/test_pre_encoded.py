"""Pre-encoded shards: `curate export` with the training encoders writes latents and caption
features (read from image URIs too), the loader hands them over, and training from them equals
training with on-the-fly encoding. Then the same shards on Ray Train with 2 DDP ranks (gloo)."""

from __future__ import annotations

import json

import lance
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import coco_rows, samples_table
from training.loader import Loader, LoaderConfig, ShardDataset, decode_and_crop
from training.loop import TrainConfig, param_digest, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (tests/conftest.py)


@pytest.fixture(scope="module")
def encoder_dirs(tmp_path_factory, tiny_encoders):
    """The tiny random VAE and Qwen3 saved with save_pretrained: what production loads from disk."""
    d = tmp_path_factory.mktemp("encoders")
    tiny_encoders.vae.vae.save_pretrained(d / "vae")
    tiny_encoders.text.model.save_pretrained(d / "qwen3")
    tiny_encoders.text.tok.save_pretrained(d / "qwen3")
    return str(d / "vae"), str(d / "qwen3")


@pytest.fixture(scope="module")
def pre_encoded(tmp_path_factory, ray_session, coco_dir, encoder_dirs):
    """12 COCO photos (two only as image_uri, one of them without a recorded size) plus a row whose
    URI points nowhere, exported at 256 through `curate export --vae-path --text-encoder-path`."""
    rows = coco_rows(coco_dir, limit=12)
    files = sorted((coco_dir / "images").glob("*.jpg"))[:12]
    rows[1] = {**rows[1], "image": None, "image_uri": str(files[1])}
    rows[2] = {**rows[2], "image": None, "image_uri": f"file://{files[2]}", "width": None, "height": None}
    gone = {
        **rows[3],
        "id": "gone-0001",
        "source_key": "gone.jpg",
        "image": None,
        "image_uri": str(coco_dir / "images" / "no-such-photo.jpg"),
    }
    d = tmp_path_factory.mktemp("pre")
    src = d / "src.lance"
    lance.write_dataset(samples_table(rows + [gone]), str(src))
    out = d / "shards.lance"
    vae, text = encoder_dirs
    from cli.main import app

    res = CliRunner().invoke(
        app,
        [
            "export",
            "--dataset",
            str(src),
            "--out",
            str(out),
            "--resolution",
            "256",
            "--vae-path",
            vae,
            "--text-encoder-path",
            text,
            "--optional-rules",
        ],
    )
    assert res.exit_code == 0, res.output
    return {"src": str(src), "out": str(out), "rows": rows, "files": files, "gone": gone["id"]}


def test_export_writes_latents_and_features_of_the_loader_crop(pre_encoded, tiny_encoders, encoder_dirs):
    out, rows, files = pre_encoded["out"], pre_encoded["rows"], pre_encoded["files"]
    t = lance.dataset(out).to_table()
    assert t.num_rows == 12
    excluded = pq.read_table(f"{out}/_curation/export/excluded.parquet").to_pylist()
    assert len(excluded) == 1 and excluded[0]["id"] == pre_encoded["gone"]
    assert excluded[0]["reason"].startswith("unreadable_uri: FileNotFoundError")  # a clear reason, not a crash
    by_id = {r["id"]: r for r in t.to_pylist()}
    assert by_id[rows[1]["id"]]["image"] == files[1].read_bytes()  # bytes read from the URIs
    assert by_id[rows[2]["id"]]["image"] == files[2].read_bytes() and by_id[rows[2]["id"]]["width"] == 640

    manifest = ShardDataset(out).manifest
    assert manifest["excluded"] == {"unreadable_uri": 1}
    enc = manifest["encoders"]
    assert enc["vae"]["path"].endswith("vae") and enc["vae"]["latent_channels"] == 16
    assert (enc["vae"]["scaling_factor"], enc["vae"]["shift_factor"]) == (0.3611, 0.1159)
    assert enc["text_encoder"]["class"] == "Qwen3Model" and enc["text_encoder"]["hidden_size"] == 32
    assert "hidden_states[-2]" in enc["text_encoder"]["hidden_state"]

    vae, text = tiny_encoders.vae, tiny_encoders.text
    for r in list(by_id.values())[:4]:
        bw, bh = r["bucket_w"], r["bucket_h"]
        crop = decode_and_crop(r["image"], bw, bh, None)  # the loader's centre crop
        z = vae.encode([crop])[0]
        assert torch.allclose(torch.tensor(r["latents"]).view(16, bh // 8, bw // 8), z, atol=1e-5)
        feats = text.encode([c["text"] for c in r["captions"]])
        assert r["cap_feat_tokens"] == [len(f) for f in feats] == r["caption_tokens"]  # exact token counts
        for flat, f in zip(r["cap_feats"], feats):
            assert torch.allclose(torch.tensor(flat).view(len(f), 32), f, atol=1e-5)

    # the loader passes them through: latents and the chosen caption's features, no image decoding
    ds = ShardDataset(out, LoaderConfig(token_budget=1200, weighted=False))
    b = next(iter(Loader(ds, num_workers=0)))
    assert "images" not in b and len(b["latents"]) == len(b["cap_feats"]) == len(b["ids"]) > 1
    for z, f, cap, (bw, bh), n in zip(b["latents"], b["cap_feats"], b["captions"], b["buckets"], b["caption_tokens"]):
        assert z.shape == (16, bh // 8, bw // 8) and z.dtype == torch.float32
        assert f.shape == (int(n), 32) and torch.allclose(f, text.encode([cap])[0], atol=1e-5)
    off = ShardDataset(out, LoaderConfig(token_budget=1200, weighted=False, pre_encoded=False))
    assert "images" in next(iter(Loader(off, num_workers=0)))


def test_training_from_pre_encoded_shards_equals_on_the_fly_encoding(pre_encoded, encoder_dirs, tmp_path):
    vae, text = encoder_dirs
    base = dict(model="tiny", steps=3, lr=1e-3, warmup_steps=1, log_every=1, ckpt_every=100, sample_count=0)
    loader = {"token_budget": 1200, "weighted": False, "random_crop": False, "seed": 0}

    def run(name: str, pre: bool, **paths) -> list[float]:
        data = Loader(ShardDataset(pre_encoded["out"], {**loader, "pre_encoded": pre}), num_workers=0)
        res = train(TrainConfig(**base, out_dir=str(tmp_path / name), **paths), data, log=lambda _m: None)
        assert res["step"] == 3
        return [json.loads(x)["loss"] for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    pre = run("pre", True)  # no encoder configured: nothing to encode
    fly = run("fly", False, vae_path=vae, text_encoder_path=text)
    assert pre[0] == pytest.approx(fly[0], rel=1e-5, abs=1e-6)  # same first step
    assert pre == pytest.approx(fly, rel=1e-4, abs=1e-5) and len(set(pre)) == 3

    # and the encoders are loaded only when a batch needs them
    from training.loop import LazyEncoders

    lazy = LazyEncoders(TrainConfig(vae_path=vae, text_encoder_path=text), "cpu", torch.float32)
    state = torch.random.get_rng_state()
    assert lazy.loaded == [] and lazy.vae is not None and lazy.loaded == ["vae"]
    assert torch.equal(state, torch.random.get_rng_state())


def test_curate_train_two_ranks_ddp_and_fsdp2_on_gloo(pre_encoded, ray_session, tmp_path):
    """Ray Train TorchTrainer, 2 CPU workers (gloo): both ranks train on disjoint samples from the
    loader, and DDP keeps their parameters identical (digests per rank in the checkpoint)."""
    from curation.config import validate
    from pipelines.train import TrainRunConfig, run_training

    out = tmp_path / "ddp"
    loader = {"token_budget": 600, "weighted": False}
    cfg = validate(
        TrainRunConfig,
        {
            "shards": pre_encoded["out"],
            "model": "tiny",
            "steps": 2,
            "out_dir": str(out),
            "num_workers": 2,
            "cpus_per_worker": 0.5,
            "loader_workers": 0,
            "loader": loader,  # 1 CPU in all: a
            # Ray Data actor another stage left behind must not starve the pair
            "log_every": 1,
            "ckpt_every": 100,
            "sample_count": 0,
            "log_sample_ids": True,
        },
    )
    logs: list[str] = []
    res = run_training(cfg, log=logs.append)
    assert res["metrics"]["step"] == 2
    assert any("pre-encoded shards: latents from" in str(m) and "caption features" in str(m) for m in logs)

    seen = {r: [json.loads(x) for x in (out / "ranks" / f"rank_{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    assert [s["step"] for s in seen[0]] == [s["step"] for s in seen[1]] == [1, 2]  # both ranks ran every step
    ids = {r: [i for s in seen[r] for i in s["ids"]] for r in (0, 1)}
    assert ids[0] and ids[1] and not set(ids[0]) & set(ids[1])  # disjoint samples
    for r in (0, 1):  # exactly the loader's plan for that rank of 2
        ds = ShardDataset(pre_encoded["out"], {"seed": 0, **loader}, rank=r, world_size=2)
        plan = ds.plan(0)
        want = lance.dataset(pre_encoded["out"]).take(plan.rows[: plan.bounds[2]], columns=["id"]).column("id").to_pylist()
        assert ids[r] == want

    ckpt = out / "checkpoints" / "step_00000002"
    digests = [torch.load(ckpt / f"rank_{r}.pt", weights_only=False)["param_digest"] for r in (0, 1)]
    from training.model import load_safetensors, tiny

    assert digests[0] == digests[1] == param_digest(load_safetensors(ckpt / "model.safetensors", tiny()))
    assert seen[0][0]["loss"] != seen[1][0]["loss"]  # different data per rank

    # FSDP2 (fully_shard per block, gloo on CPU) on the same data and seed trains the same model:
    # sharded AdamW after reduce-scatter equals DDP's all-reduce, and the sharded checkpoint
    # (optimizer included) is gathered to one full state, then resumes
    fsdp_out = tmp_path / "fsdp"
    fcfg = cfg.model_copy(update={"out_dir": str(fsdp_out), "fsdp": "on", "ckpt_every": 2, "log_sample_ids": False})
    logs.clear()
    assert run_training(fcfg, log=logs.append)["metrics"]["step"] == 2
    f_ckpt = fsdp_out / "checkpoints" / "step_00000002"
    assert torch.load(f_ckpt / "rank_1.pt", weights_only=False)["param_digest"] is None  # sharded, not DDP
    fsdp_state = load_safetensors(f_ckpt / "model.safetensors", tiny()).state_dict()
    ddp_state = load_safetensors(ckpt / "model.safetensors", tiny()).state_dict()
    assert fsdp_state.keys() == ddp_state.keys()
    for k in ddp_state:
        torch.testing.assert_close(fsdp_state[k], ddp_state[k], rtol=1e-4, atol=1e-5, msg=k)
    logs.clear()
    assert run_training(fcfg.model_copy(update={"steps": 3}), log=logs.append)["metrics"]["step"] == 3
    steps = [json.loads(x)["step"] for x in (fsdp_out / "metrics.jsonl").read_text().splitlines() if '"step"' in x]
    assert steps == [1, 2, 3], steps  # continued from the step-2 checkpoint, not restarted


def test_train_refuses_caption_features_of_another_width(pre_encoded, tmp_path):
    from curation.config import validate
    from pipelines.train import TrainRunConfig, run_training

    cfg = validate(TrainRunConfig, {"shards": pre_encoded["out"], "model": "small", "steps": 1, "out_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="32-d .* cap_feat_dim=2560"):
        run_training(cfg, log=lambda _m: None)


def test_export_rejects_a_missing_encoder_folder(tmp_path, coco_store):
    from pipelines.export import ExportConfig, export

    with pytest.raises(ValueError, match="no config.json"):
        export(coco_store, ExportConfig(out=str(tmp_path / "x.lance"), vae_path=str(tmp_path / "nope")), show_progress=False)
