"""The emulator's own primitives and checks, one small probe kernel each
(tests/emulation/probe_kernels.cu); the real kernels' mutations are in test_emulated_mutations.py.
"""

import pytest
import torch

from test_emulated_kernels import sm80  # noqa: F401  (the session-wide module fixture)


@pytest.mark.parametrize("probe, report", [
    ("cross_block_read", r"global-memory race: load at offset 0 of 'data' and a write by block 0"),
    ("same_block_write_race", r"global-memory race: store at offset 0 of 'data'"),
    ("read_then_overwrite_race",
     r"global-memory race: store writes offset 0 of 'data' read by several threads of this block"),
    ("shuffle_outside_mask", r"__shfl_xor_sync reads lane 16, which is not in its mask 0xffff"),
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
