// The CPU emulator's runtime (see README.md): fibers, the CTA scheduler, the warp collectives,
// the PTX twins, and the checker every kernel memory access goes through.
//
// Kernel code is compiled with GCC's thread-sanitizer instrumentation (-fsanitize=thread, a call
// before every access), so each load and store of a kernel reaches `check_access` below before
// it happens. Accesses outside a running kernel, and the
// runtime's own, are ignored (`g_checking`).

#include "emulation/runtime.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <vector>

#include "emulation/fragments.h"
#include "emulation/numeric.h"

#if !defined(__x86_64__)
#error "the emulator's fiber switch is written for x86-64 (dsa_emu_switch_stack below)"
#endif

namespace dsa_emu {
namespace {

constexpr int kWarpSize = 32;
constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kGuardBytes = 4096;
constexpr uint16_t kNobody = 0xffff;
constexpr uint16_t kManyThreads = 0xfffe;
constexpr int kStaticSharedAlignment = 16;

// ---------------------------------------------------------------------------------------------
// Fibers: a stack each and a saved stack pointer; a switch saves the callee-saved registers.

extern "C" void dsa_emu_switch_stack(void** save_sp, void* load_sp);
extern "C" void dsa_emu_fiber_trampoline();
asm(R"(
  .text
  .p2align 4
  .hidden dsa_emu_switch_stack
  .globl dsa_emu_switch_stack
dsa_emu_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .p2align 4
  .hidden dsa_emu_fiber_trampoline
  .globl dsa_emu_fiber_trampoline
dsa_emu_fiber_trampoline:
  movq %r12, %rdi
  call dsa_emu_fiber_main
  ud2
)");

enum class State : uint8_t { kRunnable, kAtBarrier, kAtCollective, kExited };
enum class Collective : uint8_t { kSyncwarp, kShfl, kBallot, kLdmatrix, kMma16, kMma32 };

const char* collective_name(Collective c) {
  switch (c) {
    case Collective::kSyncwarp:
      return "__syncwarp";
    case Collective::kShfl:
      return "__shfl_xor_sync";
    case Collective::kBallot:
      return "__ballot_sync";
    case Collective::kLdmatrix:
      return "ldmatrix";
    case Collective::kMma16:
      return "mma.sync.m16n8k16";
    case Collective::kMma32:
      return "mma.sync.m16n8k32";
  }
  return "?";
}

struct PendingCopy {
  uint8_t* shared;
  const uint8_t* global;
  int copy_bytes;
  int src_bytes;
};

struct Fiber {
  void* sp = nullptr;
  uint8_t* stack_low = nullptr;  // lowest usable byte; the guard page sits below
  int index = 0;                 // linear thread index in the CTA
  Dim3 tid;
  State state = State::kRunnable;
  const void* barrier_site = nullptr;  // the __syncthreads call it waits at
  // What it brought to the warp collective it waits at.
  Collective collective = Collective::kSyncwarp;
  unsigned mask = 0;
  uint64_t bits = 0;
  int lane_mask = 0;
  const void* address = nullptr;
  int matrices = 0;
  bool transposed = false;
  uint32_t a[4] = {};
  uint32_t b[2] = {};
  float* accumulators = nullptr;
  bool bf16 = false;
  uint32_t* out_registers = nullptr;
  uint64_t result = 0;
  // cp.async groups: the open one, then the committed ones, oldest first.
  std::vector<PendingCopy> open_group;
  std::deque<std::vector<PendingCopy>> committed;
};

// Shadow of one shared-memory byte within the current CTA.
struct SharedByte {
  uint32_t write_epoch = 0;  // barrier interval + 1 of the last write; 0: never written
  uint16_t writer = kNobody;
  uint16_t writer_syncwarps = 0;  // the writer's warp __syncwarp count at the write
  uint32_t read_epoch = 0;
  uint16_t reader = kNobody;  // kManyThreads when several threads read in read_epoch
  uint16_t reader_syncwarps = 0;
  uint16_t copy_in_flight = kNobody;  // thread whose cp.async targets it and has not landed
};

// Shadow of one global-memory byte within the current launch.
struct GlobalByte {
  int32_t writer_cta = -1;
  uint16_t writer = 0;
  bool atomic = false;
  bool many_reader_ctas = false;
  uint32_t writer_epoch = 0;
  int32_t reader_cta = -1;
  uint16_t reader = 0;
  uint32_t reader_epoch = 0;
};

struct Allocation {
  uintptr_t base;
  size_t bytes;
  std::string name;
  bool read_only;
  std::vector<GlobalByte> shadow;
  uint64_t shadow_launch = 0;  // the launch the shadow belongs to
};

struct SharedRegion {
  uint8_t* base = nullptr;
  size_t bytes = 0;
  const char* name = "";
  std::vector<SharedByte> shadow;
  std::unique_ptr<uint8_t[]> storage;  // static arrays own theirs
};

// --- Global state (one launch at a time, guarded by g_launch_mutex) --------------------------
std::mutex g_launch_mutex;
DeviceProperties g_device;
uint64_t g_schedule_seed = 0;
Counters g_counters;
std::map<uintptr_t, Allocation> g_allocations;
Allocation* g_last_allocation = nullptr;          // the one allocation_of found last
std::map<const void*, int> g_max_dynamic_shared;  // cudaFuncSetAttribute opt-ins

// The running launch.
bool g_checking = false;  // kernel code of a fiber is running: check its accesses
Fiber* g_current = nullptr;
void* g_scheduler_sp = nullptr;
std::vector<std::unique_ptr<Fiber>> g_fibers;  // the pool; the first block-size ones run
int g_threads = 0;
Dim3 g_grid, g_block, g_block_idx;
int g_cta = 0;
uint32_t g_epoch = 1;               // barrier interval + 1
std::vector<uint16_t> g_syncwarps;  // per warp
std::vector<int> g_warp_arrivals;   // per warp: lanes waiting at a warp collective
int g_barrier_arrivals = 0;         // threads waiting at __syncthreads
std::mt19937_64 g_shuffle;          // picks the next fiber when the schedule is shuffled
std::string g_kernel_name;
uint64_t g_launch_id = 0;
std::string g_fault;  // the first report of the launch
void (*g_run_thread)(void*) = nullptr;
void* g_context = nullptr;
uintptr_t g_parameters_begin = 0, g_parameters_end = 0;
SharedRegion g_dynamic_shared;
std::vector<uint8_t> g_dynamic_storage;
std::vector<std::unique_ptr<SharedRegion>> g_static_shared;  // DSA_STATIC_SHARED_ARRAY regions

}  // namespace
}  // namespace dsa_emu

