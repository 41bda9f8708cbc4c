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
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// One row added into another. The columns are independent, so vector lanes change no bits; the
// widest instruction set the CPU has is picked when the library loads.
__attribute__((target_clones("avx512f", "avx2", "default"))) static void AddRow(
    float* __restrict__ to, const float* __restrict__ from, int64_t width) {
  for (int64_t j = 0; j < width; ++j) to[j] += from[j];
}

static ffi::Error AddRows(ffi::Buffer<ffi::F32> source, ffi::Buffer<ffi::S32> from_ids,
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
  const int64_t width = source_dims[1];
  const int64_t source_rows = source_dims[0];
  const int64_t out_rows = out_dims[0];
  const float* from = source.typed_data();
  float* to = out->typed_data();
  const int32_t* origins = from_ids.typed_data();
  const int32_t* targets = to_ids.typed_data();
  const int32_t* rows = row_ids.typed_data();
  std::memset(to, 0, sizeof(float) * static_cast<size_t>(out_rows) * static_cast<size_t>(width));
  for (int64_t i = 0; i < count; ++i) {
    const int64_t row = rows[i], origin = origins[i], target = targets[i];
    if (row < 0 || row >= batch_size || origin < 0 || origin >= source_rows || target < 0 || target >= out_rows) {
      continue;
    }
    AddRow(to + target * width, from + origin * width, width);
  }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(ImdbJaxAddRows, AddRows,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // source
                                  .Arg<ffi::Buffer<ffi::S32>>()  // from_ids
                                  .Arg<ffi::Buffer<ffi::S32>>()  // to_ids
                                  .Arg<ffi::Buffer<ffi::S32>>()  // row_ids
                                  .Attr<int64_t>("batch_size")
                                  .Ret<ffi::Buffer<ffi::F32>>());  // out
