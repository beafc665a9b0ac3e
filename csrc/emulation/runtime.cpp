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
#include "emulation/gmma.h"
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
constexpr int kWarpgroupSize = 128;
constexpr int kMaxMbarriers = 64;  // per CTA: each is an agent of the vector clocks
// Shared-window address of the dynamic shared memory: deliberately not 1024-aligned, so a kernel
// that needs swizzle-aligned tiles must align them itself (as it must on a GPU, where the
// window's layout is not promised). Host pointers keep the window address's low 12 bits.
constexpr uint32_t kDynamicSharedWindow = 16;
constexpr uint32_t kWindowAlignment = 4096;

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

enum class State : uint8_t {
  kRunnable,
  kAtBarrier,
  kAtCollective,
  kAtWarpgroupCollective,
  kAtMbarrier,
  kAtNamedBarrier,
  kExited
};
enum class Collective : uint8_t {
  kSyncwarp,
  kShfl,
  kBallot,
  kLdmatrix,
  kMma16,
  kMma32,
  kElect,
  // warpgroup collectives (.sync.aligned over 128 threads)
  kWgmmaFence,
  kWgmmaMma,
  kWgmmaCommit,
  kWgmmaWait,
  kSetmaxnreg,
};

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
    case Collective::kElect:
      return "elect.sync";
    case Collective::kWgmmaFence:
      return "wgmma.fence";
    case Collective::kWgmmaMma:
      return "wgmma.mma_async";
    case Collective::kWgmmaCommit:
      return "wgmma.commit_group";
    case Collective::kWgmmaWait:
      return "wgmma.wait_group";
    case Collective::kSetmaxnreg:
      return "setmaxnreg";
  }
  return "?";
}

struct PendingCopy {
  uint8_t* shared;
  const uint8_t* global;
  int copy_bytes;
  int src_bytes;
};

// A range of a thread's registers (locals) that an in-flight wgmma owns: its accumulators (no
// access until the wait) or its A fragment (no writes until the wait).
struct RegistersInFlight {
  uintptr_t begin, end;
  bool accumulators;
  uint32_t group;  // the warpgroup's wgmma group that releases them
};

struct Fiber {
  void* sp = nullptr;
  uint8_t* stack_low = nullptr;  // lowest usable byte; the guard page sits below
  int index = 0;                 // linear thread index in the CTA
  Dim3 tid;
  State state = State::kRunnable;
  // The __syncthreads it waits at, by source location: the compiler may duplicate a call (which
  // bar.sync's convergence forbids on a GPU), but not the line it came from.
  const char* barrier_file = nullptr;
  int barrier_line = 0;
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
  // Hopper: the vector-clock time of this thread (advances at each release: mbarrier arrive,
  // fence.proxy.async), the time its last fence.proxy.async covered, and what it waits for.
  uint32_t clock = 1;
  uint32_t proxy_fenced_clock = 0;
  uint32_t waiting_barrier = 0;  // shared-window address of the mbarrier it waits at, or the
                                 // named barrier's id
  uint32_t waiting_parity = 0;
  int collective_operand = 0;  // wgmma.wait_group N / setmaxnreg count
  bool increase_registers = false;
  bool wgmma_fenced = false;  // a wgmma.fence since its registers were last its own
  WgmmaIssue wgmma;
  std::vector<RegistersInFlight> registers_in_flight;
  std::vector<void*> initialised_barriers;  // mbarriers it initialised, not yet fenced
};

// Shadow of one shared-memory byte within the current CTA. Writers and readers are threads
// (index < block size) or async agents (vector-clock index >= block size: the TMA completions of
// one mbarrier, the wgmma operand reads of one warpgroup); clocks are the actor's vector-clock
// time at the access.
struct SharedByte {
  uint32_t write_epoch = 0;  // barrier interval + 1 of the last write; 0: never written
  uint32_t writer_clock = 0;
  uint16_t writer = kNobody;
  uint16_t writer_syncwarps = 0;  // the writer's warp __syncwarp count at the write
  uint32_t read_epoch = 0;
  uint32_t reader_clock = 0;
  uint16_t reader = kNobody;  // kManyThreads when several threads read in read_epoch
  uint16_t reader_syncwarps = 0;
  uint16_t copy_in_flight = kNobody;  // thread whose cp.async targets it and has not landed
  bool mbarrier = false;              // an mbarrier object: only mbarrier instructions touch it
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
  uint16_t writer_syncwarps = 0;  // the writer's warp __syncwarp count at the write
  uint16_t reader_syncwarps = 0;
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
  uint32_t window = 0;  // its shared-window address (cvta.to.shared of base)
  size_t bytes = 0;
  const char* name = "";
  std::vector<SharedByte> shadow;
  // [byte * warpgroups + warpgroup]: the wgmma group (1-based) that last read the byte, 0: none;
  // allocated at the CTA's first wgmma operand read.
  std::vector<uint32_t> wgmma_reads;
  std::unique_ptr<uint8_t[]> storage;  // static arrays own theirs
};

// An mbarrier object: its phase state, and the vector clocks its phases carry from arriving
// threads (and completing TMA transactions) to the threads that wait for them.
struct Mbarrier {
  uint32_t window = 0;  // its shared-window address
  int agent = 0;        // vector-clock index of the TMA writes that complete on it
  int count = 0, pending = 0;
  int64_t tx = 0;          // transaction bytes expected minus completed in this phase
  uint32_t completed = 0;  // phases completed so far
  int init_thread = 0;
  bool init_fenced = false;
  std::vector<uint32_t> release;     // joined from this phase's arrivals
  std::vector<uint32_t> last_phase;  // what waiting for the latest completed phase acquires
};

// One wgmma.mma_async of a warpgroup: operands read at issue, D written at its wait_group.
struct WgmmaOperation {
  int n = 0, k = 0;
  bool accumulate = true;
  std::vector<float> a;  // [64][k]
  std::vector<float> b;  // [k][n]
  float* accumulators[kWarpgroupSize] = {};
};