namespace dsa_emu {
namespace {

// --- Reports ---------------------------------------------------------------------------------

std::string format_dim3(Dim3 d) {
  std::ostringstream s;
  s << "(" << d.x << "," << d.y << "," << d.z << ")";
  return s.str();
}

std::string thread_name(int index) {
  const Dim3 t{unsigned(index % g_block.x), unsigned(index / g_block.x % g_block.y),
               unsigned(index / (g_block.x * g_block.y))};
  std::ostringstream s;
  s << "thread " << format_dim3(t) << " (warp " << index / kWarpSize << ", lane "
    << index % kWarpSize << ")";
  return s.str();
}

std::string kernel_name_of(const void* kernel) {
  Dl_info info;
  if (dladdr(kernel, &info) == 0 || info.dli_sname == nullptr) return "<kernel>";
  int status = 0;
  char* demangled = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
  std::string name = status == 0 && demangled ? demangled : info.dli_sname;
  std::free(demangled);
  // Drop a template's return type and our namespace: the rest names the instantiation.
  for (const std::string prefix : {"void ", "deepseek_attn::cuda::"}) {
    if (name.rfind(prefix, 0) == 0) name = name.substr(prefix.size());
  }
  const size_t arguments = name.find('(');  // the template arguments say enough
  return arguments == std::string::npos ? name : name.substr(0, arguments);
}

std::string where_in_kernel(int thread) {
  return g_kernel_name + ", block " + format_dim3(g_block_idx) + ", " + thread_name(thread);
}

// Leaves the running fiber for good once a fault is recorded: the scheduler ends the launch.
[[noreturn]] void abandon_fiber();
// Records `report` at the running thread (kernel, block, thread appended), then abandons it.
[[noreturn]] void fault_from_fiber(const std::string& report);

void record_fault(const std::string& report) {
  if (g_fault.empty()) g_fault = "deepseek_attn emulator: " + report;
}

std::string hex(uintptr_t value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "0x%lx", static_cast<unsigned long>(value));
  return buffer;
}

// Names the nearest known memory for an address that is in none.
std::string describe_wild_address(uintptr_t address, size_t bytes, const char* what) {
  std::ostringstream s;
  s << bytes << "-byte " << what << " at " << hex(address);
  std::vector<const SharedRegion*> regions = {&g_dynamic_shared};
  for (const auto& region : g_static_shared) regions.push_back(region.get());
  for (const SharedRegion* region : regions) {
    const uintptr_t base = reinterpret_cast<uintptr_t>(region->base);
    if (region->base != nullptr && address >= base && address < base + region->bytes + 4096) {
      s << " is " << address - base - region->bytes << " bytes past the end of " << region->name
        << " (" << region->bytes << " bytes)";
      return s.str();
    }
  }
  auto next = g_allocations.upper_bound(address);
  if (next != g_allocations.begin()) {
    const Allocation& before = std::prev(next)->second;
    s << " is " << address - before.base - before.bytes << " bytes past the end of '" << before.name
      << "' (" << before.bytes << " bytes)";
  } else if (next != g_allocations.end()) {
    s << " is " << next->second.base - address << " bytes before '" << next->second.name << "'";
  } else {
    s << " is outside every allocation";
  }
  return s.str();
}

// --- Shared-memory checks ------------------------------------------------------------------

uint16_t syncwarps_of(int thread) { return g_syncwarps[thread / kWarpSize]; }

// True when `other`'s access (made at its warp's __syncwarp count `count`) is ordered before
// `thread`'s by a __syncwarp of their common warp.
bool warp_synchronised(int other, uint16_t count, int thread) {
  return other / kWarpSize == thread / kWarpSize && syncwarps_of(thread) > count;
}

bool contains(const SharedRegion& region, uintptr_t address) {
  const uintptr_t base = reinterpret_cast<uintptr_t>(region.base);
  return region.bytes != 0 && address >= base && address < base + region.bytes;
}

SharedRegion* shared_region_of(uintptr_t address) {
  if (contains(g_dynamic_shared, address)) return &g_dynamic_shared;
  for (const auto& region : g_static_shared) {
    if (contains(*region, address)) return region.get();
  }
  return nullptr;
}

std::string shared_location(const SharedRegion& region, uintptr_t address) {
  return std::string(region.name) + "+" + hex(address - reinterpret_cast<uintptr_t>(region.base));
}

// Checks and records a read (or write) of `bytes` shared bytes by `thread`; returns a report
// or an empty string.
std::string check_shared(SharedRegion& region, uintptr_t address, size_t bytes, bool write,
                         int thread, const char* what) {
  const uintptr_t base = reinterpret_cast<uintptr_t>(region.base);
  if (address + bytes > base + region.bytes) {
    return std::string(what) + " of " + std::to_string(bytes) + " bytes at " +
           shared_location(region, address) + " runs past the end of " + region.name + " (" +
           std::to_string(region.bytes) + " bytes)";
  }
  // A fault ends the launch, so each byte is checked and then recorded in one pass.
  const uint16_t syncwarps = syncwarps_of(thread);
  for (size_t i = 0; i < bytes; ++i) {
    SharedByte& s = region.shadow[address - base + i];
    const auto location = [&] { return shared_location(region, address + i); };
    if (s.copy_in_flight != kNobody) {
      return std::string(what) + " touches " + location() + ", the destination of a cp.async by " +
             thread_name(s.copy_in_flight) +
             " that has not landed (no cp.async.wait_group covers it yet)";
    }
    if (!write && s.write_epoch == 0) {
      return std::string(what) + " reads " + location() + ", which no thread has written";
    }
    if (s.write_epoch == g_epoch && s.writer != thread &&
        !warp_synchronised(s.writer, s.writer_syncwarps, thread)) {
      return std::string("shared-memory race: ") + what + " at " + location() + " and a write by " +
             thread_name(s.writer) + " in the same barrier interval (no __syncthreads between)";
    }
    if (write) {
      if (s.read_epoch == g_epoch && s.reader != thread &&
          (s.reader == kManyThreads || !warp_synchronised(s.reader, s.reader_syncwarps, thread))) {
        return std::string("shared-memory race: ") + what + " overwrites " + location() +
               " read by " + (s.reader == kManyThreads ? "other threads" : thread_name(s.reader)) +
               " in the same barrier interval (no __syncthreads between)";
      }
      s.write_epoch = g_epoch;
      s.writer = uint16_t(thread);
      s.writer_syncwarps = syncwarps;
    } else if (s.read_epoch == g_epoch && s.reader != thread) {
      s.reader = kManyThreads;
    } else {
      s.read_epoch = g_epoch;
      s.reader = uint16_t(thread);
      s.reader_syncwarps = syncwarps;
    }
  }
  return {};
}

// --- Global-memory checks ------------------------------------------------------------------

Allocation* allocation_of(uintptr_t address) {
  const auto contains = [address](const Allocation* a) {
    return a != nullptr && address >= a->base && address < a->base + a->bytes;
  };
  if (contains(g_last_allocation)) return g_last_allocation;  // accesses come in runs
  auto next = g_allocations.upper_bound(address);
  if (next == g_allocations.begin()) return nullptr;
  Allocation* candidate = &std::prev(next)->second;
  if (!contains(candidate)) return nullptr;
  g_last_allocation = candidate;
  return candidate;
}

// Another thread's access conflicts unless it is this CTA's and a barrier separates the two.
bool conflicts(int32_t cta, uint16_t thread, uint32_t epoch, int current_thread) {
  return cta != g_cta || (thread != current_thread && epoch == g_epoch);
}

std::string cta_thread_name(int32_t cta, uint16_t thread) {
  if (cta != g_cta) return "block " + std::to_string(cta) + " (linear index)";
  return thread == kManyThreads ? std::string("several threads of this block")
                                : thread_name(thread);
}

enum class GlobalAccess { kRead, kWrite, kAtomic };

std::string check_global(uintptr_t address, size_t bytes, GlobalAccess kind, int thread,
                         const char* what) {
  Allocation* allocation = allocation_of(address);
  if (allocation == nullptr) return describe_wild_address(address, bytes, what);
  if (address + bytes > allocation->base + allocation->bytes) {
    return std::string(what) + " of " + std::to_string(bytes) + " bytes at offset " +
           std::to_string(address - allocation->base) + " of '" + allocation->name +
           "' runs past its end (" + std::to_string(allocation->bytes) + " bytes)";
  }
  if (kind != GlobalAccess::kRead && allocation->read_only) {
    return std::string(what) + " writes the read-only input '" + allocation->name + "' at offset " +
           std::to_string(address - allocation->base);
  }
  if (allocation->shadow_launch != g_launch_id) {
    allocation->shadow.assign(allocation->bytes, GlobalByte{});
    allocation->shadow_launch = g_launch_id;
  }
  const size_t offset = address - allocation->base;
  // A fault ends the launch, so each byte is checked and then recorded in one pass.
  for (size_t i = 0; i < bytes; ++i) {
    GlobalByte& s = allocation->shadow[offset + i];
    const auto location = [&] {
      return "offset " + std::to_string(offset + i) + " of '" + allocation->name + "'";
    };
    const bool atomic_pair = kind == GlobalAccess::kAtomic && s.atomic;
    if (s.writer_cta >= 0 && !atomic_pair &&
        conflicts(s.writer_cta, s.writer, s.writer_epoch, thread)) {
      return std::string("global-memory race: ") + what + " at " + location() + " and a " +
             (s.atomic ? "atomic " : "") + "write by " + cta_thread_name(s.writer_cta, s.writer) +
             " in the same launch";
    }
    if (kind == GlobalAccess::kRead) {
      if (s.reader_cta >= 0 && s.reader_cta != g_cta) s.many_reader_ctas = true;
      const bool another_reader_now =
          s.reader_cta == g_cta && s.reader_epoch == g_epoch && s.reader != thread;
      s.reader_cta = g_cta;
      s.reader = another_reader_now ? kManyThreads : uint16_t(thread);
      s.reader_epoch = g_epoch;
      continue;
    }
    if (s.reader_cta >= 0 &&
        (s.many_reader_ctas || conflicts(s.reader_cta, s.reader, s.reader_epoch, thread))) {
      return std::string("global-memory race: ") + what + " writes " + location() + " read by " +
             (s.many_reader_ctas ? std::string("other blocks")
                                 : cta_thread_name(s.reader_cta, s.reader)) +
             " in the same launch";
    }
    s.writer_cta = g_cta;
    s.writer = uint16_t(thread);
    s.writer_epoch = g_epoch;
    s.atomic = kind == GlobalAccess::kAtomic;
  }
  return {};
}

// Accesses of 2, 4, 8 or 16 bytes are scalar or vector loads/stores: the GPU faults unless they
// are naturally aligned. Other sizes are aggregate copies, checked per element by the hardware.
bool is_naturally_aligned(uintptr_t address, size_t bytes) {
  const bool vector_size = bytes == 2 || bytes == 4 || bytes == 8 || bytes == 16;
  return !vector_size || address % bytes == 0;
}

// The checks of one access to device memory (shared or global) by `thread`; a report or "".
std::string check_device_access(uintptr_t address, size_t bytes, GlobalAccess kind, int thread,
                                const char* what) {
  if (!is_naturally_aligned(address, bytes)) {  // vector accesses must be aligned
    return std::string("misaligned ") + std::to_string(bytes) + "-byte " + what + " at " +
           hex(address);
  }
  if (SharedRegion* region = shared_region_of(address)) {
    return check_shared(*region, address, bytes, kind != GlobalAccess::kRead, thread, what);
  }
  return check_global(address, bytes, kind, thread, what);
}

// Every instrumented load and store of kernel code lands here (from the hooks at the bottom).
void check_access(uintptr_t address, size_t bytes, bool write) {
  Fiber* fiber = g_current;
  if (address - reinterpret_cast<uintptr_t>(fiber->stack_low) < kStackBytes) return;  // locals
  const char* what = write ? "store" : "load";
  std::string report;
  if (address >= g_parameters_begin && address < g_parameters_end) {
    if (write || address + bytes > g_parameters_end) {
      report =
          std::string(what) + " at " + hex(address) + " goes beyond reading the kernel parameters";
    }
  } else {
    report = check_device_access(address, bytes, write ? GlobalAccess::kWrite : GlobalAccess::kRead,
                                 fiber->index, what);
  }
  if (!report.empty()) fault_from_fiber(report);
}

// Enter runtime code from a fiber: its own memory accesses are not the kernel's.
struct RuntimeSection {
  RuntimeSection() { g_checking = false; }
  ~RuntimeSection() { g_checking = true; }
};

// --- Scheduling --------------------------------------------------------------------------------

void switch_to_scheduler() {
  Fiber* fiber = g_current;
  ++g_counters.fiber_switches;
  dsa_emu_switch_stack(&fiber->sp, g_scheduler_sp);
}

void abandon_fiber() {
  g_checking = false;
  g_current->state = State::kExited;
  switch_to_scheduler();
  std::abort();  // never resumed
}

void fault_from_fiber(const std::string& report) {
  record_fault(report + " [" + where_in_kernel(g_current->index) + "]");
  abandon_fiber();
}

}  // namespace
}  // namespace dsa_emu

