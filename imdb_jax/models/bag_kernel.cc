// The embedding bag's one loop for XLA:CPU, as a typed XLA FFI handler (imdb_jax/models/bag_kernel.py
// builds it with the system's C++ compiler and registers it as "imdb_jax_add_rows").
//
// add_rows(source[n, w], from_ids[c], to_ids[c], row_ids[c]; batch_size) -> out[m, w]:
//   out = 0; for each occurrence i in order, if row_ids[i] < batch_size (padding is skipped):
//   out[to_ids[i]] += source[from_ids[i]].
// The forward pass adds kernel rows from words into reviews, the backward pass gradient rows from
// reviews into words. Each output float is a sum in occurrence order, the order XLA's chunked
// scatter adds in, so the result is bitwise the XLA loop's; a column never reads another column,
// so it does not depend on what is fused beside it. Ids out of range are skipped, never read.
//
// batch_pairs(indptr[r+1], indices[nnz], lengths[r+1], rows[b], real_rows[]) -> words[c], row_ids[c],
// positions[c]; with_positions: a batch of CSR rows cut into the flat (word, row-in-batch) pairs the
// bag takes, each row's words in CSR order, the rows in batch order, then padding (word 0, row `b`,
// position 0) up to the capacity `c`; a row from `real_rows` on reads its words from row 0's start
// (it has none). `positions` (each pair's CSR position, to gather weighted rows' values) is written
// only `with_positions`; otherwise it is left as it is and must not be read.
// The integers `imdb_jax.train.device_data._pairs` computes with XLA's scatter, cumsum and gathers,
// in one pass.
//
// sort_values(keys u32[n], values s32[n]) -> values s32[n]: the values in the order of a stable sort
// by key (equal keys keep their order): the second output of XLA's `sort(..., is_stable=true)` of
// (keys, values), which `jax.random.permutation` runs, as an LSD radix sort (three passes of 11 bits).
//
// Wide blocks bucket the occurrences first, a stable counting sort. The forward pass, where the
// kernels read at once outgrow the last-level cache, each review's words come in ascending order
// (a CSR matrix with sorted indices) and the output fits in that cache, adds word by word: each kernel row is
// read once, and each review still takes its words' rows in ascending order. The backward pass
// adds target by target: each word's gradient row takes all its reviews' rows at once while it is
// in L1, in review order. Either way every sum keeps its order, so the bits are the same.
//
// Both cores: the output rows are dealt out to the threads of XLA's intra-op pool by
// `target % parts` (`parts` a power of two); every thread reads all the occurrences in order and
// adds only those into the rows it owns. A row's sum is then the same adds in the same order
// whatever the thread count, so the bits do not depend on it (word by word, the threads split the
// columns instead, to the same effect). The calling thread does a share itself and takes back any share
// no pool thread has started, so the call never waits on a busy pool. A call that starts while
// another is running (several CPU devices, each on its own core) stays on its own thread: the
// cores are busy already (measured: splitting there made the 4-seed study 15% slower).
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// One row added into another. The columns are independent, so vector lanes change no bits.
__attribute__((always_inline)) static inline void AddRow(float* __restrict__ to, const float* __restrict__ from,
                                                         int64_t width) {
  for (int64_t j = 0; j < width; ++j) to[j] += from[j];
}

namespace {

struct Work {
  const float* from;
  float* to;
  const int32_t* origins;
  const int32_t* targets;
  const int32_t* rows;
  int64_t count, width, source_rows, out_rows, batch_size;
  int64_t parts;  // a power of two
  // Null, or the valid occurrences' origins bucketed by target (`Bucket`): target t's are
  // order[starts[t]] .. order[starts[t + 1] - 1], in occurrence order.
  const int32_t* order = nullptr;
  const int64_t* starts = nullptr;
  // Null, or the valid occurrences' targets bucketed by origin (`Bucket`), added origin-major, the
  // columns split between the shares.
  const int32_t* by_origin = nullptr;
  const int64_t* origin_starts = nullptr;

