"""The emulator's own primitives and checks, one small probe kernel each
(tests/emulation/probe_kernels.cu); the real kernels' mutations are in test_emulated_mutations.py.
"""

import pytest
import torch

from test_emulated_kernels import schedule, sm80, sm89, sm90  # noqa: F401  (session-wide fixtures)


@pytest.mark.parametrize("probe, report", [
    ("cross_block_read", r"global-memory race: load at offset 0 of 'data' and a write by block 0"),
    ("same_block_write_race", r"global-memory race: store at offset 0 of 'data'"),
    ("read_then_overwrite_race",
     r"global-memory race: store writes offset 0 of 'data' read by several threads of this block"),
    ("shuffle_outside_mask", r"__shfl_xor_sync reads lane 16, which is not in its mask 0xffff"),
    ("syncwarp_other_warp_race",
     r"global-memory race: load at offset 0 of 'data' and a write by thread \(0,0,0\)"),
    ("shared_read_race", r"shared-memory race: load at scratch\+0x0 and a write by thread \(0,0,0\)"),
    ("trap", r"the kernel executed __trap\(\) \[trap_kernel, block \(0,0,0\), thread \(5,0,0\)"),
    ("out_of_bounds_store", r"4-byte store at 0x[0-9a-f]+ is 0 bytes past the end of 'data' \(128 bytes\)"),
    ("dynamic_shared", r"load reads dynamic shared memory\+0x0, which no thread has written"),
], ids=lambda value: value if " " not in value and "\\" not in value else "")
def test_emulated_probe_is_reported(sm80, probe, report):
    with pytest.raises(RuntimeError, match=report) as caught:
        sm80.run_probe(probe, torch.zeros(32), 64)
    assert "deepseek_attn emulator:" in str(caught.value)


def test_emulated_barrier_orders_writes(sm80):
    data = torch.zeros(32)
    sm80.run_probe("ordered_writes", data, 0)
    assert data[0] == 2.0


def test_emulated_syncwarp_orders_global_memory_within_a_warp(sm80):
    data = torch.zeros(32)
    sm80.run_probe("syncwarp_orders_global", data, 0)
    assert data[1] == 5.0


def test_emulated_warp_primitives(sm80):
    data = torch.zeros(64)
    sm80.run_probe("warp_primitives", data, 0)
    lanes = torch.arange(32, dtype=torch.float32)
    assert torch.equal(data[:32], lanes.long().bitwise_xor(1).float())
    assert torch.equal(data[32:], 31 - lanes + 100)


def test_emulated_launch_rejects_shared_memory_past_the_opt_in(sm80):
    # Over 48 KiB needs cudaFuncSetAttribute, which launch_kernel does; past the device's limit
    # (163 KiB on an A100) the attribute itself fails, as on the GPU.
    sm80.run_probe("ordered_writes", torch.zeros(32), 100 * 1024)
    with pytest.raises(RuntimeError, match="emulated launch failed: invalid argument"):
        sm80.run_probe("ordered_writes", torch.zeros(32), 200 * 1024)


def test_emulated_unknown_probe_is_an_error(sm80):
    with pytest.raises(RuntimeError, match="invalid argument"):
        sm80.run_probe("no_such_probe", torch.zeros(32), 0)


# --- Hopper primitives (the sm90 module) --------------------------------------------------------

@pytest.mark.parametrize("fill", ["zero", "nan"])
def test_emulated_sm90_tma_box_lands_swizzled_with_oob_fill(sm90, fill):
    """A 2-D TMA box starting at column -8 and 4 rows before the end: out-of-bounds elements
    arrive as zeros (or NaN with the NaN fill mode), and 16-byte chunk c of row r lands at chunk
    c ^ (r % 8) (128-byte swizzle)."""
    rows = 20
    matrix = torch.arange(rows * 16, dtype=torch.float32).reshape(rows, 16) + 1
    data = torch.cat([matrix.flatten(), torch.full((8 * 32,), -1.0)])
    sm90.run_probe("tma_box" if fill == "zero" else "tma_box_nan_fill", data, 0)
    box = torch.full((8, 32), 0.0 if fill == "zero" else float("nan"))
    for r in range(8):
        for c in range(32):
            row, column = rows - 4 + r, c - 8
            if row < rows and 0 <= column < 16:
                box[r, c] = matrix[row, column]
    expected = torch.zeros(8, 32)
    for r in range(8):
        for chunk in range(8):
            expected[r, 4 * (chunk ^ r):4 * (chunk ^ r) + 4] = box[r, 4 * chunk:4 * chunk + 4]
    torch.testing.assert_close(data[rows * 16:].reshape(8, 32), expected, atol=0, rtol=0,
                               equal_nan=True)
    assert torch.equal(data[:rows * 16], matrix.flatten())  # the source is untouched


@pytest.mark.parametrize("probe, report", [
    ("mbarrier_over_arrival", r"in a phase that already has all 1 of its arrivals \(over-arrival\)"),
    ("mbarrier_tx_never_completes",
     r"deadlock: an mbarrier wait never completes: .* still needs 0 of 1 arrivals and 64 "
     r"transaction bytes"),
    ("mbarrier_wrong_parity", r"try_wait\.parity 1 .* before it completed any phase"),
    ("mbarrier_missing_wait",
     r"shared-memory race: load at values\+0x[0-9a-f]+ and a write by thread|which no thread has written"),
    ("wgmma_early_accumulator_read",
     r"load of the accumulators of a wgmma in group 1 before a wgmma\.wait_group covers it"),
    ("named_barrier_count_mismatch", r"bar\.sync 1 with 128 threads, while .* arrived at it with 256"),
    ("named_barrier_never_completes", r"deadlock: bar\.sync 1 waits for 256 threads but only 128 arrived"),
    ("named_barrier_missing",
     r"shared-memory race: load at values\+0x[0-9a-f]+ and a write by thread|which no thread has written"),
    ("setmaxnreg_illegal_count", r"setmaxnreg with 36 registers \(must be 24\.\.256, a multiple of 8\)"),
    ("wgmma_without_proxy_fence",
     r"wgmma operand read \(async proxy\) reads .* through the generic proxy without a later "
     r"fence\.proxy\.async"),
], ids=lambda value: value if " " not in value and "\\" not in value else "")
def test_emulated_sm90_probe_is_reported(sm90, probe, report):
    with pytest.raises(RuntimeError, match=report) as caught:
        sm90.run_probe(probe, torch.zeros(128), 0)
    assert "deepseek_attn emulator:" in str(caught.value)


def test_emulated_sm90_mbarrier_orders_warps(sm90):
    data = torch.zeros(32)
    sm90.run_probe("mbarrier_orders_warps", data, 0)
    assert torch.equal(data, torch.arange(31, -1, -1, dtype=torch.float32))


def test_emulated_sm90_wgmma(sm90):
    data = torch.zeros(128)
    sm90.run_probe("wgmma", data, 0)
    assert torch.equal(data, torch.full((128,), 16.0))  # 16 products of bf16 ones


def test_emulated_sm90_named_barrier_orders_warpgroups(sm90):
    data = torch.zeros(128)
    sm90.run_probe("named_barrier", data, 0)
    assert torch.equal(data, torch.arange(127, -1, -1, dtype=torch.float32))


def test_emulated_sm90_elect_one_elects_one_lane(sm90, schedule):
    data = torch.zeros(32)
    sm90.run_probe("elect_one", data, 0)
    assert data.sum() == 1