// Where every fiber starts (the trampoline passes it its Fiber): run the kernel, then leave.
extern "C" __attribute__((used, visibility("hidden"))) void dsa_emu_fiber_main(
    dsa_emu::Fiber* fiber) {
  dsa_emu::g_checking = true;
  dsa_emu::g_run_thread(dsa_emu::g_context);
  dsa_emu::g_checking = false;
  fiber->state = dsa_emu::State::kExited;
  dsa_emu::switch_to_scheduler();
  std::abort();  // an exited fiber is never resumed
}

namespace dsa_emu {
namespace {

Fiber& fiber_for_thread(int index) {
  while (int(g_fibers.size()) <= index) {
    auto fiber = std::make_unique<Fiber>();
    void* memory = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (memory == MAP_FAILED)
      throw std::runtime_error("deepseek_attn emulator: out of memory for fiber stacks");
    mprotect(memory, kGuardBytes, PROT_NONE);  // a stack overflow faults instead of corrupting
    fiber->stack_low = static_cast<uint8_t*>(memory) + kGuardBytes;
    g_fibers.push_back(std::move(fiber));
  }
  return *g_fibers[index];
}

// Prepares the fiber to start the kernel from its first instruction.
void reset_fiber(Fiber& fiber, int index) {
  fiber.index = index;
  fiber.tid = {unsigned(index % g_block.x), unsigned(index / g_block.x % g_block.y),
               unsigned(index / (g_block.x * g_block.y))};
  fiber.state = State::kRunnable;
  fiber.open_group.clear();
  fiber.committed.clear();
  uintptr_t top = (reinterpret_cast<uintptr_t>(fiber.stack_low) + kStackBytes) & ~uintptr_t(15);
  void** frame = reinterpret_cast<void**>(top - 72);  // r15 r14 r13 r12 rbx rbp, return address
  for (int i = 0; i < 6; ++i) frame[i] = nullptr;
  frame[3] = &fiber;  // r12: the trampoline's argument
  frame[6] = reinterpret_cast<void*>(&dsa_emu_fiber_trampoline);
  fiber.sp = frame;
}

void run_fiber(Fiber& fiber) {
  g_current = &fiber;
  ++g_counters.fiber_switches;
  dsa_emu_switch_stack(&g_scheduler_sp, fiber.sp);
  g_current = nullptr;
}

// --- Warp collectives -------------------------------------------------------------------------

uint16_t read_b16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

void complete_ldmatrix(Fiber* const* lanes) {
  const Fiber& first = *lanes[0];
  const int matrices = first.matrices;
  uint16_t elements[4][8][8];
  for (int m = 0; m < matrices; ++m) {
    for (int row = 0; row < 8; ++row) {
      const Fiber& source = *lanes[8 * m + row];
      const uintptr_t address = reinterpret_cast<uintptr_t>(source.address);
      std::string report;
      SharedRegion* region = shared_region_of(address);
      if (address % 16 != 0) {
        report = "ldmatrix row address " + hex(address) + " is not 16-byte aligned";
      } else if (region == nullptr) {
        report = describe_wild_address(address, 16, "ldmatrix row") + " (must be shared memory)";
      } else {
        report = check_shared(*region, address, 16, false, source.index, "ldmatrix");
      }
      if (!report.empty()) {
        record_fault(report + " [" + where_in_kernel(source.index) + "]");
        return;
      }
      for (int col = 0; col < 8; ++col) {
        elements[m][row][col] = read_b16(reinterpret_cast<const uint8_t*>(address) + 2 * col);
      }
    }
  }
  for (int lane = 0; lane < kWarpSize; ++lane) {
    for (int m = 0; m < matrices; ++m) {
      uint32_t reg = 0;
      for (int v = 0; v < 2; ++v) {
        const FragmentCoord c = ldmatrix_m8n8(lane, v, first.transposed);
        reg |= uint32_t(elements[m][c.row][c.col]) << (16 * v);
      }
      lanes[lane]->out_registers[m] = reg;
    }
  }
}

// Four fp32 lanes of an SSE register (GCC vector extension): the row of an mma kept in registers.
typedef float Float4 __attribute__((vector_size(16)));

template <typename Decode>
void gather_operands(Fiber* const* lanes, int values_a, int values_b, int bits,
                     FragmentCoord (*a_coord)(int, int), FragmentCoord (*b_coord)(int, int),
                     float (*a)[32], Float4 (*b)[2], Decode decode) {
  const int per_register = 32 / bits;
  for (int lane = 0; lane < kWarpSize; ++lane) {
    const Fiber& f = *lanes[lane];
    for (int v = 0; v < values_a; ++v) {
      const FragmentCoord at = a_coord(lane, v);
      a[at.row][at.col] = decode(f.a[v / per_register] >> (bits * (v % per_register)));
    }
    for (int v = 0; v < values_b; ++v) {
      const FragmentCoord at = b_coord(lane, v);
      b[at.row][at.col / 4][at.col % 4] =
          decode(f.b[v / per_register] >> (bits * (v % per_register)));
    }
  }
}

template <int kK>
void complete_mma(Fiber* const* lanes) {
  float a[16][32];
  Float4 b[kK][2];  // row k of B: columns 0-3 and 4-7
  if (kK == 16 && lanes[0]->bf16) {
    gather_operands(lanes, 8, 4, 16, mma_m16n8k16_a, mma_m16n8k16_b, a, b,
                    [](uint32_t raw) { return bf16_to_float(uint16_t(raw)); });
  } else if (kK == 16) {
    gather_operands(lanes, 8, 4, 16, mma_m16n8k16_a, mma_m16n8k16_b, a, b,
                    [](uint32_t raw) { return half_to_float(uint16_t(raw)); });
  } else {
    gather_operands(lanes, 16, 8, 8, mma_m16n8k32_a, mma_m16n8k32_b, a, b,
                    [](uint32_t raw) { return e4m3_to_float(uint8_t(raw)); });
  }
  Float4 c[16][2];
  for (int lane = 0; lane < kWarpSize; ++lane) {
    for (int v = 0; v < 4; ++v) {
      const FragmentCoord at = mma_m16n8_c(lane, v);
      c[at.row][at.col / 4][at.col % 4] = lanes[lane]->accumulators[v];
    }
  }
  // Products of bf16, fp16 or e4m3 values are exact in fp32, so a multiply and an add give
  // the fused result; each sum runs in k order, rounded to fp32 at every step (the vectors
  // hold different columns, never parts of one sum).
  for (int m = 0; m < 16; ++m) {
    Float4 low = c[m][0], high = c[m][1];
    for (int k = 0; k < kK; ++k) {
      low += a[m][k] * b[k][0];
      high += a[m][k] * b[k][1];
    }
    c[m][0] = low;
    c[m][1] = high;
  }
  for (int lane = 0; lane < kWarpSize; ++lane) {
    for (int v = 0; v < 4; ++v) {
      const FragmentCoord at = mma_m16n8_c(lane, v);
      lanes[lane]->accumulators[v] = c[at.row][at.col / 4][at.col % 4];
    }
  }
  ++g_counters.mma;
}

// Completes the collective the lanes of one warp wait at, or records why it cannot complete.
void complete_collective(int warp, int lanes_in_warp) {
  Fiber* lanes[kWarpSize] = {};
  for (int lane = 0; lane < lanes_in_warp; ++lane)
    lanes[lane] = g_fibers[warp * kWarpSize + lane].get();
  const Fiber* leader = nullptr;
  for (int lane = 0; lane < lanes_in_warp && leader == nullptr; ++lane) {
    if (lanes[lane]->state == State::kAtCollective) leader = lanes[lane];
  }
  if (leader == nullptr) return;
  const unsigned mask = leader->mask;
  const bool whole_warp = leader->collective == Collective::kLdmatrix ||
                          leader->collective == Collective::kMma16 ||
                          leader->collective == Collective::kMma32;
  const unsigned existing = lanes_in_warp == 32 ? 0xffffffffu : (1u << lanes_in_warp) - 1u;
  if ((mask & ~existing) != 0 || (whole_warp && mask != existing)) {
    record_fault(std::string(collective_name(leader->collective)) + " with mask " + hex(mask) +
                 " in a warp of " + std::to_string(lanes_in_warp) + " threads [" +
                 where_in_kernel(leader->index) + "]");
    return;
  }
  for (int lane = 0; lane < lanes_in_warp; ++lane) {
    const Fiber& f = *lanes[lane];
    if (!(mask >> lane & 1u)) continue;
    if (f.state != State::kAtCollective || f.collective != leader->collective || f.mask != mask) {
      const char* elsewhere = f.state == State::kExited         ? "has exited"
                              : f.state == State::kAtBarrier    ? "waits at __syncthreads"
                              : f.state == State::kAtCollective ? collective_name(f.collective)
                                                                : "is elsewhere";
      record_fault(std::string("warp divergence: ") + thread_name(leader->index) + " waits at " +
                   collective_name(leader->collective) + " (mask " + hex(mask) + ") but " +
                   thread_name(f.index) + " " +
                   (f.state == State::kAtCollective
                        ? std::string("waits at ") + elsewhere + " (mask " + hex(f.mask) + ")"
                        : std::string(elsewhere)) +
                   " [" + g_kernel_name + ", block " + format_dim3(g_block_idx) + "]");
      return;
    }
  }
  switch (leader->collective) {
    case Collective::kSyncwarp:
      ++g_syncwarps[warp];
      break;
    case Collective::kShfl:
      for (int lane = 0; lane < lanes_in_warp; ++lane) {
        if (!(mask >> lane & 1u)) continue;
        const int source = lane ^ lanes[lane]->lane_mask;
        if (source >= lanes_in_warp || !(mask >> source & 1u)) {
          record_fault("__shfl_xor_sync reads lane " + std::to_string(source) +
                       ", which is not in its mask " + hex(mask) + " [" +
                       where_in_kernel(lanes[lane]->index) + "]");
          return;
        }
        lanes[lane]->result = lanes[source]->bits;
      }
      break;
    case Collective::kBallot: {
      uint64_t votes = 0;
      for (int lane = 0; lane < lanes_in_warp; ++lane) {
        if ((mask >> lane & 1u) && lanes[lane]->bits) votes |= 1ull << lane;
      }
      for (int lane = 0; lane < lanes_in_warp; ++lane) lanes[lane]->result = votes;
      break;
    }
    case Collective::kLdmatrix:
      complete_ldmatrix(lanes);
      break;
    case Collective::kMma16:
      complete_mma<16>(lanes);
      break;
    case Collective::kMma32:
      complete_mma<32>(lanes);
      break;
  }
  for (int lane = 0; lane < lanes_in_warp; ++lane) {
    if (mask >> lane & 1u) {
      lanes[lane]->state = State::kRunnable;
      --g_warp_arrivals[warp];
    }
  }
}

std::string deadlock_report() {
  int at_barrier = 0, exited = 0, first_barrier = -1, first_exited = -1;
  for (int t = 0; t < g_threads; ++t) {
    const Fiber& f = *g_fibers[t];
    if (f.state == State::kAtBarrier && at_barrier++ == 0) first_barrier = t;
    if (f.state == State::kExited && exited++ == 0) first_exited = t;
  }
  std::ostringstream s;
  s << "deadlock: __syncthreads is not reached by every thread of the block: " << at_barrier
    << " of " << g_threads << " threads wait at it (first: " << thread_name(first_barrier) << ")";
  if (exited > 0)
    s << ", " << exited << " have exited (first: " << thread_name(first_exited) << ")";
  s << " [" << g_kernel_name << ", block " << format_dim3(g_block_idx) << "]";
  return s.str();
}

std::string code_location(const void* address) {
  Dl_info info;
  if (dladdr(address, &info) == 0 || info.dli_sname == nullptr)
    return hex(reinterpret_cast<uintptr_t>(address));
  return kernel_name_of(info.dli_saddr) + "+" +
         hex(reinterpret_cast<uintptr_t>(address) - reinterpret_cast<uintptr_t>(info.dli_saddr));
}

// __syncthreads is bar.sync.aligned: every thread must execute the same one (a barrier inside
// code that only some threads run is a bug even where the hardware happens to release it).
bool same_barrier_everywhere() {
  const Fiber& first = *g_fibers[0];
  for (int t = 1; t < g_threads; ++t) {
    const Fiber& other = *g_fibers[t];
    if (other.barrier_site != first.barrier_site) {
      record_fault("barrier divergence: " + thread_name(first.index) +
                   " waits at the __syncthreads at " + code_location(first.barrier_site) + " but " +
                   thread_name(other.index) + " at the one at " +
                   code_location(other.barrier_site) + " [" + g_kernel_name + ", block " +
                   format_dim3(g_block_idx) + "]");
      return false;
    }
  }
  return true;
}

void reset_shared(SharedRegion& region) {
  region.shadow.assign(region.bytes, SharedByte{});
  // Fresh shared memory holds garbage on a GPU: NaN bytes make unchecked stale reads visible.
  if (region.bytes != 0) std::memset(region.base, 0xff, region.bytes);
}

// Runs one CTA to completion; returns false when it faulted (g_fault holds the report).
// Collectives and barriers complete as their last participant arrives (see join_collective
// and syncthreads); the scheduler only starts fibers and diagnoses a block that cannot move.
bool run_cta() {
  reset_shared(g_dynamic_shared);
  for (const auto& region : g_static_shared) reset_shared(*region);
  g_epoch = 1;
  const int warps = (g_threads + kWarpSize - 1) / kWarpSize;
  g_syncwarps.assign(warps, 0);
  g_warp_arrivals.assign(warps, 0);
  g_barrier_arrivals = 0;
  for (int t = 0; t < g_threads; ++t) reset_fiber(*g_fibers[t], t);
  std::vector<int> order(g_threads);
  for (int t = 0; t < g_threads; ++t) order[t] = t;

  while (true) {
    if (g_schedule_seed != 0) std::shuffle(order.begin(), order.end(), g_shuffle);
    bool ran = false;
    for (int t : order) {
      Fiber& fiber = *g_fibers[t];
      if (fiber.state != State::kRunnable) continue;
      run_fiber(fiber);
      ran = true;
      if (!g_fault.empty()) return false;
    }
    if (ran) continue;
    int exited = 0;
    for (int t = 0; t < g_threads; ++t) exited += g_fibers[t]->state == State::kExited;
    if (exited == g_threads) return true;
    // Stuck: a collective some lanes never reach, or a barrier some threads never reach.
    for (int warp = 0; warp < warps && g_fault.empty(); ++warp) {
      complete_collective(warp, std::min(kWarpSize, g_threads - warp * kWarpSize));
    }
    if (g_fault.empty()) record_fault(deadlock_report());
    return false;
  }
}

// Hands the core to another runnable lane of this warp (the next one, or a random one when
// the schedule is shuffled), or to the scheduler when there is none.
void yield_fiber() {
  Fiber* from = g_current;
  const int warp = from->index / kWarpSize;
  const int lanes = std::min(kWarpSize, g_threads - warp * kWarpSize);
  const int start = g_schedule_seed != 0 ? int(g_shuffle() % lanes) : from->index % kWarpSize + 1;
  for (int i = 0; i < lanes; ++i) {
    Fiber* to = g_fibers[warp * kWarpSize + (start + i) % lanes].get();
    if (to == from || to->state != State::kRunnable) continue;
    g_current = to;
    ++g_counters.fiber_switches;
    dsa_emu_switch_stack(&from->sp, to->sp);
    return;
  }
  switch_to_scheduler();
}

Fiber& current_fiber() { return *g_current; }

}  // namespace

// --- Public API ------------------------------------------------------------------------------

void set_device_properties(const DeviceProperties& properties) { g_device = properties; }
void set_schedule_seed(uint64_t seed) { g_schedule_seed = seed; }
Counters counters() { return g_counters; }

void register_allocation(const void* base, size_t bytes, const std::string& name, bool read_only) {
  if (bytes == 0) return;
  const uintptr_t address = reinterpret_cast<uintptr_t>(base);
  g_allocations[address] = Allocation{address, bytes, name, read_only, {}, 0};
  g_last_allocation = nullptr;
}

void unregister_allocation(const void* base) {
  g_allocations.erase(reinterpret_cast<uintptr_t>(base));
  g_last_allocation = nullptr;
}

int set_max_dynamic_shared_bytes(const void* kernel, int bytes) {
  if (bytes < 0 || bytes > g_device.max_shared_bytes_optin) return 1;  // cudaErrorInvalidValue
  g_max_dynamic_shared[kernel] = bytes;
  return 0;
}

int launch(const void* kernel, Dim3 grid, Dim3 block, size_t dynamic_shared_bytes,
           void (*run_thread)(void*), void* context, const void* parameters,
           size_t parameter_bytes) {
  constexpr int kInvalidConfiguration = 9;  // cudaErrorInvalidConfiguration
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > kMaxThreads || block.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    return kInvalidConfiguration;
  }
  const auto opt_in = g_max_dynamic_shared.find(kernel);
  const size_t allowed = opt_in == g_max_dynamic_shared.end() ? 48 * 1024 : size_t(opt_in->second);
  if (dynamic_shared_bytes > allowed) return kInvalidConfiguration;