struct WarpgroupAsync {
  std::vector<WgmmaOperation> open;  // issued since the last commit_group
  std::deque<std::vector<WgmmaOperation>> committed;
  uint32_t groups_committed = 0, groups_completed = 0;
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
std::vector<std::unique_ptr<SharedRegion>>
    g_static_shared;                // DEEPSEEK_ATTN_STATIC_SHARED_ARRAY regions
uint32_t g_next_static_window = 0;  // shared-window address for the next static array
std::string g_last_kernel_name;

// Hopper state of the running CTA. Vector clocks (one row of g_vector_clocks per thread, one
// column per thread and per async agent) exist from the CTA's first mbarrier or wgmma on; they
// order accesses that no __syncthreads separates (mbarrier phases, wgmma waits).
int g_warpgroups = 0;
int g_clock_width = 0;  // threads + warpgroups + kMaxMbarriers
std::vector<uint32_t> g_vector_clocks;
std::map<uint32_t, Mbarrier> g_mbarriers;   // by shared-window address
std::vector<uint32_t> g_mbarrier_of_agent;  // agent - threads - warpgroups -> window address
std::vector<WarpgroupAsync> g_warpgroup_async;
// bar.sync / bar.arrive: the threads that arrived in each named barrier's current phase.
struct NamedBarrier {
  int threads = 0;  // the count the phase's arrivals gave
  std::vector<int> arrived;
  std::vector<bool> waits;  // per arrival: bar.sync (acquires) or bar.arrive
};
constexpr int kNamedBarriers = 16;
NamedBarrier g_named_barriers[kNamedBarriers];
std::vector<int> g_warpgroup_arrivals;

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
  // The template arguments say enough: cut at the parameter list's '(' (outside any <...>).
  int depth = 0;
  for (size_t i = 0; i < name.size(); ++i) {
    if (name[i] == '<') ++depth;
    if (name[i] == '>') --depth;
    if (name[i] == '(' && depth == 0) return name.substr(0, i);
  }
  return name;
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

// --- Vector clocks (Hopper) -------------------------------------------------------------------

bool vector_clocks_on() { return !g_vector_clocks.empty(); }
uint32_t* clock_row(int thread) { return &g_vector_clocks[size_t(thread) * g_clock_width]; }
bool is_agent(uint16_t actor) {
  return actor != kNobody && actor != kManyThreads && actor >= g_threads;
}
int wgmma_agent(int warpgroup) { return g_threads + warpgroup; }

void enable_vector_clocks() {
  if (vector_clocks_on()) return;
  g_clock_width = g_threads + g_warpgroups + kMaxMbarriers;
  g_vector_clocks.assign(size_t(g_threads) * g_clock_width, 0);
  for (int t = 0; t < g_threads; ++t) clock_row(t)[t] = g_fibers[t]->clock;
}

// A release by `thread` (mbarrier arrive, fence.proxy.async): later accesses get a later time.
void advance_clock(int thread) {
  Fiber& fiber = *g_fibers[thread];
  ++fiber.clock;
  if (vector_clocks_on()) clock_row(thread)[thread] = fiber.clock;
}

void join_clocks(uint32_t* into, const uint32_t* from) {
  for (int i = 0; i < g_clock_width; ++i) into[i] = std::max(into[i], from[i]);
}

// Who accesses shared memory: a thread, a TMA issued by a thread (recorded as its mbarrier's
// agent), or a warpgroup's wgmma reading operands (the async proxy, thread -1).
struct Accessor {
  int thread;                 // whose program order and __syncwarps apply; -1 for wgmma
  uint16_t actor;             // what the shadow records
  uint32_t clock;             // the actor's time now
  const uint32_t* knowledge;  // vector clock of what it has synchronised with; null: none
  bool async_proxy;           // TMA or wgmma: generic-proxy writes need fence.proxy.async
};

Accessor thread_accessor(int thread) {
  return {thread, uint16_t(thread), g_fibers[thread]->clock,
          vector_clocks_on() ? clock_row(thread) : nullptr, false};
}

// Whether an access by `actor` (at barrier interval `epoch`, warp __syncwarp count `syncwarps`,
// time `clock`) happens before an access by `me`.
bool happens_before(uint16_t actor, uint32_t epoch, uint16_t syncwarps, uint32_t clock,
                    const Accessor& me) {
  const bool known = me.knowledge != nullptr && me.knowledge[actor] >= clock;
  if (is_agent(actor)) return known;  // only waits order async agents; __syncthreads does not
  if (actor == me.thread || epoch != g_epoch) return true;
  if (me.thread >= 0 && warp_synchronised(actor, syncwarps, me.thread)) return true;
  return known;
}

std::string actor_name(uint16_t actor) {
  if (!is_agent(actor)) return thread_name(actor);
  const int agent = actor - g_threads;
  if (agent < g_warpgroups) return "the wgmma of warpgroup " + std::to_string(agent);
  return "the TMA completing on the mbarrier at shared " +
         hex(g_mbarrier_of_agent[agent - g_warpgroups]);
}

// Checks and records a read (or write) of `bytes` shared bytes by `me`; returns a report or an
// empty string.
std::string check_shared(SharedRegion& region, uintptr_t address, size_t bytes, bool write,
                         const Accessor& me, const char* what) {
  const uintptr_t base = reinterpret_cast<uintptr_t>(region.base);
  if (address + bytes > base + region.bytes) {
    return std::string(what) + " of " + std::to_string(bytes) + " bytes at " +
           shared_location(region, address) + " runs past the end of " + region.name + " (" +
           std::to_string(region.bytes) + " bytes)";
  }
  // A fault ends the launch, so each byte is checked and then recorded in one pass.
  const uint16_t syncwarps = me.thread >= 0 ? syncwarps_of(me.thread) : 0;
  const bool wgmma_read = !write && me.thread < 0;
  if (wgmma_read && region.wgmma_reads.empty()) {
    region.wgmma_reads.assign(region.bytes * g_warpgroups, 0);
  }
  for (size_t i = 0; i < bytes; ++i) {
    const size_t offset = address - base + i;
    SharedByte& s = region.shadow[offset];
    const auto location = [&] { return shared_location(region, address + i); };
    if (s.copy_in_flight != kNobody) {
      return std::string(what) + " touches " + location() + ", the destination of a cp.async by " +
             thread_name(s.copy_in_flight) +
             " that has not landed (no cp.async.wait_group covers it yet)";
    }
    if (s.mbarrier) {
      return std::string(what) + " touches " + location() +
             ", part of an mbarrier object (only mbarrier instructions may access it)";
    }
    if (!write && s.write_epoch == 0) {
      return std::string(what) + " reads " + location() + ", which no thread has written";
    }
    if (s.write_epoch != 0 &&
        !happens_before(s.writer, s.write_epoch, s.writer_syncwarps, s.writer_clock, me)) {
      if (is_agent(s.writer)) {
        return std::string(what) + " at " + location() + " is not ordered after its write by " +
               actor_name(s.writer) + " (phase " + std::to_string(s.writer_clock - 1) +
               "): no wait for that mbarrier phase precedes it";
      }
      return std::string("shared-memory race: ") + what + " at " + location() + " and a write by " +
             thread_name(s.writer) +
             (s.write_epoch == g_epoch
                  ? " in the same barrier interval (no __syncthreads between)"
                  : " that no __syncthreads or mbarrier wait orders before it");
    }
    if (me.async_proxy && s.write_epoch != 0 && !is_agent(s.writer) &&
        g_fibers[s.writer]->proxy_fenced_clock < s.writer_clock) {
      return std::string(what) + " (async proxy) reads " + location() + ", written by " +
             thread_name(s.writer) + " through the generic proxy without a later fence.proxy.async";
    }
    if (write) {
      if (s.reader == kManyThreads && s.read_epoch == g_epoch) {
        return std::string("shared-memory race: ") + what + " overwrites " + location() +
               " read by other threads in the same barrier interval (no __syncthreads between)";
      }
      if (s.reader != kNobody && s.reader != kManyThreads &&
          !happens_before(s.reader, s.read_epoch, s.reader_syncwarps, s.reader_clock, me)) {
        return std::string("shared-memory race: ") + what + " overwrites " + location() +
               " read by " + thread_name(s.reader) +
               (s.read_epoch == g_epoch
                    ? " in the same barrier interval (no __syncthreads between)"
                    : " that no __syncthreads or mbarrier wait orders before it");
      }
      for (int wg = 0; wg < g_warpgroups && !region.wgmma_reads.empty(); ++wg) {
        uint32_t& group = region.wgmma_reads[offset * g_warpgroups + wg];
        if (group == 0) continue;
        if (me.knowledge == nullptr || me.knowledge[wgmma_agent(wg)] < group) {
          return std::string("shared-memory race: ") + what + " overwrites " + location() +
                 ", an operand of wgmma group " + std::to_string(group) + " of warpgroup " +
                 std::to_string(wg) +
                 " that it does not know complete (no wgmma.wait_group, then mbarrier arrive -> "
                 "wait, orders them)";
        }
        group = 0;  // the write is ordered after that read: later writers need only order after it
      }
      s.write_epoch = g_epoch;
      s.writer = me.actor;
      s.writer_syncwarps = syncwarps;
      s.writer_clock = me.clock;
    } else if (wgmma_read) {
      region.wgmma_reads[offset * g_warpgroups + (me.actor - g_threads)] = me.clock;
    } else if (s.read_epoch == g_epoch && s.reader != me.actor && s.reader != kNobody) {
      s.reader = kManyThreads;
    } else {
      s.read_epoch = g_epoch;
      s.reader = me.actor;
      s.reader_syncwarps = syncwarps;
      s.reader_clock = me.clock;
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

// Another thread's access conflicts unless it is this CTA's and a barrier separates the two:
// __syncthreads, or __syncwarp within one warp (it orders memory among its threads, as on the
// GPU). Async agents (current_thread < 0) are ordered by barriers only.
bool conflicts(int32_t cta, uint16_t thread, uint32_t epoch, uint16_t syncwarps,
               int current_thread) {
  if (cta != g_cta) return true;
  if (thread == current_thread || epoch != g_epoch) return false;
  return current_thread < 0 || !warp_synchronised(thread, syncwarps, current_thread);
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
        conflicts(s.writer_cta, s.writer, s.writer_epoch, s.writer_syncwarps, thread)) {
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
      s.reader_syncwarps = thread >= 0 ? syncwarps_of(thread) : 0;
      continue;
    }
    if (s.reader_cta >= 0 &&
        (s.many_reader_ctas ||
         conflicts(s.reader_cta, s.reader, s.reader_epoch, s.reader_syncwarps, thread))) {
      return std::string("global-memory race: ") + what + " writes " + location() + " read by " +
             (s.many_reader_ctas ? std::string("other blocks")
                                 : cta_thread_name(s.reader_cta, s.reader)) +
             " in the same launch";
    }
    s.writer_cta = g_cta;
    s.writer = uint16_t(thread);
    s.writer_epoch = g_epoch;
    s.writer_syncwarps = thread >= 0 ? syncwarps_of(thread) : 0;
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
    return check_shared(*region, address, bytes, kind != GlobalAccess::kRead,
                        thread_accessor(thread), what);
  }
  return check_global(address, bytes, kind, thread, what);
}

// Every instrumented load and store of kernel code lands here (from the hooks at the bottom).
void check_access(uintptr_t address, size_t bytes, bool write) {
  Fiber* fiber = g_current;
  for (const RegistersInFlight& range : fiber->registers_in_flight) {
    if (address < range.end && address + bytes > range.begin && (range.accumulators || write)) {
      fault_from_fiber(std::string(write ? "store to " : "load of ") +
                       (range.accumulators ? "the accumulators" : "the A fragment") +
                       " of a wgmma in group " + std::to_string(range.group) +
                       " before a wgmma.wait_group covers it (registers of an in-flight wgmma)");
    }
  }
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

// A thread may not leave while wgmma operations of its warpgroup are still to be waited for:
// their accumulators are its registers.
void check_thread_exit(const Fiber& fiber) {
  if (g_warpgroup_async.empty()) return;
  const WarpgroupAsync& wg = g_warpgroup_async[fiber.index / kWarpgroupSize];
  if (!wg.open.empty() || !wg.committed.empty()) {
    fault_from_fiber("the thread exits with wgmma operations of its warpgroup not waited for (" +
                     std::to_string(wg.committed.size()) + " committed groups, " +
                     std::to_string(wg.open.size()) + " uncommitted operations)");
  }
}

}  // namespace
}  // namespace dsa_emu

// Where every fiber starts (the trampoline passes it its Fiber): run the kernel, then leave.
extern "C" __attribute__((used, visibility("hidden"))) void dsa_emu_fiber_main(
    dsa_emu::Fiber* fiber) {
  dsa_emu::g_checking = true;
  dsa_emu::g_run_thread(dsa_emu::g_context);
  dsa_emu::g_checking = false;
  dsa_emu::check_thread_exit(*fiber);
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
  fiber.clock = 1;
  fiber.proxy_fenced_clock = 0;
  fiber.wgmma_fenced = false;
  fiber.registers_in_flight.clear();
  fiber.initialised_barriers.clear();
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
        report =
            check_shared(*region, address, 16, false, thread_accessor(source.index), "ldmatrix");
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
    case Collective::kElect: {
      int members[kWarpSize], count = 0;
      for (int lane = 0; lane < lanes_in_warp; ++lane) {
        if (mask >> lane & 1u) members[count++] = lane;
      }
      const int leader = members[g_schedule_seed != 0 ? int(g_shuffle() % count) : 0];
      for (int lane = 0; lane < lanes_in_warp; ++lane) lanes[lane]->result = lane == leader;
      break;
    }
    default:  // warpgroup collectives: lanes there are not kAtCollective, never a leader here
      break;
  }
  for (int lane = 0; lane < lanes_in_warp; ++lane) {
    if (mask >> lane & 1u) {
      lanes[lane]->state = State::kRunnable;
      --g_warp_arrivals[warp];
    }
  }
}

