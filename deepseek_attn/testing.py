"""What our tests, self-check and benchmarks share: the SPEC §6 accuracy rule, the SPEC §7 timer,
and NaN-poisoned inputs (views inside larger NaN-filled buffers, so a kernel that reads past a
tensor gets NaN instead of a plausible neighbour, and one that writes past it is caught).

Test-side helpers only: nothing in the ops imports this module.
"""

import statistics
import time

import torch

L2_FLUSH_BYTES = 256 * 1024 * 1024  # larger than any current GPU's L2
POISON_BYTE = 0xFF  # NaN in fp32, bf16, fp16 and float8_e4m3fn


def max_abs_diff(a, b):
    """max |a - b| in fp64, treating equal infinities as equal."""
    a, b = a.double(), b.double()
    same_inf = torch.isinf(a) & torch.isinf(b) & (torch.sign(a) == torch.sign(b))
    diff = torch.where(same_inf, torch.zeros_like(a), (a - b).abs())
    return diff.max().item() if diff.numel() else 0.0


def spec6_error_ratio(ours, same_dtype_ref, exact_ref, factor):
    """Our error over the SPEC §6 bound (<= 1 passes); factor is 2 for values, 3 for grads."""
    error = (ours.double() - exact_ref.double()).abs().nan_to_num(0.0)
    if ours.dtype == torch.float32:  # atol = rtol = 1e-4, element by element
        return (error / (1e-4 + 1e-4 * exact_ref.double().abs())).max().item()
    pytorch_error = (same_dtype_ref.double() - exact_ref.double()).abs().nan_to_num(0.0)
    return error.max().item() / (factor * pytorch_error.max().item() + 1e-5)


def assert_spec6_close(name, ours, same_dtype_ref, fp64_ref, factor):
    """SPEC §6: fp32 uses atol=rtol=1e-4 against fp64; bf16/fp16 use the relative rule."""
    assert not torch.isnan(ours).any(), f"{name} has NaN"
    if ours.dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(ours.double(), fp64_ref.double(), atol=1e-4, rtol=1e-4,
                                   msg=lambda m: f"{name}: {m}")
        return
    our_err = max_abs_diff(ours, fp64_ref)
    pytorch_err = max_abs_diff(same_dtype_ref, fp64_ref)
    bound = factor * pytorch_err + 1e-5
    assert our_err <= bound, (f"{name}: max error {our_err:.3e} exceeds {factor} x the "
                              f"same-dtype reference error {pytorch_err:.3e} + 1e-5")


class Timer:
    """Median wall time (ms) of a callable on one device, as SPEC §7 prescribes: CUDA events
    with the L2 flushed before every run, or perf_counter on CPU, after a warm-up."""

    def __init__(self, device, warmup=None, repeats=None):
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        self.warmup = warmup if warmup is not None else (3 if self.is_cuda else 1)
        self.repeats = repeats if repeats is not None else (10 if self.is_cuda else 5)
        self.flush_buffer = (torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=self.device)
                             if self.is_cuda else None)

    def __call__(self, fn):
        for _ in range(self.warmup):
            fn()
        if self.is_cuda:
            torch.cuda.synchronize(self.device)
        times = []
        for _ in range(self.repeats):
            if self.is_cuda:
                self.flush_buffer.zero_()
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                begin = time.perf_counter()
                fn()
                times.append((time.perf_counter() - begin) * 1e3)
        return statistics.median(times)


def poisoned(t, contiguous=False):
    """A copy of `t` (at least 1-D) as a view inside a larger buffer whose other bytes are 0xFF
    (NaN in every float type we use): with one element of margin on both sides of every
    dimension but the last and 16 bytes after each row (row starts stay 16-byte aligned when
    they are), or, with `contiguous`, as a contiguous block with 16 bytes of poison before and
    after. Reads past the view see NaN; check_poison(view) later tells whether anything wrote
    outside it. Set requires_grad on the result if needed."""
    if t.dim() == 0:
        raise ValueError("poisoned() takes a tensor with at least one dimension")
    margin = max(1, 16 // t.element_size())
    if contiguous:
        buffer = torch.empty(t.numel() + 2 * margin, dtype=t.dtype, device=t.device)
        view = buffer[margin:margin + t.numel()].view(t.shape)
    else:
        shape = list(t.shape)
        buffer = torch.empty([size + 2 for size in shape[:-1]] + [shape[-1] + margin],
                             dtype=t.dtype, device=t.device)
        view = buffer[tuple(slice(1, 1 + size) for size in shape[:-1]) + (slice(0, shape[-1]),)]
    buffer.view(torch.uint8).fill_(POISON_BYTE)
    view.copy_(t.detach())
    return view


def check_poison(view):
    """Asserts that every byte of the buffer around a poisoned() view still holds the poison."""
    buffer = view._base
    assert buffer is not None and buffer.is_contiguous(), "check_poison takes a poisoned() view"
    outside = torch.ones(buffer.numel(), dtype=torch.bool, device=buffer.device)
    outside.as_strided(view.shape, view.stride(),
                       view.storage_offset() - buffer.storage_offset()).fill_(False)
    raw = buffer.reshape(-1).view(torch.uint8).reshape(buffer.numel(), buffer.element_size())
    touched = (raw[outside] != POISON_BYTE).any(dim=-1)
    assert not touched.any(), (f"{int(touched.sum())} elements around a {tuple(view.shape)} "
                               f"tensor were overwritten")