  std::lock_guard<std::mutex> lock(g_launch_mutex);
  ++g_counters.launches;
  ++g_launch_id;
  g_kernel_name = kernel_name_of(kernel);
  g_fault.clear();
  g_grid = grid;
  g_block = block;
  g_threads = int(threads);
  g_run_thread = run_thread;
  g_context = context;
  g_parameters_begin = reinterpret_cast<uintptr_t>(parameters);
  g_parameters_end = g_parameters_begin + parameter_bytes;
  g_dynamic_storage.assign(dynamic_shared_bytes + 128, 0);
  g_dynamic_shared.base = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(g_dynamic_storage.data()) + 127) & ~uintptr_t(127));
  g_dynamic_shared.bytes = dynamic_shared_bytes;
  g_dynamic_shared.name = "dynamic shared memory";
  g_static_shared.clear();
  for (int t = 0; t < g_threads; ++t) fiber_for_thread(t);

  g_shuffle.seed(g_schedule_seed);
  bool ok = true;
  for (unsigned z = 0; z < grid.z && ok; ++z) {
    for (unsigned y = 0; y < grid.y && ok; ++y) {
      for (unsigned x = 0; x < grid.x && ok; ++x) {
        g_block_idx = {x, y, z};
        g_cta = int((uint64_t(z) * grid.y + y) * grid.x + x);
        ++g_counters.ctas;
        ok = run_cta();
      }
    }
  }
  g_dynamic_shared.base = nullptr;
  g_dynamic_shared.bytes = 0;
  g_static_shared.clear();
  if (!ok) throw KernelFault(g_fault);
  return 0;
}