std::string where_in_block() {
  return " [" + g_kernel_name + ", block " + format_dim3(g_block_idx) + "]";
}

std::string state_description(const Fiber& f) {
  switch (f.state) {
    case State::kExited:
      return "has exited";
    case State::kAtBarrier:
      return "waits at __syncthreads";
    case State::kAtCollective:
    case State::kAtWarpgroupCollective:
      return std::string("waits at ") + collective_name(f.collective);
    case State::kAtMbarrier:
      return "waits at the mbarrier at shared " + hex(f.waiting_barrier);
    case State::kAtNamedBarrier:
      return "waits at bar.sync " + std::to_string(f.waiting_barrier);
    case State::kRunnable:
      break;
  }
  return "is runnable";
}

// The most specific reason a block whose threads all wait cannot move, or "".
std::string hopper_deadlock_report() {
  for (int wg = 0; wg < int(g_warpgroup_arrivals.size()); ++wg) {
    if (g_warpgroup_arrivals[wg] == 0) continue;
    const Fiber* waiting = nullptr;
    const Fiber* elsewhere = nullptr;
    for (int t = wg * kWarpgroupSize; t < (wg + 1) * kWarpgroupSize; ++t) {
      const Fiber& f = *g_fibers[t];
      if (f.state == State::kAtWarpgroupCollective) {
        if (waiting == nullptr) waiting = &f;
      } else if (elsewhere == nullptr) {
        elsewhere = &f;
      }
    }
    if (waiting != nullptr && elsewhere != nullptr) {
      return "warpgroup divergence: " + thread_name(waiting->index) + " waits at " +
             collective_name(waiting->collective) + " (.sync.aligned: every thread of warpgroup " +
             std::to_string(wg) + " must execute it) but " + thread_name(elsewhere->index) + " " +
             state_description(*elsewhere) + where_in_block();
    }
  }
  for (int id = 0; id < kNamedBarriers; ++id) {
    const NamedBarrier& b = g_named_barriers[id];
    if (b.arrived.empty()) continue;
    return "deadlock: bar.sync " + std::to_string(id) + " waits for " + std::to_string(b.threads) +
           " threads but only " + std::to_string(b.arrived.size()) +
           " arrived (first: " + thread_name(b.arrived[0]) + ")" + where_in_block();
  }
  int waiters = 0;
  const Fiber* first = nullptr;
  for (int t = 0; t < g_threads; ++t) {
    const Fiber& f = *g_fibers[t];
    if (f.state == State::kAtMbarrier && waiters++ == 0) first = &f;
  }
  if (first == nullptr) return {};
  const Mbarrier& b = g_mbarriers.at(first->waiting_barrier);
  std::ostringstream r;
  r << "deadlock: an mbarrier wait never completes: " << thread_name(first->index)
    << " waits for the phase of parity " << first->waiting_parity << " of the mbarrier at shared "
    << hex(first->waiting_barrier) << ", which has completed " << b.completed
    << " phases; its current phase still needs " << b.pending << " of " << b.count << " arrivals";
  if (b.tx != 0) r << " and " << b.tx << " transaction bytes";
  r << " (" << waiters << " threads wait at mbarriers; no running thread can arrive)"
    << where_in_block();
  return r.str();
}

