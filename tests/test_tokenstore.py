"""Quantised token storage: round trips within the bound, sizes, and every reader decoding it."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import store
from pipeline.errors import UserError
from pipeline.geometry.stage import build_model, compute_geometry
from pipeline.sbd.data import TokenReader
from pipeline.sbd.model import SemanticBridgingDecoder
from pipeline.sbd.render import render_sbd
from pipeline.sbd.train import save_decoder
from pipeline.tokenstore import TokenCodec, open_layers, read_tokens
from sbd_synthetic import TINY_ARCH

REPO = Path(__file__).resolve().parents[1]
TINY = {"embed_dim": 32, "depth": 4, "num_heads": 2, "patch_embed": "conv"}

torch.set_num_threads(1)


def _tokens(shape=(2, 3, 4, 256), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    x[..., 7] *= 40  # an outlier channel, as transformer activations have
    x[0, 0, 0] = 0  # an all-zero token
    return x


def _write(path, codec, x):
    group = store.create_group(path)
    group.attrs["token_codec"] = codec.to_attrs()
    layer = codec.create(group, 4, *x.shape)
    for t in range(x.shape[0]):
        layer[t] = x[t]
    return store.open_group(path), layer


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_round_trip_stays_within_half_a_step(tmp_path, dtype):
    x = _tokens()
    codec = TokenCodec.for_dtype(dtype, x.shape[-1])
    group, written = _write(tmp_path / "t.zarr", codec, x)
    assert written.overflow == 0
    (layer,) = open_layers(group, [4])
    decoded = layer.read([0, 1]).astype(np.float32)
    assert layer.shape == x.shape and decoded.dtype == np.float32
    scale = np.asarray(group["layer_04_scale"][:], dtype=np.float32)  # [T, h, w, groups]
    assert scale.shape == (*x.shape[:-1], x.shape[-1] // codec.group_size)
    step = np.repeat(scale, codec.group_size, axis=-1)
    # half a quantisation step, plus the float16 rounding of the decoded value
    assert np.all(np.abs(decoded - x) <= step / 2 + np.abs(x) * 2.0**-10 + 1e-7)
    assert np.all(decoded[0, 0, 0] == 0)
    # the quantisation is not vacuous: the error is of the order of the step
    assert np.abs(decoded - x).max() > 0.1 * step.max()
    codes = group["layer_04"]
    assert str(codes.dtype) == ("int8" if dtype == "int8" else "uint8")
    assert codes.shape[-1] == (x.shape[-1] if dtype == "int8" else x.shape[-1] // 2)
    assert codes.chunks[0] == 1 and group["layer_04_scale"].chunks[0] == 1


def test_stores_shrink_and_float16_reads_as_before(tmp_path):
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 512)).astype(np.float32)
    sizes = {}
    for dtype in ("float16", "int8", "int4"):
        path = tmp_path / f"{dtype}.zarr"
        _write(path, TokenCodec.for_dtype(dtype, 512), x)
        sizes[dtype] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert sizes["int8"] < 0.55 * sizes["float16"] and sizes["int4"] < 0.3 * sizes["float16"]
    # a store without codec attrs (written before quantisation existed) is float16
    legacy = store.create_group(tmp_path / "legacy.zarr")
    store.frame_array(legacy, "layer_00", (1, 8, 8, 512), "float16")[0] = x[0].astype(np.float16)
    (layer,) = open_layers(store.open_group(tmp_path / "legacy.zarr"), [0])
    np.testing.assert_array_equal(layer[0], x[0].astype(np.float16))


def test_values_that_do_not_fit_are_counted(tmp_path):
    x = _tokens()
    x[1, 2, 3, 5] = np.inf
    _, layer = _write(tmp_path / "t.zarr", TokenCodec.for_dtype("int8", x.shape[-1]), x)
    assert layer.overflow == 1
    with pytest.raises(UserError, match="token dtype"):
        TokenCodec.for_dtype("int2", 64)


def _frames(path, n=3, h=42, w=56):
    group = store.create_group(path)
    rgb = store.frame_array(group, "rgb", (n, h, w, 3), "uint8")
    rgb[:] = np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    group.attrs.update({"frame_names": [f"{i:06d}" for i in range(n)], "source_indices": list(range(n))})
    return path


def _doc_reader():
    """The small reader docs/formats.md gives outside tools (numpy + zarr only), as a function."""
    text = (REPO / "docs" / "formats.md").read_text()
    block = re.search(r"```python\n(.*?def read_layer.*?)```", text, re.S)
    assert block, "docs/formats.md lacks its read_layer example"
    namespace = {}
    exec(block.group(1), namespace)
    return namespace["read_layer"]


def test_every_reader_decodes_quantised_stage_output(tmp_path):
    frames = _frames(tmp_path / "frames.zarr")
    model, _ = build_model(random_init=0, architecture=TINY)
    stored = {}
    for dtype in ("float16", "int8", "int4"):
        out = tmp_path / dtype
        compute_geometry(frames, out, random_init=0, architecture=TINY, token_dtype=dtype)
        attrs = dict(store.open_group(out / "tokens.zarr").attrs)
        assert attrs["token_dtype"] == dtype and attrs["token_codec"]["dtype"] == dtype
        reader = TokenReader(out / "tokens.zarr")  # the decoder's loader (train and render)
        assert (reader.num_frames, reader.grid_h, reader.grid_w, reader.dim_in) == (3, 3, 4, 64)
        stored[dtype] = torch.stack(reader.read([0, 2, 1])).float()  # [4 layers, 3 frames, h, w, C]
        assert stored[dtype].shape == (4, 3, 3, 4, 64)
        for t in range(3):
            np.testing.assert_array_equal(read_tokens(out / "tokens.zarr", 3, [t])[0], reader.read([t])[3][0].numpy())
            doc = _doc_reader()(str(out / "tokens.zarr"), 3, t)
            np.testing.assert_allclose(doc, reader.read([t])[3][0].float().numpy(), rtol=2e-3, atol=1e-6)
    ref = stored["float16"]
    scale = ref.abs().amax(dim=-1, keepdim=True)
    assert ((stored["int8"] - ref).abs() <= scale / 127).all()
    assert ((stored["int4"] - ref).abs() <= scale / 7).all()

    torch.manual_seed(0)
    decoder = SemanticBridgingDecoder(dim_in=64, video_dim=0, **TINY_ARCH).eval()
    ckpt = tmp_path / "sbd.safetensors"
    save_decoder(ckpt, decoder, {"architecture": decoder.config.to_dict(), "layers": list(model.config.dpt_layers),
                                 "clip_space": {"kind": "c"}})
    renders = {}
    for dtype in stored:
        render_sbd(tmp_path / dtype / "tokens.zarr", ckpt, tmp_path / dtype / "render.zarr", device="cpu", progress=False)
        renders[dtype] = np.asarray(store.open_group(tmp_path / dtype / "render.zarr")["lang_s"][:], np.float32)
    spread = np.abs(renders["float16"]).max()
    assert np.abs(renders["int8"] - renders["float16"]).max() < 0.01 * spread
    assert np.abs(renders["int4"] - renders["float16"]).max() < 0.05 * spread