Dim3 thread_idx() { return current_fiber().tid; }
Dim3 block_idx() { return g_block_idx; }
Dim3 block_dim() { return g_block; }
Dim3 grid_dim() { return g_grid; }
void* dynamic_shared_memory() { return g_dynamic_shared.base; }

void* static_shared_array(const char* name, size_t bytes, size_t alignment) {
  RuntimeSection section;
  for (const auto& region : g_static_shared) {
    if (std::strcmp(region->name, name) == 0) return region->base;
  }
  size_t used = g_dynamic_shared.bytes;
  for (const auto& region : g_static_shared) used += region->bytes;
  if (used + bytes > size_t(g_device.max_shared_bytes_optin)) {
    fault_from_fiber("static shared array '" + std::string(name) + "' (" + std::to_string(bytes) +
                     " bytes) exceeds the block's shared memory");
  }
  // Created mid-CTA by its first user: from then on it is the same array for every thread.
  auto region = std::make_unique<SharedRegion>();
  region->storage.reset(new uint8_t[bytes + alignment]);
  region->base = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(region->storage.get()) + alignment - 1) &
      ~uintptr_t(alignment - 1));
  region->bytes = bytes;
  region->name = name;
  reset_shared(*region);
  g_static_shared.push_back(std::move(region));
  return g_static_shared.back()->base;
}