std::string deadlock_report() {
  const std::string hopper = hopper_deadlock_report();
  if (!hopper.empty()) return hopper;
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

// __syncthreads is bar.sync.aligned: every thread must execute the same one (a barrier inside
// code that only some threads run is a bug even where the hardware happens to release it).
bool same_barrier_everywhere() {
  const Fiber& first = *g_fibers[0];
  for (int t = 1; t < g_threads; ++t) {
    const Fiber& other = *g_fibers[t];
    if (other.barrier_line != first.barrier_line ||
        std::strcmp(other.barrier_file, first.barrier_file) != 0) {
      const auto site = [](const Fiber& f) {
        return std::string(f.barrier_file) + ":" + std::to_string(f.barrier_line);
      };
      record_fault("barrier divergence: " + thread_name(first.index) +
                   " waits at the __syncthreads at " + site(first) + " but " +
                   thread_name(other.index) + " at the one at " + site(other) + where_in_block());
      return false;
    }
  }
  return true;
}

void reset_shared(SharedRegion& region) {
  region.shadow.assign(region.bytes, SharedByte{});
  region.wgmma_reads.clear();
  // Fresh shared memory holds garbage on a GPU: NaN bytes make unchecked stale reads visible.
  if (region.bytes != 0) std::memset(region.base, 0xff, region.bytes);
}

// A block may finish only once every TMA it issued has landed: a phase still expecting
// transaction bytes means a copy into shared memory that outlives the block (or a wrong
// expect_tx count).
bool mbarriers_settled() {
  for (const auto& [window, barrier] : g_mbarriers) {
    if (barrier.tx != 0) {
      record_fault("the block finished while the mbarrier at shared " + hex(window) +
                   " still expects " + std::to_string(barrier.tx) +
                   " transaction bytes (arrive.expect_tx and the TMA bytes completing on it "
                   "differ) [" +
                   where_in_kernel(barrier.init_thread) + ", its initialiser]");
      return false;
    }
  }
  return true;
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
  g_warpgroups = (g_threads + kWarpgroupSize - 1) / kWarpgroupSize;
  g_vector_clocks.clear();
  g_mbarriers.clear();
  g_mbarrier_of_agent.clear();
  g_warpgroup_async.assign(g_warpgroups, WarpgroupAsync{});
  g_warpgroup_arrivals.assign(g_warpgroups, 0);
  for (NamedBarrier& barrier : g_named_barriers) barrier = NamedBarrier{};
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
    if (exited == g_threads) return mbarriers_settled();
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

// The first byte of `storage` (which has 2 * kWindowAlignment bytes to spare) whose address has
// the low bits of shared-window address `window`: aligning either aligns the other.
uint8_t* window_aligned(uint8_t* storage, uint32_t window) {
  const uintptr_t page = (reinterpret_cast<uintptr_t>(storage) + kWindowAlignment - 1) &
                         ~uintptr_t(kWindowAlignment - 1);
  return reinterpret_cast<uint8_t*>(page + window % kWindowAlignment);
}

}  // namespace

// --- Public API ------------------------------------------------------------------------------

void set_device_properties(const DeviceProperties& properties) { g_device = properties; }
void set_schedule_seed(uint64_t seed) { g_schedule_seed = seed; }
Counters counters() { return g_counters; }
const DeviceProperties& device_properties() { return g_device; }
std::string last_kernel_name() { return g_last_kernel_name; }

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
  g_last_kernel_name = g_kernel_name;
  g_fault.clear();
  g_grid = grid;
  g_block = block;
  g_threads = int(threads);
  g_run_thread = run_thread;
  g_context = context;
  g_parameters_begin = reinterpret_cast<uintptr_t>(parameters);
  g_parameters_end = g_parameters_begin + parameter_bytes;
  g_dynamic_storage.assign(dynamic_shared_bytes + 2 * kWindowAlignment, 0);
  g_dynamic_shared.base = window_aligned(g_dynamic_storage.data(), kDynamicSharedWindow);
  g_dynamic_shared.window = kDynamicSharedWindow;
  g_dynamic_shared.bytes = dynamic_shared_bytes;
  g_next_static_window = kDynamicSharedWindow + uint32_t(dynamic_shared_bytes);
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
  region->window = uint32_t((g_next_static_window + alignment - 1) & ~(alignment - 1));
  g_next_static_window = region->window + uint32_t(bytes);
  region->storage.reset(new uint8_t[bytes + 2 * kWindowAlignment]);
  region->base = window_aligned(region->storage.get(), region->window);
  region->bytes = bytes;
  region->name = name;
  reset_shared(*region);
  g_static_shared.push_back(std::move(region));
  return g_static_shared.back()->base;
}

