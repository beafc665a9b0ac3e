// Independent oracle for csrc/emulation/fragments.h: compares, for every lane and every value
// index, the PTX fragment tables of our CPU emulator with the layouts CUTLASS CuTe uses for the
// same instructions (MMA_Traits / Copy_Traits, evaluated on the host; nothing CUDA runs).
//
// Usage: cute_layout_oracle [all | m16n8k16_bf16 | m16n8k16_f16 | m16n8k32_e4m3 |
//                            ldmatrix_x4 | ldmatrix_x4_trans | sm90_wgmma_m64n128k16_rs |
//                            sm90_wgmma_m64n256k16_rs]
// Prints every mismatch, then "cute layout oracle: N checks, M mismatches"; exits non-zero when
// M > 0 or N is not the number of (lane, value) entries the selected tables have.
//
// Value order: our value index v is register order (register v / per_reg, element v % per_reg,
// element 0 in the low bits). CuTe's value index is the same order: an MMA atom's fragment is a
// contiguous array of ValTypeA/B/C recast to the 32-bit registers the instruction takes, and a
// Copy_Traits value index counts the bits of the destination registers, register 0 first, bit 0
// lowest. So entries are compared exactly, (lane, v) -> coordinate, never as sets.

#include <cstdio>
#include <cstring>
#include <cute/atom/copy_traits_sm75.hpp>
#include <cute/atom/mma_traits_sm80.hpp>
#include <cute/atom/mma_traits_sm89.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/layout.hpp>
#include <string>
#include <utility>
#include <vector>

#include "emulation/fragments.h"
#include "oracle_cases.h"