void syncthreads() {
  RuntimeSection section;
  Fiber& fiber = current_fiber();
  fiber.barrier_site = __builtin_return_address(0);
  fiber.state = State::kAtBarrier;
  if (++g_barrier_arrivals == g_threads) {  // the last thread to arrive releases the block
    if (!same_barrier_everywhere()) abandon_fiber();
    ++g_epoch;
    g_barrier_arrivals = 0;
    for (int t = 0; t < g_threads; ++t) g_fibers[t]->state = State::kRunnable;
  }
  while (fiber.state != State::kRunnable) yield_fiber();
}

namespace {
// Deposits this lane's part of a warp collective and waits for the warp to complete it.
void join_collective(Collective collective, unsigned mask) {
  Fiber& fiber = current_fiber();
  fiber.collective = collective;
  fiber.mask = mask;
  fiber.state = State::kAtCollective;
  const int warp = fiber.index / kWarpSize;
  const int lanes = std::min(kWarpSize, g_threads - warp * kWarpSize);
  const unsigned existing = lanes == kWarpSize ? 0xffffffffu : (1u << lanes) - 1u;
  if (++g_warp_arrivals[warp] >= __builtin_popcount(mask & existing)) {
    complete_collective(warp, lanes);  // the last lane to arrive completes it for all
    if (!g_fault.empty()) abandon_fiber();
  }
  while (fiber.state != State::kRunnable) yield_fiber();
}
}  // namespace