void syncthreads(const char* file, int line) {
  RuntimeSection section;
  Fiber& fiber = current_fiber();
  fiber.barrier_file = file;
  fiber.barrier_line = line;
  fiber.state = State::kAtBarrier;
  if (++g_barrier_arrivals == g_threads) {  // the last thread to arrive releases the block
    if (!same_barrier_everywhere()) abandon_fiber();
    ++g_epoch;
    g_barrier_arrivals = 0;
    if (vector_clocks_on()) {  // what any thread knew of async agents, every thread now knows
      for (int agent = g_threads; agent < g_clock_width; ++agent) {
        uint32_t known = 0;
        for (int t = 0; t < g_threads; ++t) known = std::max(known, clock_row(t)[agent]);
        for (int t = 0; t < g_threads; ++t) clock_row(t)[agent] = known;
      }
    }
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
    report = check_shared(*region, destination, copy_bytes, true, thread_accessor(fiber.index),
                          "cp.async");
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
        s.writer_clock = fiber.clock;
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

// --- Hopper: shared window, mbarriers, TMA, warpgroup collectives, wgmma ---------------------

namespace {

SharedRegion* region_at_window(uint32_t window) {
  if (window >= g_dynamic_shared.window &&
      window - g_dynamic_shared.window < g_dynamic_shared.bytes) {
    return &g_dynamic_shared;
  }
  for (const auto& region : g_static_shared) {
    if (window >= region->window && window - region->window < region->bytes) return region.get();
  }
  return nullptr;
}

uint8_t* host_address(const SharedRegion& region, uint32_t window) {
  return region.base + (window - region.window);
}

// cvta.to.shared of `address` inside `region`: host_address's inverse.
uint32_t window_of(const SharedRegion& region, uintptr_t address) {
  return region.window + uint32_t(address - reinterpret_cast<uintptr_t>(region.base));
}

// The region of an mbarrier operand, which must be an 8-byte aligned shared address.
SharedRegion* mbarrier_region(uintptr_t address, const char* what) {
  SharedRegion* region = shared_region_of(address);
  if (region == nullptr || address % 8 != 0) {
    fault_from_fiber(std::string(what) + " on " + hex(address) +
                     ", which is not an 8-byte aligned shared-memory address");
  }
  return region;
}

// The mbarrier `barrier` points to, checked: shared, 8-byte aligned, initialised, and its
// initialisation ordered before this use by `thread`.
Mbarrier& mbarrier_at(const void* barrier, int thread, const char* what) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(barrier);
  SharedRegion* region = mbarrier_region(address, what);
  const uint32_t window = window_of(*region, address);
  const auto found = g_mbarriers.find(window);
  if (found == g_mbarriers.end()) {
    fault_from_fiber(std::string(what) + " on " + shared_location(*region, address) +
                     ", which no mbarrier.init has initialised");
  }
  const SharedByte& init = region->shadow[address - uintptr_t(region->base)];
  if (!happens_before(init.writer, init.write_epoch, init.writer_syncwarps, init.writer_clock,
                      thread_accessor(thread))) {
    fault_from_fiber(std::string(what) + " on the mbarrier at " +
                     shared_location(*region, address) + " races with its mbarrier.init by " +
                     thread_name(init.writer) + " (no __syncthreads between)");
  }
  return found->second;
}

// Phase completion, once its arrivals and transaction bytes are both done: waiters of this phase
// become runnable and acquire what it released.
void complete_phase(Mbarrier& barrier) {
  barrier.release[barrier.agent] = barrier.completed + 1;  // its TMA writes of this phase
  barrier.last_phase.swap(barrier.release);
  barrier.release.assign(g_clock_width, 0);
  ++barrier.completed;
  barrier.pending = barrier.count;
  for (int t = 0; t < g_threads; ++t) {
    Fiber& f = *g_fibers[t];
    if (f.state == State::kAtMbarrier && f.waiting_barrier == barrier.window) {
      f.state = State::kRunnable;
    }
  }
}

void complete_transactions(Mbarrier& barrier, int64_t bytes) {
  barrier.tx -= bytes;
  if (barrier.pending == 0 && barrier.tx == 0) complete_phase(barrier);
}

// --- Tensor maps: what cuTensorMapEncodeTiled was given, in the map's 128 opaque bytes --------

constexpr uint64_t kTensorMapMagic = 0x44534145'4d55544dull;  // "DSAEMUTM"

struct PackedTensorMap {
  uint64_t magic;
  uint64_t address;
  uint64_t dims[5];
  uint64_t byte_strides[4];  // of dims 1..4
  uint16_t box[5];
  uint8_t element_strides[5];
  uint8_t rank, element_bytes, swizzle_bytes, nan_fill;
};
static_assert(sizeof(PackedTensorMap) <= 128, "a CUtensorMap has 128 bytes");

bool valid_tensor_map(const TensorMapDescription& d) {
  const auto address = reinterpret_cast<uintptr_t>(d.address);
  if (d.rank < 1 || d.rank > 5 || address == 0 || address % 16 != 0 || d.interleaved) return false;
  if (d.element_bytes != 1 && d.element_bytes != 2 && d.element_bytes != 4 && d.element_bytes != 8)
    return false;
  for (int i = 0; i < d.rank; ++i) {
    if (d.dims[i] == 0 || d.dims[i] > (uint64_t(1) << 32)) return false;
    if (d.box[i] == 0 || d.box[i] > 256) return false;
    if (d.element_strides[i] == 0 || d.element_strides[i] > 8) return false;
    if (i > 0 && (d.byte_strides[i] % 16 != 0 || d.byte_strides[i] >= (uint64_t(1) << 40)))
      return false;
  }
  const uint64_t inner_bytes = uint64_t(d.box[0]) * d.element_bytes;
  if (inner_bytes % 16 != 0) return false;
  if (d.swizzle_bytes != 0 && inner_bytes > uint64_t(d.swizzle_bytes)) return false;
  return d.swizzle_bytes == 0 || d.swizzle_bytes == 32 || d.swizzle_bytes == 64 ||
         d.swizzle_bytes == 128;
}

}  // namespace

bool encode_tensor_map(void* tensor_map, const TensorMapDescription& d) {
  if (!valid_tensor_map(d)) return false;
  PackedTensorMap packed{};
  packed.magic = kTensorMapMagic;
  packed.address = reinterpret_cast<uintptr_t>(d.address);
  for (int i = 0; i < d.rank; ++i) {
    packed.dims[i] = d.dims[i];
    if (i > 0) packed.byte_strides[i - 1] = d.byte_strides[i];
    packed.box[i] = uint16_t(d.box[i]);
    packed.element_strides[i] = uint8_t(d.element_strides[i]);
  }
  packed.rank = uint8_t(d.rank);
  packed.element_bytes = uint8_t(d.element_bytes);
  packed.swizzle_bytes = uint8_t(d.swizzle_bytes);
  packed.nan_fill = d.nan_fill;
  std::memset(tensor_map, 0, 128);
  std::memcpy(tensor_map, &packed, sizeof(packed));
  return true;
}

uint32_t shared_window_address(const void* pointer) {
  RuntimeSection section;
  const uintptr_t address = reinterpret_cast<uintptr_t>(pointer);
  SharedRegion* region = shared_region_of(address);
  if (region == nullptr) {
    fault_from_fiber(describe_wild_address(address, 1, "cvta.to.shared operand") +
                     " (must be shared memory)");
  }
  return window_of(*region, address);
}

void mbarrier_init(void* barrier, int arrivals) {
  RuntimeSection section;
  Fiber& fiber = current_fiber();
  const uintptr_t address = reinterpret_cast<uintptr_t>(barrier);
  SharedRegion* region = mbarrier_region(address, "mbarrier.init");
  if (arrivals < 1 || arrivals > (1 << 20) - 1) {
    fault_from_fiber("mbarrier.init with arrival count " + std::to_string(arrivals) +
                     " (must be 1 .. 2^20 - 1)");
  }
  const uint32_t window = window_of(*region, address);
  if (g_mbarriers.count(window)) {
    fault_from_fiber("mbarrier.init on " + shared_location(*region, address) +
                     ", which is already a live mbarrier");
  }
  if (int(g_mbarriers.size()) >= kMaxMbarriers) {
    fault_from_fiber("more than " + std::to_string(kMaxMbarriers) +
                     " mbarriers in one block (the emulator's limit)");
  }
  enable_vector_clocks();
  const std::string report =
      check_shared(*region, address, 8, true, thread_accessor(fiber.index), "mbarrier.init");
  if (!report.empty()) fault_from_fiber(report);
  for (int i = 0; i < 8; ++i) region->shadow[address - uintptr_t(region->base) + i].mbarrier = true;
  Mbarrier& b = g_mbarriers[window];
  b.window = window;
  b.agent = g_threads + g_warpgroups + int(g_mbarrier_of_agent.size());
  g_mbarrier_of_agent.push_back(window);
  b.count = b.pending = arrivals;
  b.init_thread = fiber.index;
  b.release.assign(g_clock_width, 0);
  b.last_phase.assign(g_clock_width, 0);
  std::memset(barrier, 0, 8);
  fiber.initialised_barriers.push_back(barrier);
}

void mbarrier_init_fence() {
  RuntimeSection section;
  Fiber& fiber = current_fiber();
  for (void* barrier : fiber.initialised_barriers) {
    mbarrier_at(barrier, fiber.index, "fence.mbarrier_init").init_fenced = true;
  }
  fiber.initialised_barriers.clear();
}

void mbarrier_arrive(void* barrier, uint32_t expect_tx_bytes) {
  RuntimeSection section;
  Fiber& fiber = current_fiber();
  Mbarrier& b = mbarrier_at(barrier, fiber.index,
                            expect_tx_bytes ? "mbarrier.arrive.expect_tx" : "mbarrier.arrive");
  if (b.pending == 0) {
    fault_from_fiber("mbarrier.arrive on the mbarrier at shared " + hex(b.window) +
                     " in a phase that already has all " + std::to_string(b.count) +
                     " of its arrivals (over-arrival)");
  }
  join_clocks(b.release.data(), clock_row(fiber.index));
  advance_clock(fiber.index);
  b.tx += expect_tx_bytes;
  --b.pending;
  if (b.pending == 0 && b.tx == 0) complete_phase(b);
}

void mbarrier_wait(void* barrier, uint32_t parity) {
  RuntimeSection section;
  Fiber& fiber = current_fiber();
  Mbarrier* b = &mbarrier_at(barrier, fiber.index, "mbarrier.try_wait.parity");
  const uint32_t window = b->window;
  if ((parity & 1) == 1 && b->completed == 0) {
    fault_from_fiber("mbarrier.try_wait.parity 1 on the mbarrier at shared " + hex(window) +
                     " before it completed any phase: parity 1 names the phase before the first, "
                     "so the wait returns at once and what the barrier guards has not arrived");
  }
  while ((b->completed & 1) == (parity & 1)) {  // the phase with this parity is the current one
    fiber.state = State::kAtMbarrier;
    fiber.waiting_barrier = window;
    fiber.waiting_parity = parity & 1;
    while (fiber.state != State::kRunnable) yield_fiber();
    b = &g_mbarriers.at(window);
  }
  join_clocks(clock_row(fiber.index), b->last_phase.data());
}

void named_barrier(int id, int threads, bool wait) {
  RuntimeSection section;
  Fiber& fiber = current_fiber();
  const char* what = wait ? "bar.sync" : "bar.arrive";
  if (id < 0 || id >= kNamedBarriers || threads <= 0 || threads % kWarpSize != 0 ||
      threads > g_threads) {
    fault_from_fiber(std::string(what) + " " + std::to_string(id) + ", " + std::to_string(threads) +
                     ": the id must be 0..15 and the count a multiple of 32 up to the block size");
  }
  NamedBarrier& b = g_named_barriers[id];
  if (!b.arrived.empty() && b.threads != threads) {
    fault_from_fiber(std::string(what) + " " + std::to_string(id) + " with " +
                     std::to_string(threads) + " threads, while " + thread_name(b.arrived[0]) +
                     " arrived at it with " + std::to_string(b.threads));
  }
  enable_vector_clocks();
  b.threads = threads;
  b.arrived.push_back(fiber.index);
  b.waits.push_back(wait);
  if (wait) {
    fiber.state = State::kAtNamedBarrier;
    fiber.waiting_barrier = uint32_t(id);
  }
  if (int(b.arrived.size()) == threads) {  // the last arrival completes the phase
    std::vector<uint32_t> released(g_clock_width, 0);
    for (int t : b.arrived) join_clocks(released.data(), clock_row(t));
    for (size_t i = 0; i < b.arrived.size(); ++i) {
      const int t = b.arrived[i];
      if (b.waits[i]) {
        join_clocks(clock_row(t), released.data());
        g_fibers[t]->state = State::kRunnable;
      }
      advance_clock(t);
    }
    b = NamedBarrier{};
  }
  while (fiber.state != State::kRunnable) yield_fiber();
}

bool elect_one(unsigned mask) {
  RuntimeSection section;
  join_collective(Collective::kElect, mask);
  return current_fiber().result != 0;
}

void fence_proxy_async() {
  RuntimeSection section;
  Fiber& fiber = current_fiber();
  fiber.proxy_fenced_clock = fiber.clock;
  advance_clock(fiber.index);
}

void tma_load(void* shared, const void* tensor_map, void* barrier, const int* coords, int rank) {
  RuntimeSection section;
  Fiber& fiber = current_fiber();
  const uintptr_t map_address = reinterpret_cast<uintptr_t>(tensor_map);
  // A __grid_constant__ parameter (which the call copies onto the thread's stack here) or
  // global memory.
  const bool map_is_parameter =
      (map_address >= g_parameters_begin && map_address + 128 <= g_parameters_end) ||
      map_address - reinterpret_cast<uintptr_t>(fiber.stack_low) < kStackBytes;
  if (!map_is_parameter) {
    const std::string report =
        check_global(map_address, 128, GlobalAccess::kRead, fiber.index, "tensor-map read");
    if (!report.empty()) fault_from_fiber(report);
  }
  if (map_address % 64 != 0)
    fault_from_fiber("tensor map at " + hex(map_address) + " is not 64-byte aligned");
  PackedTensorMap map;
  std::memcpy(&map, tensor_map, sizeof(map));
  if (map.magic != kTensorMapMagic) {
    fault_from_fiber(
        "cp.async.bulk.tensor with a tensor map that cuTensorMapEncodeTiled did not encode");
  }
  if (map.rank != rank) {
    fault_from_fiber("cp.async.bulk.tensor." + std::to_string(rank) + "d with a rank-" +
                     std::to_string(map.rank) + " tensor map");
  }
  for (int i = 0; i < rank; ++i) {
    if (map.element_strides[i] != 1) fault_from_fiber("TMA element strides != 1 are not emulated");
  }
  Mbarrier& b = mbarrier_at(barrier, fiber.index, "cp.async.bulk.tensor completion");
  if (!b.init_fenced) {
    fault_from_fiber(
        "cp.async.bulk.tensor completes on an mbarrier whose initialisation no "
        "fence.mbarrier_init made visible to the async proxy");
  }
  // The box in shared memory: rows of box[0] elements, packed, in box order.
  const int element_bytes = map.element_bytes;
  const size_t row_bytes = size_t(map.box[0]) * element_bytes;
  size_t rows = 1;
  for (int i = 1; i < rank; ++i) rows *= map.box[i];
  const size_t box_bytes = rows * row_bytes;
  const uintptr_t destination = reinterpret_cast<uintptr_t>(shared);
  SharedRegion* region = shared_region_of(destination);
  if (region == nullptr) {
    fault_from_fiber(describe_wild_address(destination, box_bytes, "TMA destination") +
                     " (must be shared memory)");
  }
  const uint32_t window = window_of(*region, destination);
  // Swizzling acts on address bits, so a swizzled box must start where its pattern starts.
  const uint32_t alignment = map.swizzle_bytes ? 8u * map.swizzle_bytes : 128u;
  if (window % alignment != 0) {
    fault_from_fiber("TMA destination at shared " + hex(window) + " is not " +
                     std::to_string(alignment) + "-byte aligned" +
                     (map.swizzle_bytes ? " (a " + std::to_string(map.swizzle_bytes) +
                                              "-byte swizzle pattern repeats every " +
                                              std::to_string(alignment) + " bytes)"
                                        : std::string()));
  }
  const Accessor me{fiber.index, uint16_t(b.agent), b.completed + 1, clock_row(fiber.index), true};
  const std::string report = check_shared(*region, destination, box_bytes, true, me, "TMA write");
  if (!report.empty()) fault_from_fiber(report);

  // Out-of-bounds elements are zeros, or NaN (all-ones bits: NaN in every float format) when
  // the map asks for CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA.
  std::vector<uint8_t> box(box_bytes, map.nan_fill ? 0xff : 0);
  for (size_t row = 0; row < rows; ++row) {
    int64_t position[5] = {};
    bool inside = true;
    size_t rest = row;
    for (int i = 1; i < rank; ++i) {
      position[i] = int64_t(coords[i]) + int64_t(rest % map.box[i]);
      rest /= map.box[i];
      inside = inside && position[i] >= 0 && uint64_t(position[i]) < map.dims[i];
    }
    if (!inside) continue;
    uint64_t row_offset = 0;
    for (int i = 1; i < rank; ++i) row_offset += uint64_t(position[i]) * map.byte_strides[i - 1];
    const int64_t first = std::max<int64_t>(coords[0], 0);
    const int64_t last = std::min<int64_t>(int64_t(coords[0]) + map.box[0], int64_t(map.dims[0]));
    if (first >= last) continue;
    const uintptr_t source = uintptr_t(map.address) + row_offset + uint64_t(first) * element_bytes;
    const size_t bytes = size_t(last - first) * element_bytes;
    const std::string source_report =
        check_global(source, bytes, GlobalAccess::kRead, fiber.index, "TMA source read");
    if (!source_report.empty()) fault_from_fiber(source_report);
    std::memcpy(&box[row * row_bytes + size_t(first - coords[0]) * element_bytes],
                reinterpret_cast<const void*>(source), bytes);
  }
  for (size_t i = 0; i < box_bytes; i += 16) {  // 16-byte chunks move as a whole under swizzle
    const uint32_t target = swizzle_address(window + uint32_t(i), map.swizzle_bytes);
    std::memcpy(host_address(*region, target), &box[i], std::min<size_t>(16, box_bytes - i));
  }
  ++g_counters.tma;
  complete_transactions(b, int64_t(box_bytes));
}

// --- Warpgroup collectives ----------------------------------------------------------------------

namespace {

// A report about a whole warpgroup's instruction, located at its first thread.
std::string warpgroup_fault(int warpgroup, const std::string& report) {
  return report + " [" + where_in_kernel(warpgroup * kWarpgroupSize) + ", warpgroup " +
         std::to_string(warpgroup) + "]";
}

// Reads one wgmma operand (rows x k elements) through its descriptor into `values` [row][k],
// checking every byte as a read by the warpgroup's wgmma agent; "" or a report.
std::string read_wgmma_operand(uint64_t descriptor, bool k_major, int rows, int k, WgmmaType type,
                               const Accessor& me, float* values, int row_stride, int k_stride,
                               const char* operand) {
  const GmmaDescriptor d = decode_gmma_descriptor(descriptor);
  if (d.base_offset != 0) {
    return std::string("wgmma descriptor of ") + operand +
           " has a base offset; only 0 is emulated (CuTe and our kernels encode 0)";
  }
  const int element_bytes = type == WgmmaType::kE4m3 ? 1 : 2;
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < k; ++c) {
      const uint32_t window = gmma_element_address(d, k_major, element_bytes, r, c);
      SharedRegion* region = region_at_window(window);
      if (region == nullptr) {
        return std::string("wgmma ") + operand + " element (" + std::to_string(r) + ", " +
               std::to_string(c) + ") lies at shared " + hex(window) +
               ", outside shared memory (descriptor start " + hex(d.start_address) + ", LBO " +
               std::to_string(d.leading_byte_offset) + ", SBO " +
               std::to_string(d.stride_byte_offset) + ")";
      }
      const uint8_t* host = host_address(*region, window);
      const std::string report = check_shared(*region, reinterpret_cast<uintptr_t>(host),
                                              element_bytes, false, me, "wgmma operand read");
      if (!report.empty()) return report;
      float value;
      if (type == WgmmaType::kE4m3) {
        value = e4m3_to_float(*host);
      } else {
        const uint16_t bits = read_b16(host);
        value = type == WgmmaType::kBf16 ? bf16_to_float(bits) : half_to_float(bits);
      }
      values[r * row_stride + c * k_stride] = value;
    }
  }
  return {};
}

