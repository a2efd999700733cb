"""Paged KV cache: the block allocator, prefix keys, capacity planning, storage and paged attention."""

import pytest
import torch
import torch.nn.functional as F

from fathom.build.config import preset
from fathom.build.errors import ConfigError
from fathom.build.precision import KvCacheFormat
from fathom.build.quant.calibrate import calibrate_kv_scales
from fathom.build.quant.kv_cache import KVCacheQuant
from fathom.runtime.paged_kv import (BlockAllocator, KVCacheConfig, PagedAttention, PagedKVCache, block_key,
                                     plan_num_blocks)


def test_allocator_hands_out_every_block_but_the_null_block_then_returns_none():
    alloc = BlockAllocator(5)
    got = [alloc.allocate() for _ in range(4)]
    assert sorted(got) == [1, 2, 3, 4] and alloc.allocate() is None and alloc.num_free() == 0
    alloc.release(got[0])
    assert alloc.num_free() == 1 and alloc.allocate() == got[0]


def test_shared_block_is_freed_only_by_its_last_reference_and_then_stays_cached():
    alloc = BlockAllocator(4)
    block = alloc.allocate()
    key = block_key(b"", [1, 2, 3])
    alloc.register(block, key)
    assert alloc.lookup(key) == block and alloc.refs[block] == 2
    alloc.release(block)
    assert alloc.num_used() == 1
    alloc.release(block)
    assert alloc.num_used() == 0 and alloc.lookup(key) == block  # cached, revived by a lookup
    assert alloc.lookup(block_key(b"", [1, 2, 4])) is None


def test_cached_blocks_are_evicted_only_when_no_never_used_block_is_left():
    alloc = BlockAllocator(4)
    a, b = alloc.allocate(), alloc.allocate()
    alloc.register(a, b"A")
    alloc.register(b, b"B")
    alloc.release(a)
    alloc.release(b)
    assert alloc.allocate() == 3  # the never-used block first
    assert alloc.allocate() == a  # then the least recently released cached block
    assert alloc.lookup(b"A") is None and alloc.lookup(b"B") == b


def test_block_keys_depend_on_the_whole_prefix():
    k1 = block_key(b"", [1, 2])
    assert block_key(b"", [1, 2]) == k1
    assert block_key(k1, [3, 4]) != block_key(block_key(b"", [9, 2]), [3, 4])
    assert block_key(b"", [12, 3]) != block_key(b"", [1, 23])


def test_quantized_kv_needs_scales_and_one_per_layer():
    with pytest.raises(ConfigError, match="kv_scales"):
        KVCacheConfig(kv_format="int8")
    with pytest.raises(ConfigError, match="kv_format 'int4': expected one of model, fp8, int8"):
        KVCacheConfig(kv_format="int4")
    cfg = preset("tiny")
    kv_quant = KVCacheConfig(kv_format="fp8", kv_scales=(1.0,)).kv_quant(None, torch.device("cpu"))
    with pytest.raises(ConfigError, match="one per layer"):
        PagedKVCache(cfg, 16, 4, torch.float32, torch.device("cpu"), 2, 64, kv_quant=kv_quant)


def test_cpu_capacity_comes_from_the_budget_and_is_capped_by_what_sequences_can_use():
    cfg = preset("tiny")
    per_token = cfg.kv_bytes_per_token(4)
    kv = KVCacheConfig(block_size=16, cpu_budget_bytes=per_token * 16 * 10)
    assert plan_num_blocks(cfg, kv, torch.device("cpu"), per_token, 0, max_tokens=10_000) == 10
    assert plan_num_blocks(cfg, kv, torch.device("cpu"), per_token, 0, max_tokens=40) == 4  # 3 blocks + null
    with pytest.raises(ConfigError, match="hold no 16-token block"):
        plan_num_blocks(cfg, KVCacheConfig(cpu_budget_bytes=100), torch.device("cpu"), per_token, 0, 10_000)


@pytest.mark.parametrize("kv_format, tol", [("model", 0.0), ("int8", 0.02), ("fp8", 0.07)])
def test_stored_kv_reads_back_within_the_storage_precision(kv_format, tol):
    cfg = preset("tiny")
    kv_format = KvCacheFormat(kv_format)
    kv_quant = None
    if kv_format.quantized:
        scale = 4.0 / (127 if kv_format is KvCacheFormat.INT8 else 448)
        kv_quant = KVCacheQuant(kv_format, torch.full((cfg.num_hidden_layers,), scale))
    cache = PagedKVCache(cfg, 16, 4, torch.float32, torch.device("cpu"), 2, 64, kv_quant=kv_quant)
    assert cache.kv.dtype == kv_format.torch_dtype("float32")
    k = torch.randn(5, cfg.num_key_value_heads, cfg.head_dim, generator=torch.Generator().manual_seed(0))
    slots = torch.tensor([17, 3, 40, 41, 16])
    cache.write(1, slots, torch.stack((k, -k), dim=1))
    got_k, got_v = cache.read(1, slots).unbind(1)
    assert (got_k - k).abs().max().item() <= tol * k.abs().max().item()
    assert torch.equal(got_v, -got_k)
    buffer = torch.empty((5, 2, cfg.num_key_value_heads, cfg.head_dim), dtype=cache.raw)
    assert torch.equal(cache.read(1, slots, out=buffer), torch.stack((got_k, got_v), dim=1))
    assert torch.equal(cache.read_range(1, 40, 2), torch.stack((got_k, got_v), dim=1)[2:4])