void syncwarp(unsigned mask) {
  RuntimeSection section;
  join_collective(Collective::kSyncwarp, mask);
}

uint64_t shfl_xor(unsigned mask, uint64_t bits, int lane_mask, int width) {
  RuntimeSection section;
  if (width != kWarpSize) fault_from_fiber("__shfl_xor_sync with width != 32 is not emulated");
  Fiber& fiber = current_fiber();
  fiber.bits = bits;
  fiber.lane_mask = lane_mask;
  join_collective(Collective::kShfl, mask);
  return fiber.result;
}

unsigned ballot(unsigned mask, bool predicate) {
  RuntimeSection section;
  Fiber& fiber = current_fiber();
  fiber.bits = predicate;
  join_collective(Collective::kBallot, mask);
  return unsigned(fiber.result);
}

float atomic_add(float* address, float value) {
  RuntimeSection section;
  const std::string report =
      check_device_access(reinterpret_cast<uintptr_t>(address), 4, GlobalAccess::kAtomic,
                          current_fiber().index, "atomicAdd");
  if (!report.empty()) fault_from_fiber(report);
  const float old = *address;
  *address = old + value;
  return old;
}

void trap() {
  g_checking = false;
  fault_from_fiber("the kernel executed __trap()");
}

void cp_async(void* shared, const void* global, int copy_bytes, int src_bytes) {
  RuntimeSection section;
  Fiber& fiber = current_fiber();
  const uintptr_t destination = reinterpret_cast<uintptr_t>(shared);
  const uintptr_t source = reinterpret_cast<uintptr_t>(global);
  std::string report;
  SharedRegion* region = shared_region_of(destination);
  if (src_bytes < 0 || src_bytes > copy_bytes) {
    report = "cp.async src-size " + std::to_string(src_bytes) + " exceeds cp-size " +
             std::to_string(copy_bytes);
  } else if (destination % copy_bytes != 0 || (src_bytes > 0 && source % copy_bytes != 0)) {
    report = "cp.async of " + std::to_string(copy_bytes) +
             " bytes with misaligned address (shared " + hex(destination) + ", global " +
             hex(source) + ")";
  } else if (region == nullptr) {
    report = describe_wild_address(destination, copy_bytes, "cp.async destination") +
             " (must be shared memory)";
  } else {
    report = check_shared(*region, destination, copy_bytes, true, fiber.index, "cp.async");
    if (report.empty() && src_bytes > 0) {
      report = check_global(source, src_bytes, GlobalAccess::kRead, fiber.index, "cp.async source");
    }
  }
  if (!report.empty()) fault_from_fiber(report);
  const size_t offset = destination - reinterpret_cast<uintptr_t>(region->base);
  for (int i = 0; i < copy_bytes; ++i)
    region->shadow[offset + i].copy_in_flight = uint16_t(fiber.index);
  std::memset(shared, 0xff, copy_bytes);  // until it lands the destination holds garbage
  fiber.open_group.push_back(
      {static_cast<uint8_t*>(shared), static_cast<const uint8_t*>(global), copy_bytes, src_bytes});
}