// The lowest vector-clock entry over the warpgroup's threads: what all of them know.
std::vector<uint32_t> warpgroup_knowledge(int warpgroup) {
  std::vector<uint32_t> known(g_clock_width, ~0u);
  for (int t = warpgroup * kWarpgroupSize; t < (warpgroup + 1) * kWarpgroupSize; ++t) {
    const uint32_t* row = clock_row(t);
    for (int i = 0; i < g_clock_width; ++i) known[i] = std::min(known[i], row[i]);
  }
  return known;
}

std::string issue_wgmma(int warpgroup, Fiber* const* threads) {
  const WgmmaIssue& issue = threads[0]->wgmma;
  for (int i = 0; i < kWarpgroupSize; ++i) {
    const WgmmaIssue& other = threads[i]->wgmma;
    if (other.n != issue.n || other.type != issue.type ||
        other.a_descriptor != issue.a_descriptor || other.b_descriptor != issue.b_descriptor ||
        (other.a_registers == nullptr) != (issue.a_registers == nullptr) ||
        other.a_k_major != issue.a_k_major || other.b_k_major != issue.b_k_major ||
        other.accumulate != issue.accumulate) {
      return "wgmma.mma_async operands differ between " + thread_name(threads[0]->index) + " and " +
             thread_name(threads[i]->index) +
             " (shape, types, descriptors and scale-d must be warpgroup-uniform)";
    }
    if (!threads[i]->wgmma_fenced) {
      return "wgmma.mma_async by " + thread_name(threads[i]->index) +
             " with no wgmma.fence since its registers were last accessed (PTX requires one "
             "before the first wgmma and after touching accumulators or A fragments)";
    }
  }
  const bool sixteen_bit = issue.type != WgmmaType::kE4m3;
  if (issue.n < 8 || issue.n > 256 || issue.n % 8 != 0) {
    return "wgmma.mma_async with N = " + std::to_string(issue.n) + " (must be 8..256, step 8)";
  }
  if (!sixteen_bit && (!issue.a_k_major || !issue.b_k_major)) {
    return "wgmma.mma_async e4m3 with a transposed operand (FP8 wgmma reads K-major only)";
  }
  if (!sixteen_bit && issue.a_registers != nullptr) {
    return "wgmma.mma_async e4m3 with A from registers is not emulated";
  }
  enable_vector_clocks();
  WarpgroupAsync& async = g_warpgroup_async[warpgroup];
  const uint32_t group = async.groups_committed + 1;
  const std::vector<uint32_t> knowledge = warpgroup_knowledge(warpgroup);
  const Accessor me{-1, uint16_t(wgmma_agent(warpgroup)), group, knowledge.data(), true};
  WgmmaOperation op;
  op.n = issue.n;
  op.k = sixteen_bit ? 16 : 32;
  op.accumulate = issue.accumulate;
  op.a.assign(64 * op.k, 0.f);
  op.b.assign(op.k * op.n, 0.f);
  if (issue.a_registers != nullptr) {
    for (int i = 0; i < kWarpgroupSize; ++i) {
      for (int v = 0; v < 8; ++v) {
        const FragmentCoord at = wgmma_m64k16_a(i, v);
        const uint16_t bits = uint16_t(threads[i]->wgmma.a_registers[v / 2] >> (16 * (v % 2)));
        op.a[at.row * op.k + at.col] =
            issue.type == WgmmaType::kBf16 ? bf16_to_float(bits) : half_to_float(bits);
      }
    }
  } else {
    const std::string report = read_wgmma_operand(issue.a_descriptor, issue.a_k_major, 64, op.k,
                                                  issue.type, me, op.a.data(), op.k, 1, "A");
    if (!report.empty()) return report;
  }
  const std::string report = read_wgmma_operand(issue.b_descriptor, issue.b_k_major, op.n, op.k,
                                                issue.type, me, op.b.data(), 1, op.n, "B");
  if (!report.empty()) return report;
  for (int i = 0; i < kWarpgroupSize; ++i) {
    Fiber& f = *threads[i];
    op.accumulators[i] = f.wgmma.accumulators;
    const uintptr_t accumulators = reinterpret_cast<uintptr_t>(f.wgmma.accumulators);
    f.registers_in_flight.push_back(
        {accumulators, accumulators + sizeof(float) * op.n / 2, true, group});
    if (f.wgmma.a_registers != nullptr) {
      const uintptr_t a = reinterpret_cast<uintptr_t>(f.wgmma.a_registers);
      f.registers_in_flight.push_back({a, a + 4 * sizeof(uint32_t), false, group});
    }
  }
  async.open.push_back(std::move(op));
  ++g_counters.wgmma;
  return {};
}