def test_paged_attention_matches_dense_attention_for_decodes_and_a_chunk():
    """Two decode rows (lengths 7 and 12) and a 3-token chunk at position 5, blocks scattered."""
    cfg = preset("tiny-gqa5")
    Hq, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    cache = PagedKVCache(cfg, 4, 12, torch.float32, torch.device("cpu"), 4, 32)
    gen = torch.Generator().manual_seed(1)
    lens = {0: 7, 1: 12, 2: 8}
    blocks = {0: [5, 2], 1: [9, 1, 7], 2: [3, 11]}
    kv = {}
    for row, n in lens.items():
        for i, b in enumerate(blocks[row]):
            cache.set_block(row, i, b)
        kv[row] = (torch.randn(n, Hkv, D, generator=gen), torch.randn(n, Hkv, D, generator=gen))
        past = cache.slot_table[row, :n - (3 if row == 2 else 1)]
        cache.write(0, past, torch.stack(kv[row], dim=1)[:len(past)])
    attn = PagedAttention(cache)
    new_slots = torch.cat([cache.slot_table[0, 6:7], cache.slot_table[1, 11:12], cache.slot_table[2, 5:8]])
    attn.plan_step(new_slots, [(2, 3, 2, 5, -1)])
    attn.plan_decode(torch.tensor([0, 1]), torch.tensor([7, 12]), 12)
    q = torch.randn(5, Hq, D, generator=gen)
    new = torch.cat([torch.stack(kv[0], 1)[6:], torch.stack(kv[1], 1)[11:], torch.stack(kv[2], 1)[5:]])
    out = attn.attend(0, q, new)

    def dense(qs, row):
        k, v = (t.transpose(0, 1)[None] for t in kv[row])
        T, L = qs.shape[0], k.shape[2]
        mask = torch.arange(L)[None, :] <= torch.arange(L - T, L)[:, None]
        return F.scaled_dot_product_attention(qs.transpose(0, 1)[None], k, v, attn_mask=mask, enable_gqa=True)[0].transpose(0, 1)

    want = torch.cat([dense(q[0:1], 0), dense(q[1:2], 1), dense(q[2:5], 2)])
    assert (out - want).abs().max().item() < 1e-5


def test_calibrated_scales_follow_the_quantizer_rule():
    from fathom.build.sources import resolve_model
    from fathom.runtime.loader import load_model

    model = load_model(resolve_model("random:tiny"), "float32", "cpu", max_seq_len=64)
    int8 = calibrate_kv_scales(model, [list(range(1, 30))], "int8")
    fp8 = calibrate_kv_scales(model, [list(range(1, 30))], "fp8")
    assert len(int8) == model.cfg.num_hidden_layers and all(s > 0 for s in int8)
    assert fp8 == pytest.approx([max(i * 127 / 448, 1.0) for i in int8])


def test_paged_attention_reads_consecutive_blocks_in_place_with_the_gathered_result():
    """A lone decode and a chunk whose blocks follow each other in the pool attend to views of it,
    exactly as to the gathered slots; CPU gathers reuse one buffer, grown in powers of two."""
    cfg = preset("tiny-gqa5")
    Hq, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    cache = PagedKVCache(cfg, 4, 12, torch.float32, torch.device("cpu"), 4, 32)
    gen = torch.Generator().manual_seed(2)
    for row, blocks in ((0, [3, 4, 5]), (1, [7, 8])):
        for i, b in enumerate(blocks):
            cache.set_block(row, i, b)
        cache.write(0, cache.slot_table[row, :len(blocks) * 4], torch.randn(len(blocks) * 4, 2, Hkv, D, generator=gen))
    q = torch.randn(4, Hq, D, generator=gen)
    new = torch.randn(4, 2, Hkv, D, generator=gen)
    outs = []
    for decode_first, chunk_first in ((-1, -1), (12, 28)):  # gathered, then in place
        attn = PagedAttention(cache)
        attn.plan_step(torch.cat([cache.slot_table[0, 10:11], cache.slot_table[1, 3:6]]), [(1, 3, 1, 3, chunk_first)])
        attn.plan_decode(torch.tensor([0]), None, 11, decode_first)
        outs.append(attn.attend(0, q, new))
        assert (attn.buffer.shape[0] == 16) == (decode_first < 0)  # 11 slots, then 6: one buffer of 16 rows
    assert torch.equal(outs[0], outs[1])