  void Run(int64_t part) const;
};

// Share `part` of `work`: zero the rows it owns, then add into them in occurrence order. The whole
// loop is compiled for the widest instruction set the CPU has (picked when the library loads), so
// the row adds inline into it: a call per occurrence cost as much as a 16-float add.
__attribute__((target_clones("avx512f", "avx2", "default"))) static void RunShare(const Work& work, int64_t part) {
  const int64_t width = work.width, parts = work.parts;
  if (work.by_origin != nullptr) {  // each source row read once, into an output that stays in cache
    const int64_t share = ((width + parts - 1) / parts + 15) / 16 * 16;  // whole cache lines
    const int64_t first = part * share, columns = std::min(share, width - first);
    if (columns <= 0) return;
    for (int64_t target = 0; target < work.out_rows; ++target) {
      std::memset(work.to + target * width + first, 0, sizeof(float) * static_cast<size_t>(columns));
    }
    for (int64_t origin = 0; origin < work.source_rows; ++origin) {
      const float* from = work.from + origin * width + first;
      for (int64_t k = work.origin_starts[origin]; k < work.origin_starts[origin + 1]; ++k) {
        AddRow(work.to + static_cast<int64_t>(work.by_origin[k]) * width + first, from, columns);
      }
    }
    return;
  }
  if (work.order != nullptr) {  // one target row at a time: it stays in L1 while its adds arrive
    for (int64_t target = part; target < work.out_rows; target += parts) {
      float* to = work.to + target * width;
      std::memset(to, 0, sizeof(float) * static_cast<size_t>(width));
      for (int64_t k = work.starts[target]; k < work.starts[target + 1]; ++k) {
        AddRow(to, work.from + static_cast<int64_t>(work.order[k]) * width, width);
      }
    }
    return;
  }
  for (int64_t target = part; target < work.out_rows; target += parts) {
    std::memset(work.to + target * width, 0, sizeof(float) * static_cast<size_t>(width));
  }
  for (int64_t i = 0; i < work.count; ++i) {
    const int64_t row = work.rows[i], origin = work.origins[i], target = work.targets[i];
    if (row < 0 || row >= work.batch_size || origin < 0 || origin >= work.source_rows || target < 0 ||
        target >= work.out_rows || (target & (parts - 1)) != part) {
      continue;
    }
    AddRow(work.to + target * width, work.from + origin * width, width);
  }
}

void Work::Run(int64_t part) const { RunShare(*this, part); }

// The shares, each run once by whichever thread claims it first. A claim and the count of
// shares running on pool threads change together, under the lock, so the caller cannot see
// "nothing running" between a pool thread's claim and its start.
struct Shares {
  explicit Shares(const Work& work) : work(work), claimed(work.parts, false) {}
  const Work work;
  std::vector<bool> claimed;
  std::mutex mutex;
  std::condition_variable finished;
  int64_t running = 0;  // shares claimed by pool threads and not yet done

  void RunIfUnclaimed(int64_t part, bool pool_thread) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (claimed[part]) return;
      claimed[part] = true;
      if (pool_thread) ++running;
    }
    work.Run(part);
    if (pool_thread) {
      std::lock_guard<std::mutex> lock(mutex);
      if (--running == 0) finished.notify_all();
    }
  }
};

// Below this many floats added, or rows this narrow, one thread does it all: every thread reads
// every occurrence, and for a narrow row that costs as much as the adds (measured: at width 16,
// two threads took 0.6 ms where one took 0.3 ms; at width 64, 1.0 ms against 0.3 ms).
constexpr int64_t kMinFloatsToSplit = int64_t{1} << 18;
constexpr int64_t kMinWidthToSplit = 128;
constexpr int64_t kMaxParts = 8;

// Bucketing pays where the rows read at random (the forward pass's source) or written at random
// (the backward pass's output) are too many for the caches. Measured (ops summed over devices):
// the backward pass bucketed 36 -> 21 ms a step in the 4-seed study (1,256 columns a device, two
// devices), 5.1-9.2 -> 3.3-3.5 ms in the 1-seed study on one device (628 columns, a 25 MB
// gradient); at the seed's 16 columns (640 KB) the sort cost more than it saved. The forward pass
// word by word: 30-37 -> 17-18 ms with 4 seeds (two 50 MB kernels at once), but 3.8 -> 6.0-7.5 ms
// with 1 seed on one device (a 25 MB kernel the 32 MB L3 mostly holds), and 64 x 16-16 variants (a
// 41 MB kernel on one device) 0.016 -> 0.017-0.019 s a variant-epoch; so only from 47 MB of kernels
// read at once (this call's and those running beside it). The same held on a 2-core Intel VM whose
// sysfs gives a 480 MB L3 (the host's, shared): 4 seeds 30 -> 22-23 ms, 64 variants 0.019 ->
// 0.022 s; so the figure is a fixed one, not the cache size the system reports. The output stays
// in cache only while it is small: output tiles small enough for L2 were slower (27-33 ms at
// 128-1,024 KB, 72-75 ms at 32 KB), as each tile reads every bucket again.
constexpr int64_t kMinBytesToSort = int64_t{8} << 20;
constexpr int64_t kMinSourceBytesByOrigin = int64_t{45} << 20;  // 47 MB, between the two
constexpr int64_t kMaxOutBytesByOrigin = int64_t{8} << 20;

