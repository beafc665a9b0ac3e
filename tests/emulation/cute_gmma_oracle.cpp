// Independent oracle for csrc/emulation/gmma.h: decodes the wgmma shared-memory descriptors that
// CUTLASS CuTe builds for its canonical GMMA layouts and checks, for every element of every
// instruction's operand tile, that gmma_element_address finds it where CuTe's layout put it
// (evaluated on the host; nothing CUDA runs).
//
// Usage: cute_gmma_oracle [all | <case>]   (the names in kCases below)
// Prints every mismatch, then "cute gmma oracle: N checks, M mismatches"; exits non-zero when
// M > 0 or N is not the number of checks the selected cases have.
//
// An operand case builds a shared-memory tile with tile_to_shape(GMMA::Layout_<major>_<mode>_Atom)
// at a fake shared address and takes the descriptors of its instruction-sized blocks the way
// CUTLASS / FlashAttention-3 do: TiledMMA::partition_fragment_A/B, i.e. make_gmma_desc of the
// first block, advanced by each block's (unswizzled) offset in 16-byte units. So the k-steps of
// a 128B-swizzled K-major tile are descriptors whose start moves 32 bytes within a swizzle row.
// Per block it checks: make_gmma_desc of that block alone gives the same descriptor; our decoded
// start / LBO / SBO / base offset / swizzle equal CuTe's bitfields; and, for each (mn, k) of the
// block, gmma_element_address equals the address of CuTe's element (the swizzle applied).

#include <cstddef>
#include <cstdint>

namespace {
// The fake shared memory: a real buffer aligned to its 256 KiB size (the most an 18-bit shared
// address spans), so a pointer into it has the shared address as its low bits, as a generic
// pointer into a GPU's aligned shared window has. CuTe's swizzled pointers swizzle those bits.
alignas(1 << 18) char shared_window[1 << 18];
}  // namespace

// Host shim for CuTe's cast_smem_ptr_to_uint (cute/arch/util.hpp). On a GPU it returns
// __cvta_generic_to_shared(ptr); in a host build none of its intrinsics is enabled and it prints
// an error and returns 0. Defining CUTE_CVTA_GENERIC_TO_SHARED_ACTIVATED before CuTe is included
// selects the __cvta_generic_to_shared branch, and this definition plays the intrinsic: the
// offset of a pointer into shared_window is its shared address.
inline std::size_t __cvta_generic_to_shared(const void* generic) {
  return static_cast<std::size_t>(static_cast<const char*>(generic) - shared_window);
}
#define CUTE_CVTA_GENERIC_TO_SHARED_ACTIVATED 1

#include <cstdio>
#include <cstring>
#include <string>

#include <cute/atom/mma_atom.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/tensor.hpp>

#include "emulation/gmma.h"
#include "oracle_cases.h"

