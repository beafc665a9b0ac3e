"""The emulator's wgmma descriptor decoding and operand addressing (csrc/emulation/gmma.h) match
CUTLASS CuTe.

tests/emulation/cute_gmma_oracle.cpp builds CuTe's canonical GMMA shared-memory layouts at a fake
shared address, takes their descriptors as CUTLASS does (TiledMMA::partition_fragment_A/B, i.e.
make_gmma_desc advanced per k-step and M/N block) and checks our decoded fields and, element by
element, our addresses against CuTe's. Headers and compiler come as in test_emulated_layouts.py;
no GPU is needed.
"""

import os

import pytest

from test_emulated_layouts import ROOT, assert_oracle_passes, compile_oracle

PROGRAM = os.path.join(ROOT, "tests", "emulation", "cute_gmma_oracle.cpp")


def _operand_checks(mn, k, block_mn, block_k):
    """Per instruction block: descriptor equality and 5 fields; then one check per element."""
    return (mn // block_mn) * (k // block_k) * 6 + mn * k


# The program's cases and the checks each makes: (operand tile, instruction's block of it).
CASE_CHECKS = {
    "k_sw128_bf16_a64x128": _operand_checks(64, 128, 64, 16),
    "k_sw128_bf16_a128x128": _operand_checks(128, 128, 64, 16),
    "k_sw128_bf16_b128x128": _operand_checks(128, 128, 128, 16),
    "k_sw128_f16_a64x128": _operand_checks(64, 128, 64, 16),
    "k_sw128_f16_b128x128": _operand_checks(128, 128, 128, 16),
    "k_sw128_bf16_a64x128_mid_pattern": _operand_checks(64, 128, 64, 16),
    "mn_sw128_bf16_b128x128": _operand_checks(128, 128, 128, 16),
    "mn_sw128_bf16_b128x128_k_first": _operand_checks(128, 128, 128, 16),
    "mn_sw128_bf16_b128x128_mid_pattern": _operand_checks(128, 128, 128, 16),
    "mn_sw128_bf16_a64x128": _operand_checks(64, 128, 64, 16),
    "k_sw128_e4m3_a64x128": _operand_checks(64, 128, 64, 32),
    "k_sw128_e4m3_a128x128": _operand_checks(128, 128, 64, 32),
    "k_sw128_e4m3_b128x128": _operand_checks(128, 128, 128, 32),
    "k_sw64_bf16_a64x128": _operand_checks(64, 128, 64, 16),
    "k_sw32_bf16_a64x128": _operand_checks(64, 128, 64, 16),
    "k_inter_bf16_a64x128": _operand_checks(64, 128, 64, 16),
    "k_inter_bf16_b128x128": _operand_checks(128, 128, 128, 16),
    "mn_sw64_bf16_b128x128": _operand_checks(128, 128, 128, 16),
    "mn_sw32_bf16_b128x128": _operand_checks(128, 128, 128, 16),
    "mn_inter_bf16_b128x128": _operand_checks(128, 128, 128, 16),
    "mn_inter_bf16_b128x128_k_first": _operand_checks(128, 128, 128, 16),
    "swizzle": 4 * 65536,  # 4 modes x every byte address of 64 KiB
    "descriptor_bits": 4096 * 5,  # 4096 bit patterns x 5 fields
}


@pytest.fixture(scope="module")
def gmma_oracle(tmp_path_factory):
    return compile_oracle(tmp_path_factory, PROGRAM)


@pytest.mark.parametrize("case", list(CASE_CHECKS))
def test_emulated_sm90_gmma_descriptors_match_cute(gmma_oracle, case):
    summary = f"cute gmma oracle: {CASE_CHECKS[case]} checks, 0 mismatches"
    assert_oracle_passes(gmma_oracle, case, summary)


def test_emulated_sm90_gmma_oracle_covers_every_case(gmma_oracle):
    """`all` runs exactly the cases above, so none of the program's goes unlisted here."""
    total = sum(CASE_CHECKS.values())
    assert_oracle_passes(gmma_oracle, "all", f"cute gmma oracle: {total} checks, 0 mismatches")