void cp_async_commit() {
  RuntimeSection section;
  Fiber& fiber = current_fiber();
  fiber.committed.push_back(std::move(fiber.open_group));
  fiber.open_group.clear();
}

void cp_async_wait(int pending_groups) {
  RuntimeSection section;
  Fiber& fiber = current_fiber();
  while (int(fiber.committed.size()) > pending_groups) {
    for (const PendingCopy& copy : fiber.committed.front()) {
      std::memcpy(copy.shared, copy.global, copy.src_bytes);
      std::memset(copy.shared + copy.src_bytes, 0, copy.copy_bytes - copy.src_bytes);
      SharedRegion* region = shared_region_of(reinterpret_cast<uintptr_t>(copy.shared));
      const size_t offset = copy.shared - region->base;
      for (int i = 0; i < copy.copy_bytes; ++i) {
        SharedByte& s = region->shadow[offset + i];
        s.copy_in_flight = kNobody;  // landed: a write by this thread, now
        s.write_epoch = g_epoch;
        s.writer = uint16_t(fiber.index);
        s.writer_syncwarps = syncwarps_of(fiber.index);
      }
    }
    fiber.committed.pop_front();
  }
}

void ldmatrix(uint32_t* registers, int matrices, bool transposed, const void* shared) {
  RuntimeSection section;
  Fiber& fiber = current_fiber();
  fiber.out_registers = registers;
  fiber.matrices = matrices;
  fiber.transposed = transposed;
  fiber.address = shared;
  join_collective(Collective::kLdmatrix, 0xffffffffu);
}

namespace {
// Hands this lane's fragments to the warp's mma; the last lane to arrive computes it.
void join_mma(Collective shape, float* accumulators, const uint32_t* a, uint32_t b0, uint32_t b1,
              bool bf16) {
  Fiber& fiber = current_fiber();
  std::memcpy(fiber.a, a, sizeof(fiber.a));
  fiber.b[0] = b0;
  fiber.b[1] = b1;
  fiber.accumulators = accumulators;
  fiber.bf16 = bf16;
  join_collective(shape, 0xffffffffu);
}
}  // namespace

void mma_m16n8k16(float* accumulators, const uint32_t* a, uint32_t b0, uint32_t b1, bool bf16) {
  RuntimeSection section;
  join_mma(Collective::kMma16, accumulators, a, b0, b1, bf16);
}

void mma_m16n8k32_e4m3(float* accumulators, const uint32_t* a, uint32_t b0, uint32_t b1) {
  RuntimeSection section;
  join_mma(Collective::kMma32, accumulators, a, b0, b1, false);
}

}  // namespace dsa_emu

// --- Instrumentation hooks ---------------------------------------------------------------------
// GCC's -fsanitize=thread calls these before every load and store of the kernel objects (no
// sanitizer runtime is linked: the emulator is the runtime).

#define DSA_EMU_HOOK(name, bytes, write)                                                          \
  extern "C" __attribute__((visibility("hidden"))) void name(void* p) {                           \
    if (dsa_emu::g_checking) dsa_emu::check_access(reinterpret_cast<uintptr_t>(p), bytes, write); \
  }
#define DSA_EMU_ACCESS_HOOKS(bytes)                        \
  DSA_EMU_HOOK(__tsan_read##bytes, bytes, false)           \
  DSA_EMU_HOOK(__tsan_write##bytes, bytes, true)           \
  DSA_EMU_HOOK(__tsan_unaligned_read##bytes, bytes, false) \
  DSA_EMU_HOOK(__tsan_unaligned_write##bytes, bytes, true)
DSA_EMU_ACCESS_HOOKS(1)
DSA_EMU_ACCESS_HOOKS(2)
DSA_EMU_ACCESS_HOOKS(4)
DSA_EMU_ACCESS_HOOKS(8)
DSA_EMU_ACCESS_HOOKS(16)
#undef DSA_EMU_ACCESS_HOOKS
#undef DSA_EMU_HOOK

extern "C" __attribute__((visibility("hidden"))) void __tsan_read_range(void* p, size_t bytes) {
  if (dsa_emu::g_checking) dsa_emu::check_access(reinterpret_cast<uintptr_t>(p), bytes, false);
}
extern "C" __attribute__((visibility("hidden"))) void __tsan_write_range(void* p, size_t bytes) {
  if (dsa_emu::g_checking) dsa_emu::check_access(reinterpret_cast<uintptr_t>(p), bytes, true);
}
extern "C" __attribute__((visibility("hidden"))) void __tsan_init() {}
extern "C" __attribute__((visibility("hidden"))) void __tsan_func_entry(void*) {}
extern "C" __attribute__((visibility("hidden"))) void __tsan_func_exit() {}
