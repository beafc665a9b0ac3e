#pragma once
// Where wgmma.mma_async finds its shared-memory operands, as the PTX ISA defines it ("Matrix
// Descriptor Format" and "Shared Memory Matrix Layout" of wgmma on sm_90a), and the swizzle
// pattern that TMA writes with. tests/emulation/cute_gmma_oracle.cpp checks every function here
// against CUTLASS CuTe (make_gmma_desc and the canonical GMMA shared-memory layouts).
//
// Addresses are shared-memory byte addresses (what cvta.to.shared gives), the space the
// descriptor's start address is encoded in.

#include <cstdint>

namespace dsa_emu {

// A 64-bit wgmma matrix descriptor with its fields decoded to bytes.
struct GmmaDescriptor {
  uint32_t start_address;        // of the operand's first element
  uint32_t leading_byte_offset;  // LBO; its meaning depends on major-ness and swizzle mode
  uint32_t stride_byte_offset;   // SBO
  uint32_t base_offset;          // 3 bits; non-zero when the swizzle pattern starts unaligned
  int swizzle_bytes;             // 0 (none, "interleave"), 32, 64 or 128
};

// Bits 0-13, 16-29 and 32-45 hold address >> 4 (18-bit addresses, 16-byte aligned); bits 49-51
// the base offset; bits 62-63 the mode: 0 none, 1 128B, 2 64B, 3 32B.
inline GmmaDescriptor decode_gmma_descriptor(uint64_t desc) {
  const auto bytes = [desc](int lowest_bit) {
    return uint32_t((desc >> lowest_bit) & 0x3fff) << 4;
  };
  static constexpr int kSwizzleBytes[4] = {0, 128, 64, 32};
  return {bytes(0), bytes(16), bytes(32), uint32_t((desc >> 49) & 0x7),
          kSwizzleBytes[(desc >> 62) & 0x3]};
}

// The 32/64/128-byte swizzle (CuTe Swizzle<1|2|3, 4, 3> on byte addresses): 16-byte chunk c
// (address bits 4..) of 128-byte line L (bits 7..) moves to chunk c ^ (L % (swizzle_bytes / 16)).
// It acts on absolute address bits, so the pattern repeats every 8 · swizzle_bytes bytes from 0;
// with 128-byte rows and 128B swizzle, chunk c of row r lands at c ^ (r % 8) in each 1024 bytes.
// 0 is the identity.
inline uint32_t swizzle_address(uint32_t byte_address, int swizzle_bytes) {
  if (swizzle_bytes == 0) return byte_address;
  const uint32_t chunk_bits = uint32_t(swizzle_bytes / 16 - 1) << 4;
  return byte_address ^ ((byte_address >> 3) & chunk_bits);  // line bits 7.. onto chunk bits 4..
}

// Shared-memory address of element (mn, k) of a wgmma operand read through descriptor `d`:
// mn < M (A) or N (B), k < the instruction's K (32 bytes of it); k_major means the transpose bit
// is 0. The canonical layouts are made of 16-byte chunks, W = swizzle_bytes / 16 of them per row
// (W = 1 without swizzle):
//   K-major, swizzled:  row r % 8 of M/N holds K in W chunks, rows W·16 bytes apart; SBO steps
//                       to the next 8 rows. LBO is unused: one row holds the instruction's K.
//   K-major, none:      core matrices of 8 rows x 16 bytes of K, rows 16 bytes apart; LBO steps
//                       to the next 16 bytes of K, SBO to the next 8 rows of M/N.
//   MN-major, swizzled: row k % 8 holds W chunks of M/N, rows W·16 bytes apart; LBO steps to
//                       the next W·16 bytes of M/N, SBO to the next 8 k.
//   MN-major, none:     core matrices of 8 k-rows x 16 bytes of M/N; SBO steps to the next 16
//                       bytes of M/N, LBO to the next 8 k (the roles swap without swizzle).
// The swizzle then applies to the absolute address, as TMA and CuTe lay data out; that is what
// base offset 0 means. Only base offset 0 is modelled: CuTe and our kernels never encode another,
// and the ISA does not spell out how the hardware applies one, so callers reject the rest.
inline uint32_t gmma_element_address(const GmmaDescriptor& d, bool k_major, int element_bytes,
                                     int mn, int k) {
  const uint32_t row_bytes = d.swizzle_bytes == 0 ? 16 : uint32_t(d.swizzle_bytes);
  const uint32_t mn_bytes = uint32_t(mn * element_bytes), k_bytes = uint32_t(k * element_bytes);
  uint32_t offset;
  if (k_major) {
    offset = uint32_t(mn % 8) * row_bytes + uint32_t(mn / 8) * d.stride_byte_offset;
    offset += d.swizzle_bytes == 0 ? (k_bytes / 16) * d.leading_byte_offset + k_bytes % 16
                                   : k_bytes;
  } else {
    const uint32_t mn_step = d.swizzle_bytes == 0 ? d.stride_byte_offset : d.leading_byte_offset;
    const uint32_t k_step = d.swizzle_bytes == 0 ? d.leading_byte_offset : d.stride_byte_offset;
    offset = mn_bytes % row_bytes + (mn_bytes / row_bytes) * mn_step;
    offset += uint32_t(k % 8) * row_bytes + uint32_t(k / 8) * k_step;
  }
  return swizzle_address(d.start_address + offset, d.swizzle_bytes);
}

}  // namespace dsa_emu