bool Valid(const Work& work, int64_t i) {
  const int64_t row = work.rows[i], origin = work.origins[i], target = work.targets[i];
  return row >= 0 && row < work.batch_size && origin >= 0 && origin < work.source_rows && target >= 0 &&
         target < work.out_rows;
}

// Whether the occurrences that are not padding come with their targets in non-decreasing order.
bool TargetsInOrder(const Work& work) {
  int64_t last = -1;
  for (int64_t i = 0; i < work.count; ++i) {
    if (work.rows[i] < 0 || work.rows[i] >= work.batch_size) continue;
    if (work.targets[i] < last) return false;
    last = work.targets[i];
  }
  return true;
}

// Whether, besides that, each target's origins come in non-decreasing order (each review's words
// ascending, as in a CSR matrix with sorted indices): then adding origin by origin gives every
// target its adds in the same order.
bool TargetsAndOriginsInOrder(const Work& work) {
  int64_t last_target = -1, last_origin = -1;
  for (int64_t i = 0; i < work.count; ++i) {
    if (!Valid(work, i)) continue;
    const int64_t target = work.targets[i], origin = work.origins[i];
    if (target < last_target || (target == last_target && origin < last_origin)) return false;
    last_target = target;
    last_origin = origin;
  }
  return true;
}

// The valid occurrences bucketed by target (their origins stored) or by origin (their targets
// stored), in occurrence order within each bucket: key k's are order[starts[k]] .. order[starts[k + 1] - 1].
void Bucket(const Work& work, bool by_target, std::vector<int64_t>& starts, std::vector<int32_t>& order) {
  const int32_t* keys = by_target ? work.targets : work.origins;
  const int32_t* values = by_target ? work.origins : work.targets;
  const int64_t buckets = by_target ? work.out_rows : work.source_rows;
  starts.assign(static_cast<size_t>(buckets) + 1, 0);
  int64_t kept = 0;
  for (int64_t i = 0; i < work.count; ++i) {
    if (Valid(work, i)) ++starts[static_cast<size_t>(keys[i]) + 1], ++kept;
  }
  for (int64_t k = 0; k < buckets; ++k) starts[k + 1] += starts[k];
  order.resize(static_cast<size_t>(std::max<int64_t>(kept, 1)));
  std::vector<int64_t> next(starts.begin(), starts.end() - 1);
  for (int64_t i = 0; i < work.count; ++i) {
    if (Valid(work, i)) order[static_cast<size_t>(next[keys[i]]++)] = values[i];
  }
}

std::atomic<int> calls_running{0};  // add_rows calls in progress in this process

struct Running {
  Running() : at_once(calls_running.fetch_add(1) + 1), alone(at_once == 1) {}
  ~Running() { calls_running.fetch_sub(1); }
  const int at_once;  // this call and those already running (other CPU devices)
  const bool alone;
};

}  // namespace