namespace {

using dsa_emu::FragmentCoord;

std::string describe(const char* table, int lane, int v, const char* coord_names,
                     const std::vector<int>& ours, const std::vector<int>& cute) {
  auto tuple = [](const std::vector<int>& c) {
    std::string s = "(";
    for (size_t i = 0; i < c.size(); ++i) s += (i ? ", " : "") + std::to_string(c[i]);
    return s + ")";
  };
  return std::string(table) + " lane " + std::to_string(lane) + " v " + std::to_string(v) + ": " +
         coord_names + " ours " + tuple(ours) + ", cute " + tuple(cute);
}

// One operand of an MMA atom. CuTe (mma_traits.hpp) documents ALayout / BLayout / CLayout as
// (logical thread, value) -> flat MK / NK / MN coordinate, i.e. a column-major index into the
// operand tile: idx = r + R * c with (R rows, r, c) = (M, m, k) for A, (N, n, k) for B and
// (M, m, n) for C. ThrID maps the logical thread to the lane. Our tables give A as (m, k),
// C as (m, n) and B as (k, n): for B the CuTe coordinate is swapped before comparing.
template <class Traits, class TVLayout>
void check_mma_operand(Tally& tally, const std::string& table, TVLayout tv, int tile_rows,
                       bool cute_tile_is_transposed, FragmentCoord (*ours)(int lane, int v)) {
  using ThrID = typename Traits::ThrID;
  for (int tid = 0; tid < int(cute::size(ThrID{})); ++tid) {
    const int lane = ThrID{}(tid);
    for (int v = 0; v < int(cute::size<1>(tv)); ++v) {
      const int idx = tv(tid, v);
      int row = idx % tile_rows, col = idx / tile_rows;
      if (cute_tile_is_transposed) std::swap(row, col);
      const FragmentCoord mine = ours(lane, v);
      tally.check(mine.row == row && mine.col == col,
                  describe(table.c_str(), lane, v, "(row, col)", {mine.row, mine.col}, {row, col}));
    }
  }
}

// All three operands of an m16n8kK MMA atom; M and N come from CuTe's Shape_MNK.
template <class Traits>
void check_mma(Tally& tally, const std::string& name, FragmentCoord (*a)(int, int),
               FragmentCoord (*b)(int, int)) {
  using Shape = typename Traits::Shape_MNK;
  const int M = cute::size<0>(Shape{}), N = cute::size<1>(Shape{});
  check_mma_operand<Traits>(tally, name + " A", typename Traits::ALayout{}, M, false, a);
  check_mma_operand<Traits>(tally, name + " B", typename Traits::BLayout{}, N, true, b);
  check_mma_operand<Traits>(tally, name + " C", typename Traits::CLayout{}, M, false,
                            dsa_emu::mma_m16n8_c);
}

// ldmatrix .x4 .b16 (with or without .trans). CuTe's Copy_Traits layouts are in bits:
// SrcLayout maps (source thread, bit of the 128-bit row that thread addresses) and DstLayout
// maps (destination lane, bit of its four 32-bit registers) to the same reference bit. Inverting
// SrcLayout tells, for every bit a lane receives, which lane gave the row address and at which
// bit of that row it sits. Per PTX, the row addresses of matrix j come from lanes 8j..8j+7 (row
// = lane % 8), so a source (lane s, row bit k) is element (matrix s / 8, row s % 8, col k / 16)
// in memory. Destination value v of our table is 16-bit element v % 2 of register j = v / 2,
// i.e. destination bits 16 v .. 16 v + 15; all 16 must come, in order, from one source element.
template <class Traits>
void check_ldmatrix(Tally& tally, const char* table, bool transposed) {
  using ThrID = typename Traits::ThrID;
  using Src = typename Traits::SrcLayout;
  using Dst = typename Traits::DstLayout;
  constexpr int kBits = 16;

  std::vector<std::pair<int, int>> source_of(cute::cosize(Src{}), {-1, -1});  // (lane, row bit)
  for (int s = 0; s < int(cute::size<0>(Src{})); ++s)
    for (int k = 0; k < int(cute::size<1>(Src{})); ++k) source_of[Src{}(s, k)] = {ThrID{}(s), k};

  for (int tid = 0; tid < int(cute::size<0>(Dst{})); ++tid) {
    const int lane = ThrID{}(tid);
    for (int v = 0; v < int(cute::size<1>(Dst{})) / kBits; ++v) {
      const auto [src_lane, row_bit] = source_of[Dst{}(tid, v * kBits)];
      bool one_element = row_bit % kBits == 0;
      for (int b = 1; b < kBits; ++b)
        one_element &=
            source_of[Dst{}(tid, v * kBits + b)] == std::make_pair(src_lane, row_bit + b);

      const FragmentCoord mine = dsa_emu::ldmatrix_m8n8(lane, v % 2, transposed);
      const std::vector<int> ours = {v / 2, mine.row, mine.col, 1};
      const std::vector<int> cute = {src_lane / 8, src_lane % 8, row_bit / kBits, one_element};
      tally.check(ours == cute,
                  describe(table, lane, v, "(matrix, row, col, whole element)", ours, cute));
    }
  }
}

const OracleCase kTables[] = {
    {"m16n8k16_bf16", 32 * (8 + 4 + 4),
     [](Tally& t, const char*) {
       check_mma<cute::MMA_Traits<cute::SM80_16x8x16_F32BF16BF16F32_TN>>(
           t, "m16n8k16_bf16", dsa_emu::mma_m16n8k16_a, dsa_emu::mma_m16n8k16_b);
     }},
    {"m16n8k16_f16", 32 * (8 + 4 + 4),
     [](Tally& t, const char*) {
       check_mma<cute::MMA_Traits<cute::SM80_16x8x16_F32F16F16F32_TN>>(
           t, "m16n8k16_f16", dsa_emu::mma_m16n8k16_a, dsa_emu::mma_m16n8k16_b);
     }},
    {"m16n8k32_e4m3", 32 * (16 + 8 + 4),
     [](Tally& t, const char*) {
       check_mma<cute::MMA_Traits<cute::SM89_16x8x32_F32E4M3E4M3F32_TN>>(
           t, "m16n8k32_e4m3", dsa_emu::mma_m16n8k32_a, dsa_emu::mma_m16n8k32_b);
     }},
    {"ldmatrix_x4", 32 * 8,
     [](Tally& t, const char*) {
       check_ldmatrix<cute::Copy_Traits<cute::SM75_U32x4_LDSM_N>>(t, "ldmatrix_x4", false);
     }},
    // wgmma with A from registers (the P V product of the Hopper attention forward): the A
    // fragment and the fp32 accumulators of the warpgroup's 128 threads (B is a descriptor).
    {"sm90_wgmma_m64n128k16_rs", 128 * (8 + 64),
     [](Tally& t, const char*) {
       using Traits = cute::MMA_Traits<
           cute::SM90_64x128x16_F32BF16BF16_RS<cute::GMMA::Major::K, cute::GMMA::Major::MN>>;
       check_mma_operand<Traits>(t, "wgmma m64n128k16 A", Traits::ALayout{}, 64, false,
                                 dsa_emu::wgmma_m64k16_a);
       check_mma_operand<Traits>(t, "wgmma m64n128k16 C", Traits::CLayout{}, 64, false,
                                 dsa_emu::wgmma_m64n_c);
     }},
    {"sm90_wgmma_m64n256k16_rs", 128 * 128,  // the widest N: accumulator values run to 127
     [](Tally& t, const char*) {
       using Traits = cute::MMA_Traits<
           cute::SM90_64x256x16_F32F16F16_RS<cute::GMMA::Major::K, cute::GMMA::Major::MN>>;
       check_mma_operand<Traits>(t, "wgmma m64n256k16 C", Traits::CLayout{}, 64, false,
                                 dsa_emu::wgmma_m64n_c);
     }},
    {"ldmatrix_x4_trans", 32 * 8,
     [](Tally& t, const char*) {
       check_ldmatrix<cute::Copy_Traits<cute::SM75_U16x8_LDSM_T>>(t, "ldmatrix_x4_trans", true);
     }},
};

}  // namespace

int main(int argc, char** argv) {
  return run_oracle_cases("cute layout oracle", kTables, argc, argv);
}