// D = A·Bᵀ (+ D): products exact in fp32, each sum in k order, rounded at every step.
void execute_wgmma(const WgmmaOperation& op) {
  std::vector<float> d(64 * op.n);
  for (int i = 0; i < kWarpgroupSize; ++i) {
    for (int v = 0; v < op.n / 2; ++v) {
      const FragmentCoord at = wgmma_m64n_c(i, v);
      d[at.row * op.n + at.col] = op.accumulate ? op.accumulators[i][v] : 0.f;
    }
  }
  for (int m = 0; m < 64; ++m) {
    float* row = &d[m * op.n];
    for (int k = 0; k < op.k; ++k) {
      const float a = op.a[m * op.k + k];
      const float* b = &op.b[k * op.n];
      for (int c = 0; c < op.n; ++c) row[c] += a * b[c];
    }
  }
  for (int i = 0; i < kWarpgroupSize; ++i) {
    for (int v = 0; v < op.n / 2; ++v) {
      const FragmentCoord at = wgmma_m64n_c(i, v);
      op.accumulators[i][v] = d[at.row * op.n + at.col];
    }
  }
}

void wait_wgmma(int warpgroup, Fiber* const* threads, int pending_groups) {
  WarpgroupAsync& async = g_warpgroup_async[warpgroup];
  while (int(async.committed.size()) > pending_groups) {
    for (const WgmmaOperation& op : async.committed.front()) execute_wgmma(op);
    async.committed.pop_front();
    ++async.groups_completed;
  }
  for (int i = 0; i < kWarpgroupSize; ++i) {
    Fiber& f = *threads[i];
    auto& ranges = f.registers_in_flight;
    ranges.erase(std::remove_if(
                     ranges.begin(), ranges.end(),
                     [&](const RegistersInFlight& r) { return r.group <= async.groups_completed; }),
                 ranges.end());
    f.wgmma_fenced = false;
    if (vector_clocks_on()) {
      uint32_t& known = clock_row(f.index)[wgmma_agent(warpgroup)];
      known = std::max(known, async.groups_completed);
    }
  }
}