static ffi::Error AddRows(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> source, ffi::Buffer<ffi::S32> from_ids,
                          ffi::Buffer<ffi::S32> to_ids, ffi::Buffer<ffi::S32> row_ids, int64_t batch_size,
                          ffi::ResultBuffer<ffi::F32> out) {
  const auto source_dims = source.dimensions();
  const auto out_dims = out->dimensions();
  if (source_dims.size() != 2 || out_dims.size() != 2 || source_dims[1] != out_dims[1]) {
    return ffi::Error::InvalidArgument("imdb_jax_add_rows: source and out must be [rows, width] alike");
  }
  const int64_t count = static_cast<int64_t>(from_ids.element_count());
  if (static_cast<int64_t>(to_ids.element_count()) != count ||
      static_cast<int64_t>(row_ids.element_count()) != count) {
    return ffi::Error::InvalidArgument("imdb_jax_add_rows: the three id arrays must have one length");
  }
  Work work{source.typed_data(), out->typed_data(), from_ids.typed_data(), to_ids.typed_data(),
            row_ids.typed_data(), count, source_dims[1], source_dims[0], out_dims[0], batch_size, 1};
  // Forward: source rows (kernel rows) too many for the caches, read word by word, once each.
  // Backward: occurrences whose targets come out of order (words, in review order) into an output
  // too big for the caches, bucketed by target, so each output row is written once while it is in
  // L1, not read and written back from memory at each of its occurrences. Each sum keeps its order.
  const Running running;
  std::vector<int64_t> starts;
  std::vector<int32_t> order;
  const int64_t float_bytes = static_cast<int64_t>(sizeof(float));
  if (work.source_rows * work.width * float_bytes * running.at_once >= kMinSourceBytesByOrigin &&
      work.out_rows * work.width * float_bytes <= kMaxOutBytesByOrigin && TargetsAndOriginsInOrder(work)) {
    Bucket(work, false, starts, order);
    work.by_origin = order.data();
    work.origin_starts = starts.data();
  } else if (work.out_rows * work.width * float_bytes >= kMinBytesToSort && !TargetsInOrder(work)) {
    Bucket(work, true, starts, order);
    work.order = order.data();
    work.starts = starts.data();
  }
  const int64_t threads = std::min<int64_t>({pool.num_threads(), kMaxParts, std::max<int64_t>(work.out_rows, 1)});
  if (!running.alone || threads < 2 || count * work.width < kMinFloatsToSplit || work.width < kMinWidthToSplit) {
    work.Run(0);
    return ffi::Error::Success();
  }
  work.parts = 1;
  while (work.parts * 2 <= threads) work.parts *= 2;
  auto shares = std::make_shared<Shares>(work);
  for (int64_t part = 1; part < work.parts; ++part) {
    pool.Schedule([shares, part] { shares->RunIfUnclaimed(part, true); });
  }
  for (int64_t part = 0; part < work.parts; ++part) shares->RunIfUnclaimed(part, false);
  std::unique_lock<std::mutex> lock(shares->mutex);
  shares->finished.wait(lock, [&] { return shares->running == 0; });
  return ffi::Error::Success();
}

static ffi::Error BatchPairs(ffi::Buffer<ffi::S32> indptr, ffi::Buffer<ffi::S32> indices, ffi::Buffer<ffi::S32> lengths,
                             ffi::Buffer<ffi::S32> rows, ffi::Buffer<ffi::S32> real_rows, int64_t with_positions,
                             ffi::ResultBuffer<ffi::S32> words, ffi::ResultBuffer<ffi::S32> row_ids,
                             ffi::ResultBuffer<ffi::S32> positions) {
  const int64_t capacity = static_cast<int64_t>(words->element_count());
  const int64_t batch = static_cast<int64_t>(rows.element_count());
  const int64_t nonzeros = static_cast<int64_t>(indices.element_count());
  const int64_t pointers = static_cast<int64_t>(indptr.element_count());
  const int64_t counted = static_cast<int64_t>(lengths.element_count());
  if (static_cast<int64_t>(row_ids->element_count()) != capacity ||
      static_cast<int64_t>(positions->element_count()) != capacity || real_rows.element_count() != 1 ||
      pointers < 1 || counted < 1) {
    return ffi::Error::InvalidArgument("imdb_jax_batch_pairs: mismatched shapes");
  }
  const int32_t* pointer = indptr.typed_data();
  const int32_t* index = indices.typed_data();
  const int32_t* length = lengths.typed_data();
  const int32_t* row = rows.typed_data();
  const int64_t real = real_rows.typed_data()[0];
  int32_t* word_out = words->typed_data();
  int32_t* row_out = row_ids->typed_data();
  int32_t* position_out = positions->typed_data();
  int64_t slot = 0;
  for (int64_t b = 0; b < batch && slot < capacity; ++b) {
    // As XLA's gathers: an index out of range is clamped into it.
    const int64_t r = std::clamp<int64_t>(row[b], 0, counted - 1);
    const int64_t first = pointer[std::clamp<int64_t>(row[b] < real ? row[b] : 0, 0, pointers - 1)];
    const int64_t count = std::max<int64_t>(std::min<int64_t>(length[r], capacity - slot), 0);
    std::fill(row_out + slot, row_out + slot + count, static_cast<int32_t>(b));
    if (first >= 0 && first + count <= nonzeros) {  // always, for a well-formed CSR: a copy
      std::memcpy(word_out + slot, index + first, sizeof(int32_t) * static_cast<size_t>(count));
      if (with_positions) {
        for (int64_t k = 0; k < count; ++k) position_out[slot + k] = static_cast<int32_t>(first + k);
      }
    } else {
      for (int64_t k = 0; k < count; ++k) {
        const int64_t at = std::clamp<int64_t>(first + k, 0, std::max<int64_t>(nonzeros - 1, 0));
        word_out[slot + k] = nonzeros ? index[at] : 0;
        position_out[slot + k] = static_cast<int32_t>(at);
      }
    }
    slot += count;
  }
  std::fill(word_out + slot, word_out + capacity, 0);
  std::fill(row_out + slot, row_out + capacity, static_cast<int32_t>(batch));
  if (with_positions) std::fill(position_out + slot, position_out + capacity, 0);
  return ffi::Error::Success();
}

