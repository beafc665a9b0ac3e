#pragma once
// Fragment ownership of the warp-level tensor-core instructions, as the PTX ISA defines them
// ("Matrix Fragments for mma.m16n8k16 / mma.m16n8k32", "ldmatrix", and wgmma's "Register
// Fragments"). The emulated mma and
// ldmatrix read and write registers through these tables only, and tests/emulation/ compares
// them, lane by lane and value by value, with CUTLASS CuTe's MMA_Traits / Copy_Traits.
//
// A value index `v` counts the elements a lane holds in register order: register v / kPerReg,
// element v % kPerReg inside it (element 0 in the low bits). groupID = lane / 4, quad = lane % 4.

namespace dsa_emu {

struct FragmentCoord {
  int row;
  int col;
};

// mma.m16n8k16 with f16/bf16 inputs: A is 16x16 (row, k), 4 registers of 2 elements.
inline FragmentCoord mma_m16n8k16_a(int lane, int v) {
  const int reg = v / 2, element = v % 2;
  return {lane / 4 + 8 * (reg % 2), (lane % 4) * 2 + element + 8 * (reg / 2)};
}
// B is 16x8 (k, n), 2 registers of 2 elements.
inline FragmentCoord mma_m16n8k16_b(int lane, int v) {
  const int reg = v / 2, element = v % 2;
  return {(lane % 4) * 2 + element + 8 * reg, lane / 4};
}
// C/D of every m16n8 shape: 16x8 (row, n), 4 fp32 registers.
inline FragmentCoord mma_m16n8_c(int lane, int v) {
  return {lane / 4 + 8 * (v / 2), (lane % 4) * 2 + v % 2};
}

// mma.m16n8k32 with e4m3 inputs: A is 16x32 (row, k), 4 registers of 4 bytes.
inline FragmentCoord mma_m16n8k32_a(int lane, int v) {
  const int reg = v / 4, element = v % 4;
  return {lane / 4 + 8 * (reg % 2), (lane % 4) * 4 + element + 16 * (reg / 2)};
}
// B is 32x8 (k, n), 2 registers of 4 bytes.
inline FragmentCoord mma_m16n8k32_b(int lane, int v) {
  const int reg = v / 4, element = v % 4;
  return {(lane % 4) * 4 + element + 16 * reg, lane / 4};
}

// ldmatrix .m8n8 .b16: in each 8x8 matrix, lane holds 2 elements of row lane / 4 (columns
// 2·(lane % 4) and +1); with .trans the matrix is transposed on the way. Matrix j goes to
// register j; its 8 row addresses come from lanes 8j..8j+7.
inline FragmentCoord ldmatrix_m8n8(int lane, int v, bool transposed) {
  const int row = lane / 4, col = (lane % 4) * 2 + v;
  return transposed ? FragmentCoord{col, row} : FragmentCoord{row, col};
}

// wgmma.m64nNk16 (f16/bf16) register fragments, per thread t of the warpgroup (0..127): warp
// t / 32 owns rows 16 (t / 32) .. +15, laid out within the warp as mma.m16n8k16's A and C.
// A from registers is 64x16 (row, k), 4 registers of 2 elements.
inline FragmentCoord wgmma_m64k16_a(int thread, int v) {
  const FragmentCoord c = mma_m16n8k16_a(thread % 32, v);
  return {c.row + 16 * (thread / 32), c.col};
}
// D with fp32 accumulators is 64xN (row, n), N / 2 registers: value v is element v % 4 of the
// n8 tile v / 4.
inline FragmentCoord wgmma_m64n_c(int thread, int v) {
  const FragmentCoord c = mma_m16n8_c(thread % 32, v % 4);
  return {c.row + 16 * (thread / 32), c.col + 8 * (v / 4)};
}

}  // namespace dsa_emu