// Completes the warpgroup collective all 128 threads of `warpgroup` wait at, or records why not.
void complete_warpgroup_collective(int warpgroup) {
  Fiber* threads[kWarpgroupSize];
  for (int i = 0; i < kWarpgroupSize; ++i) {
    threads[i] = g_fibers[warpgroup * kWarpgroupSize + i].get();
  }
  const Fiber& leader = *threads[0];
  for (int i = 1; i < kWarpgroupSize; ++i) {
    const Fiber& f = *threads[i];
    if (f.collective != leader.collective || f.collective_operand != leader.collective_operand ||
        f.increase_registers != leader.increase_registers) {
      record_fault(warpgroup_fault(
          warpgroup, "warpgroup divergence: " + thread_name(leader.index) + " waits at " +
                         collective_name(leader.collective) + " but " + thread_name(f.index) +
                         " at " + collective_name(f.collective) +
                         " (a different instruction or operand)"));
      return;
    }
  }
  std::string report;
  switch (leader.collective) {
    case Collective::kWgmmaFence:
      for (Fiber* f : threads) f->wgmma_fenced = true;
      break;
    case Collective::kWgmmaMma:
      report = issue_wgmma(warpgroup, threads);
      break;
    case Collective::kWgmmaCommit: {
      WarpgroupAsync& async = g_warpgroup_async[warpgroup];
      async.committed.push_back(std::move(async.open));
      async.open.clear();
      ++async.groups_committed;
      break;
    }
    case Collective::kWgmmaWait:
      wait_wgmma(warpgroup, threads, leader.collective_operand);
      break;
    case Collective::kSetmaxnreg: {
      const int registers = leader.collective_operand;
      if (registers < 24 || registers > 256 || registers % 8 != 0) {
        report = "setmaxnreg with " + std::to_string(registers) +
                 " registers (must be 24..256, a multiple of 8)";
      }
      break;
    }
    default:
      report = std::string("internal: ") + collective_name(leader.collective) +
               " is not a warpgroup collective";
  }
  if (!report.empty()) {
    record_fault(warpgroup_fault(warpgroup, report));
    return;
  }
  for (Fiber* f : threads) f->state = State::kRunnable;
  g_warpgroup_arrivals[warpgroup] = 0;
}

// Deposits this thread's part of a warpgroup collective and waits until all 128 threads of
// its warpgroup have and the last one completed it.
void join_warpgroup_collective(Collective collective) {
  Fiber& fiber = current_fiber();
  if (g_threads % kWarpgroupSize != 0) {
    fault_from_fiber(std::string(collective_name(collective)) + " in a block of " +
                     std::to_string(g_threads) + " threads (warpgroups need a multiple of 128)");
  }
  fiber.collective = collective;
  fiber.state = State::kAtWarpgroupCollective;
  const int warpgroup = fiber.index / kWarpgroupSize;
  if (++g_warpgroup_arrivals[warpgroup] == kWarpgroupSize) {
    complete_warpgroup_collective(warpgroup);
    if (!g_fault.empty()) abandon_fiber();
  }
  while (fiber.state != State::kRunnable) yield_fiber();
}

}  // namespace

namespace {
// Joins a warpgroup collective with this thread's operand (a count; 0 where there is none).
void join_warpgroup_instruction(Collective collective, int operand, bool increase_registers) {
  Fiber& fiber = current_fiber();
  fiber.collective_operand = operand;
  fiber.increase_registers = increase_registers;
  join_warpgroup_collective(collective);
}
}  // namespace

void set_max_registers(int registers, bool increase) {
  RuntimeSection section;
  join_warpgroup_instruction(Collective::kSetmaxnreg, registers, increase);
}

void wgmma_fence() {
  RuntimeSection section;
  join_warpgroup_instruction(Collective::kWgmmaFence, 0, false);
}

void wgmma_mma_async(const WgmmaIssue& issue) {
  RuntimeSection section;
  current_fiber().wgmma = issue;
  join_warpgroup_instruction(Collective::kWgmmaMma, 0, false);
}

void wgmma_commit() {
  RuntimeSection section;
  join_warpgroup_instruction(Collective::kWgmmaCommit, 0, false);
}

void wgmma_wait(int pending_groups) {
  RuntimeSection section;
  join_warpgroup_instruction(Collective::kWgmmaWait, pending_groups, false);
}

}  // namespace dsa_emu

// --- Instrumentation hooks ---------------------------------------------------------------------
// GCC's -fsanitize=thread calls these before every load and store of the kernel objects (no
// sanitizer runtime is linked: the emulator is the runtime).

#define DEEPSEEK_ATTN_EMU_HOOK(name, bytes, write)                                                \
  extern "C" __attribute__((visibility("hidden"))) void name(void* p) {                           \
    if (dsa_emu::g_checking) dsa_emu::check_access(reinterpret_cast<uintptr_t>(p), bytes, write); \
  }
#define DEEPSEEK_ATTN_EMU_ACCESS_HOOKS(bytes)                        \
  DEEPSEEK_ATTN_EMU_HOOK(__tsan_read##bytes, bytes, false)           \
  DEEPSEEK_ATTN_EMU_HOOK(__tsan_write##bytes, bytes, true)           \
  DEEPSEEK_ATTN_EMU_HOOK(__tsan_unaligned_read##bytes, bytes, false) \
  DEEPSEEK_ATTN_EMU_HOOK(__tsan_unaligned_write##bytes, bytes, true)
DEEPSEEK_ATTN_EMU_ACCESS_HOOKS(1)
DEEPSEEK_ATTN_EMU_ACCESS_HOOKS(2)
DEEPSEEK_ATTN_EMU_ACCESS_HOOKS(4)
DEEPSEEK_ATTN_EMU_ACCESS_HOOKS(8)
DEEPSEEK_ATTN_EMU_ACCESS_HOOKS(16)
#undef DEEPSEEK_ATTN_EMU_ACCESS_HOOKS
#undef DEEPSEEK_ATTN_EMU_HOOK

extern "C" __attribute__((visibility("hidden"))) void __tsan_read_range(void* p, size_t bytes) {
  if (dsa_emu::g_checking) dsa_emu::check_access(reinterpret_cast<uintptr_t>(p), bytes, false);
}
extern "C" __attribute__((visibility("hidden"))) void __tsan_write_range(void* p, size_t bytes) {
  if (dsa_emu::g_checking) dsa_emu::check_access(reinterpret_cast<uintptr_t>(p), bytes, true);
}
extern "C" __attribute__((visibility("hidden"))) void __tsan_init() {}
extern "C" __attribute__((visibility("hidden"))) void __tsan_func_entry(void*) {}
extern "C" __attribute__((visibility("hidden"))) void __tsan_func_exit() {}
// A function-local static's guard (the host tensor-map encoder lookup in the launch code) is
// read with an atomic load; host code outside kernels, so nothing to check.
extern "C" __attribute__((visibility("hidden"))) uint8_t
__tsan_atomic8_load(const volatile uint8_t* a, int) {
  return __atomic_load_n(a, __ATOMIC_ACQUIRE);
}