static ffi::Error SortValues(ffi::Buffer<ffi::U32> keys, ffi::Buffer<ffi::S32> values,
                             ffi::ResultBuffer<ffi::S32> out) {
  const size_t n = keys.element_count();
  if (values.element_count() != n || out->element_count() != n) {
    return ffi::Error::InvalidArgument("imdb_jax_sort_values: keys, values and out must have one length");
  }
  constexpr int kBits = 11, kPasses = 3;
  constexpr size_t kBuckets = size_t{1} << kBits;
  std::vector<uint32_t> key_a(keys.typed_data(), keys.typed_data() + n), key_b(n);
  std::vector<int32_t> value_a(values.typed_data(), values.typed_data() + n), value_b(n);
  std::vector<size_t> counts(kBuckets);
  for (int pass = 0; pass < kPasses; ++pass) {
    const int shift = pass * kBits;
    std::fill(counts.begin(), counts.end(), 0);
    for (size_t i = 0; i < n; ++i) ++counts[(key_a[i] >> shift) & (kBuckets - 1)];
    size_t total = 0;
    for (size_t& count : counts) {
      const size_t here = count;
      count = total;
      total += here;
    }
    for (size_t i = 0; i < n; ++i) {  // in order: equal digits keep their order (stable)
      const size_t to = counts[(key_a[i] >> shift) & (kBuckets - 1)]++;
      key_b[to] = key_a[i];
      value_b[to] = value_a[i];
    }
    key_a.swap(key_b);
    value_a.swap(value_b);
  }
  std::copy(value_a.begin(), value_a.end(), out->typed_data());
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(ImdbJaxSortValues, SortValues,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::U32>>()  // keys
                                  .Arg<ffi::Buffer<ffi::S32>>()  // values
                                  .Ret<ffi::Buffer<ffi::S32>>());  // out

XLA_FFI_DEFINE_HANDLER_SYMBOL(ImdbJaxBatchPairs, BatchPairs,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S32>>()  // indptr
                                  .Arg<ffi::Buffer<ffi::S32>>()  // indices
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths
                                  .Arg<ffi::Buffer<ffi::S32>>()  // rows
                                  .Arg<ffi::Buffer<ffi::S32>>()  // real_rows
                                  .Attr<int64_t>("with_positions")
                                  .Ret<ffi::Buffer<ffi::S32>>()  // words
                                  .Ret<ffi::Buffer<ffi::S32>>()  // row_ids
                                  .Ret<ffi::Buffer<ffi::S32>>());  // positions

XLA_FFI_DEFINE_HANDLER_SYMBOL(ImdbJaxAddRows, AddRows,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // source
                                  .Arg<ffi::Buffer<ffi::S32>>()  // from_ids
                                  .Arg<ffi::Buffer<ffi::S32>>()  // to_ids
                                  .Arg<ffi::Buffer<ffi::S32>>()  // row_ids
                                  .Attr<int64_t>("batch_size")
                                  .Ret<ffi::Buffer<ffi::F32>>());  // out
