"""Offline activation runs in batches: a padded-token budget per forward changes how sequences are
grouped, not what each sequence's tokens are."""

import torch

from monitor.lm import runner
from monitor.lm.runner import _batches, cpu_has_fast_bf16, tap_sequences


def test_batches_keep_order_and_respect_both_limits():
    lengths = [10, 10, 10, 10, 600, 700, 1300, 20, 20]
    got = list(_batches(range(len(lengths)), lengths, 3, 1400))
    assert [i for b in got for i in b] == list(range(len(lengths)))
    assert got == [[0, 1, 2], [3, 4], [5], [6], [7, 8]]  # at most 3; 3 x 700 > 1400; 2 x 1300 > 1400
    assert all(len(b) <= 3 and (len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 1400) for b in got)
    assert list(_batches(range(5), [7] * 5, 2, None)) == [[0, 1], [2, 3], [4]]


def test_a_token_budget_gives_each_sequence_the_same_activations(default_model):
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(100, 30000, (n,), generator=g) for n in (5, 40, 9, 33)]

    def run(budget):
        out = {}
        for results in tap_sequences(default_model, 3, seqs, batch_size=4, max_batch_tokens=budget):
            out.update(results)
        return out

    whole, split = run(None), run(40)
    assert sorted(whole) == sorted(split) == [0, 1, 2, 3]
    for i, s in enumerate(seqs):
        a, b = whole[i], split[i]
        assert torch.equal(a.token_ids, b.token_ids) and a.activations.shape == (len(s), b.activations.shape[1])
        assert torch.allclose(a.activations.float(), b.activations.float(), rtol=1e-2, atol=1e-2), i


def test_bf16_on_a_cpu_without_native_bf16_says_it_is_slow(tmp_path, monkeypatch, capsys):
    zen3 = tmp_path / "zen3"
    zen3.write_text("flags\t\t: fpu sse2 avx avx2 fma f16c\n")
    sapphire = tmp_path / "sapphire"
    sapphire.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert not cpu_has_fast_bf16(zen3) and cpu_has_fast_bf16(sapphire)
    assert cpu_has_fast_bf16(tmp_path / "missing")  # cannot tell: no warning

    monkeypatch.setattr(runner, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(runner, "_warned_slow_bf16", False)
    runner._warn_if_bf16_is_slow("cpu", "float32")
    runner._warn_if_bf16_is_slow("cuda", "bfloat16")
    assert capsys.readouterr().err == ""
    runner._warn_if_bf16_is_slow("cpu", "bfloat16")
    runner._warn_if_bf16_is_slow("cpu", "bfloat16")
    err = capsys.readouterr().err
    assert err.count("no AVX512-BF16") == 1 and "--compute-dtype float32" in err  # once per process