namespace {

using namespace cute;
namespace GMMA = cute::SM90::GMMA;

std::string hex(uint64_t value) {
  char text[24];
  std::snprintf(text, sizeof(text), "0x%llx", static_cast<unsigned long long>(value));
  return text;
}

int swizzle_bytes_of(GMMA::LayoutType type) {
  switch (type) {
    case GMMA::LayoutType::INTERLEAVE: return 0;
    case GMMA::LayoutType::B32: return 32;
    case GMMA::LayoutType::B64: return 64;
    case GMMA::LayoutType::B128: return 128;
  }
  return -1;
}

// Our decoding against CuTe's GmmaDescriptor bitfields (which keep addresses >> 4).
void check_fields(Tally& tally, const std::string& what, cute::GmmaDescriptor cute_desc) {
  const dsa_emu::GmmaDescriptor ours = dsa_emu::decode_gmma_descriptor(cute_desc.desc_);
  const auto& bits = cute_desc.bitfield;
  const std::string prefix = what + " desc " + hex(cute_desc.desc_) + ": ";
  tally.check(ours.start_address == uint32_t(bits.start_address_) << 4,
              prefix + "start ours " + hex(ours.start_address) + ", cute " +
                  hex(uint32_t(bits.start_address_) << 4));
  tally.check(ours.leading_byte_offset == uint32_t(bits.leading_byte_offset_) << 4,
              prefix + "LBO ours " + hex(ours.leading_byte_offset) + ", cute " +
                  hex(uint32_t(bits.leading_byte_offset_) << 4));
  tally.check(ours.stride_byte_offset == uint32_t(bits.stride_byte_offset_) << 4,
              prefix + "SBO ours " + hex(ours.stride_byte_offset) + ", cute " +
                  hex(uint32_t(bits.stride_byte_offset_) << 4));
  tally.check(ours.base_offset == bits.base_offset_,
              prefix + "base offset ours " + std::to_string(ours.base_offset) + ", cute " +
                  std::to_string(bits.base_offset_));
  const int cute_swizzle = swizzle_bytes_of(GMMA::LayoutType(bits.layout_type_));
  tally.check(ours.swizzle_bytes == cute_swizzle,
              prefix + "swizzle ours " + std::to_string(ours.swizzle_bytes) + ", cute " +
                  std::to_string(cute_swizzle));
}

// One operand (A when kOperandA, else B) of MmaOp in shared memory with `layout` (CuTe's (M, K)
// or (N, K) tile), placed at shared address `base`.
template <class MmaOp, bool kOperandA, GMMA::Major kMajor, class T, class SmemLayout>
void check_operand(Tally& tally, const char* name, SmemLayout layout, uint32_t base) {
  Tensor smem = make_tensor(make_smem_ptr(reinterpret_cast<T*>(shared_window + base)), layout);
  auto thread = make_tiled_mma(MmaOp{}).get_thread_slice(0);
  Tensor descs = [&] {
    if constexpr (kOperandA) {
      return thread.partition_fragment_A(smem);  // (1, MMA_M, MMA_K) descriptors
    } else {
      return thread.partition_fragment_B(smem);  // (1, MMA_N, MMA_K)
    }
  }();
  using ShapeMNK = typename MMA_Traits<MmaOp>::Shape_MNK;
  using Block = Shape<std::conditional_t<kOperandA, decltype(get<0>(ShapeMNK{})),
                                         decltype(get<1>(ShapeMNK{}))>,
                      decltype(get<2>(ShapeMNK{}))>;

  for (int i = 0; i < int(size<1>(descs)); ++i) {
    for (int j = 0; j < int(size<2>(descs)); ++j) {
      const std::string what = std::string(name) + " block (" + std::to_string(i) + ", " +
                               std::to_string(j) + ")";
      const cute::GmmaDescriptor advanced = descs(0, i, j);
      Tensor block = local_tile(smem, Block{}, make_coord(i, j));
      const cute::GmmaDescriptor direct = GMMA::make_gmma_desc<kMajor>(block);
      tally.check(direct.desc_ == advanced.desc_, what + ": make_gmma_desc of the block " +
                                                      hex(direct.desc_) + ", advanced " +
                                                      hex(advanced.desc_));
      check_fields(tally, what, advanced);

      const dsa_emu::GmmaDescriptor desc = dsa_emu::decode_gmma_descriptor(advanced.desc_);
      for (int mn = 0; mn < int(size<0>(block)); ++mn) {
        for (int k = 0; k < int(size<1>(block)); ++k) {
          const uint32_t ours = dsa_emu::gmma_element_address(desc, kMajor == GMMA::Major::K,
                                                              int(sizeof(T)), mn, k);
          // &block(mn, k) is where CuTe's swizzled pointer puts the element.
          const auto cute_address =
              uint32_t(reinterpret_cast<const char*>(&block(mn, k)) - shared_window);
          tally.check(ours == cute_address, what + " (mn " + std::to_string(mn) + ", k " +
                                                std::to_string(k) + "): ours " + hex(ours) +
                                                ", cute " + hex(cute_address));
        }
      }
    }
  }
}

using bf16 = cute::bfloat16_t;
using f16 = cute::half_t;
using e4m3 = cute::float_e4m3_t;
// The instructions of our kernels: S = Q Kᵀ and O += P V (m64n128k16), FP8 GEMM (m64n128k32).
using Bf16KK = SM90_64x128x16_F32BF16BF16_SS<GMMA::Major::K, GMMA::Major::K>;
using F16KK = SM90_64x128x16_F32F16F16_SS<GMMA::Major::K, GMMA::Major::K>;
using Bf16KMN = SM90_64x128x16_F32BF16BF16_SS<GMMA::Major::K, GMMA::Major::MN>;
using Bf16MNK = SM90_64x128x16_F32BF16BF16_SS<GMMA::Major::MN, GMMA::Major::K>;
using E4m3 = SM90_64x128x32_F32E4M3E4M3_SS_TN<>;

constexpr uint32_t kAligned = 0x8000;            // 1024-byte aligned, as our kernels align tiles
constexpr uint32_t kMidPattern = 0x8000 + 0x180;  // starts at row 3 of a 1024-byte swizzle block

template <template <class> class Atom, class T, int kMN, int kK>
auto tile() {  // CuTe's default order: atoms stacked along M/N first
  return tile_to_shape(Atom<T>{}, make_shape(Int<kMN>{}, Int<kK>{}));
}
template <template <class> class Atom, class T, int kMN, int kK>
auto tile_k_first() {  // atoms stacked along K first
  return tile_to_shape(Atom<T>{}, make_shape(Int<kMN>{}, Int<kK>{}), Step<_2, _1>{});
}

constexpr int operand_checks(int mn, int k, int block_mn, int block_k) {
  return (mn / block_mn) * (k / block_k) * 6 + mn * k;
}

const OracleCase kCases[] = {
    // K-major, 128B swizzle: Q (A, 64 x 128), K (B, 128 x 128), and a 128-row A (two M blocks).
    {"k_sw128_bf16_a64x128", operand_checks(64, 128, 64, 16),
     [](Tally& t, const char* n) {
       check_operand<Bf16KK, true, GMMA::Major::K, bf16>(
           t, n, tile<GMMA::Layout_K_SW128_Atom, bf16, 64, 128>(), kAligned);
     }},
    {"k_sw128_bf16_a128x128", operand_checks(128, 128, 64, 16),
     [](Tally& t, const char* n) {
       check_operand<Bf16KK, true, GMMA::Major::K, bf16>(
           t, n, tile<GMMA::Layout_K_SW128_Atom, bf16, 128, 128>(), kAligned);
     }},
    {"k_sw128_bf16_b128x128", operand_checks(128, 128, 128, 16),
     [](Tally& t, const char* n) {
       check_operand<Bf16KK, false, GMMA::Major::K, bf16>(
           t, n, tile<GMMA::Layout_K_SW128_Atom, bf16, 128, 128>(), kAligned);
     }},
    {"k_sw128_f16_a64x128", operand_checks(64, 128, 64, 16),
     [](Tally& t, const char* n) {
       check_operand<F16KK, true, GMMA::Major::K, f16>(
           t, n, tile<GMMA::Layout_K_SW128_Atom, f16, 64, 128>(), kAligned);
     }},
    {"k_sw128_f16_b128x128", operand_checks(128, 128, 128, 16),
     [](Tally& t, const char* n) {
       check_operand<F16KK, false, GMMA::Major::K, f16>(
           t, n, tile<GMMA::Layout_K_SW128_Atom, f16, 128, 128>(), kAligned);
     }},
    // A tile starting at row 3 of a swizzle pattern that itself starts 1024-byte aligned (the
    // swizzle follows absolute addresses, so base offset 0), as k-step descriptors start 32
    // bytes into one.
    {"k_sw128_bf16_a64x128_mid_pattern", operand_checks(64, 128, 64, 16),
     [](Tally& t, const char* n) {
       check_operand<Bf16KK, true, GMMA::Major::K, bf16>(
           t, n, tile<GMMA::Layout_K_SW128_Atom, bf16, 64, 128>(), kMidPattern);
     }},
    // MN-major, 128B swizzle: V as the B operand of O += P V (N = 128 head dims, K = 128 keys).
    {"mn_sw128_bf16_b128x128", operand_checks(128, 128, 128, 16),
     [](Tally& t, const char* n) {
       check_operand<Bf16KMN, false, GMMA::Major::MN, bf16>(
           t, n, tile<GMMA::Layout_MN_SW128_Atom, bf16, 128, 128>(), kAligned);
     }},
    // ... laid out as TMA loads V (rows of 64 head dims per key, all keys of one 64-wide half
    // before the next half): LBO = 16384 between the halves, SBO = 1024 between 8-key groups.
    {"mn_sw128_bf16_b128x128_k_first", operand_checks(128, 128, 128, 16),
     [](Tally& t, const char* n) {
       check_operand<Bf16KMN, false, GMMA::Major::MN, bf16>(
           t, n, tile_k_first<GMMA::Layout_MN_SW128_Atom, bf16, 128, 128>(), kAligned);
     }},
    {"mn_sw128_bf16_b128x128_mid_pattern", operand_checks(128, 128, 128, 16),
     [](Tally& t, const char* n) {
       check_operand<Bf16KMN, false, GMMA::Major::MN, bf16>(
           t, n, tile<GMMA::Layout_MN_SW128_Atom, bf16, 128, 128>(), kMidPattern);
     }},
    {"mn_sw128_bf16_a64x128", operand_checks(64, 128, 64, 16),
     [](Tally& t, const char* n) {
       check_operand<Bf16MNK, true, GMMA::Major::MN, bf16>(
           t, n, tile<GMMA::Layout_MN_SW128_Atom, bf16, 64, 128>(), kAligned);
     }},
    // FP8 GEMM: K-major e4m3, 128B swizzle, 128-byte K blocks, k32 steps of 32 bytes.
    {"k_sw128_e4m3_a64x128", operand_checks(64, 128, 64, 32),
     [](Tally& t, const char* n) {
       check_operand<E4m3, true, GMMA::Major::K, e4m3>(
           t, n, tile<GMMA::Layout_K_SW128_Atom, e4m3, 64, 128>(), kAligned);
     }},
    {"k_sw128_e4m3_a128x128", operand_checks(128, 128, 64, 32),
     [](Tally& t, const char* n) {
       check_operand<E4m3, true, GMMA::Major::K, e4m3>(
           t, n, tile<GMMA::Layout_K_SW128_Atom, e4m3, 128, 128>(), kAligned);
     }},
    {"k_sw128_e4m3_b128x128", operand_checks(128, 128, 128, 32),
     [](Tally& t, const char* n) {
       check_operand<E4m3, false, GMMA::Major::K, e4m3>(
           t, n, tile<GMMA::Layout_K_SW128_Atom, e4m3, 128, 128>(), kAligned);
     }},
    // The other swizzle modes, K-major and MN-major.
    {"k_sw64_bf16_a64x128", operand_checks(64, 128, 64, 16),
     [](Tally& t, const char* n) {
       check_operand<Bf16KK, true, GMMA::Major::K, bf16>(
           t, n, tile<GMMA::Layout_K_SW64_Atom, bf16, 64, 128>(), kAligned);
     }},
    {"k_sw32_bf16_a64x128", operand_checks(64, 128, 64, 16),
     [](Tally& t, const char* n) {
       check_operand<Bf16KK, true, GMMA::Major::K, bf16>(
           t, n, tile<GMMA::Layout_K_SW32_Atom, bf16, 64, 128>(), kAligned);
     }},
    {"k_inter_bf16_a64x128", operand_checks(64, 128, 64, 16),
     [](Tally& t, const char* n) {
       check_operand<Bf16KK, true, GMMA::Major::K, bf16>(
           t, n, tile<GMMA::Layout_K_INTER_Atom, bf16, 64, 128>(), kAligned);
     }},
    {"k_inter_bf16_b128x128", operand_checks(128, 128, 128, 16),
     [](Tally& t, const char* n) {
       check_operand<Bf16KK, false, GMMA::Major::K, bf16>(
           t, n, tile<GMMA::Layout_K_INTER_Atom, bf16, 128, 128>(), kAligned);
     }},
    {"mn_sw64_bf16_b128x128", operand_checks(128, 128, 128, 16),
     [](Tally& t, const char* n) {
       check_operand<Bf16KMN, false, GMMA::Major::MN, bf16>(
           t, n, tile<GMMA::Layout_MN_SW64_Atom, bf16, 128, 128>(), kAligned);
     }},
    {"mn_sw32_bf16_b128x128", operand_checks(128, 128, 128, 16),
     [](Tally& t, const char* n) {
       check_operand<Bf16KMN, false, GMMA::Major::MN, bf16>(
           t, n, tile<GMMA::Layout_MN_SW32_Atom, bf16, 128, 128>(), kAligned);
     }},
    {"mn_inter_bf16_b128x128", operand_checks(128, 128, 128, 16),
     [](Tally& t, const char* n) {
       check_operand<Bf16KMN, false, GMMA::Major::MN, bf16>(
           t, n, tile<GMMA::Layout_MN_INTER_Atom, bf16, 128, 128>(), kAligned);
     }},
    {"mn_inter_bf16_b128x128_k_first", operand_checks(128, 128, 128, 16),
     [](Tally& t, const char* n) {
       check_operand<Bf16KMN, false, GMMA::Major::MN, bf16>(
           t, n, tile_k_first<GMMA::Layout_MN_INTER_Atom, bf16, 128, 128>(), kAligned);
     }},
    // swizzle_address against CuTe's Swizzle<B, 4, 3> on every byte address of 64 KiB.
    {"swizzle", 4 * 65536,
     [](Tally& t, const char*) {
       auto check_mode = [&t](int bytes, auto cute_swizzle) {
         for (uint32_t address = 0; address < 65536; ++address) {
           const uint32_t ours = dsa_emu::swizzle_address(address, bytes);
           const auto cute = uint32_t(cute_swizzle(address));
           t.check(ours == cute, "swizzle " + std::to_string(bytes) + " of " + hex(address) +
                                     ": ours " + hex(ours) + ", cute " + hex(cute));
         }
       };
       check_mode(0, Swizzle<0, 4, 3>{});
       check_mode(32, Swizzle<1, 4, 3>{});
       check_mode(64, Swizzle<2, 4, 3>{});
       check_mode(128, Swizzle<3, 4, 3>{});
     }},
    // decode_gmma_descriptor against CuTe's bitfields on arbitrary 64-bit patterns, so every bit
    // of every field (base offset included, which CuTe's layouts always leave 0) is exercised.
    {"descriptor_bits", 4096 * 5,
     [](Tally& t, const char*) {
       uint64_t state = 0x9e3779b97f4a7c15ull;
       for (int i = 0; i < 4096; ++i) {
         state ^= state << 13, state ^= state >> 7, state ^= state << 17;  // xorshift64
         check_fields(t, "pattern " + std::to_string(i), cute::GmmaDescriptor(state));
       }
     }},
};

}  // namespace

int main(int argc, char** argv) { return run_oracle_cases("cute gmma oracle", kCases, argc, argv); }
