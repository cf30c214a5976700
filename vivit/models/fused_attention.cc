// Fused softmax attention for x86-64 CPUs with AVX-512, registered with XLA through
// the typed FFI (`vivit/models/fused_attention.py` loads it).
//
// Flash-attention tiling: a block of queries meets a block of keys at a time, so the
// logits, probabilities and their gradients live in a few tiles that stay in L1/L2
// cache; the [heads, N, N] matrix never exists. The forward returns the base-2
// log-sum-exp of each query's logits, from which the backward recomputes each tile's
// probabilities.
//
// Layouts: query, key, value, out and their gradients are `[batch, length, heads,
// head_dim]` float32 (rows of one head are `heads * head_dim` floats apart, so no
// transposes around the call); log-sum-exp is `[batch, heads, length]`. `head_dim` must
// be a multiple of 16 and at most 128 (checked by the caller).
//
// `scale` is the forward's logit scale in base 2 (log2(e) / sqrt(head_dim)) and
// `grad_scale` the backward's d(natural logit) / d(q.k).
//
// NaN and infinities come out where `jax.nn.softmax` attention gives them: a NaN or
// +inf logit makes its query's row NaN, a -inf logit has probability 0, a row of only
// -inf logits is NaN.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include <immintrin.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

#ifndef VIVIT_JAXLIB_VERSION
#define VIVIT_JAXLIB_VERSION "unknown"
#endif
#ifndef VIVIT_SOURCE_HASH
#define VIVIT_SOURCE_HASH "unknown"
#endif

// The jaxlib whose FFI headers this was built against.
extern "C" const char* vivit_fused_attention_jaxlib() { return VIVIT_JAXLIB_VERSION; }

// The sha256 of the fused_attention.cc this was built from (setup.py defines it), so
// that a library left from an older source is not used.
extern "C" const char* vivit_fused_attention_source() { return VIVIT_SOURCE_HASH; }

extern "C" int vivit_fused_attention_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("fma");
}

#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,fma"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,fma")
#endif

namespace {

constexpr int kQueryBlock = 64;
constexpr int kKeyBlock = 128;
constexpr int kRows = 8;  // register tile of the logits kernel: kRows x 32

// 2^x for x <= 0, 0 below -126 (no denormals; 2^-inf = 0), NaN for NaN:
// 2^round(x) * p(x - round(x)), p the degree-6 Taylor polynomial of 2^f on [-0.5, 0.5]
// (relative error < 2e-7).
inline __m512 Exp2(__m512 x) {
  // True for NaN, which the arithmetic below carries through.
  const __mmask16 kept = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.0f), _CMP_NLT_UQ);
  const __m512 whole = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, whole);
  __m512 p = _mm512_set1_ps(1.5403530e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022651e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(kept, p, whole);
}

inline __mmask16 Tail(int n) {
  return n >= 16 ? 0xFFFF : (n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1));
}

// out[r][0:32] = sum_d a[r * lda + d] * bt[d * ldb + 0:32] for r < R: one register tile
// of `a @ b` with b given transposed ([depth, columns], 32 columns readable).
template <int R>
inline void LogitsTile(const float* a, int64_t lda, const float* bt, int64_t ldb, int depth,
                       float* out, int64_t ldo) {
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int d = 0; d < depth; ++d) {
    const __m512 b0 = _mm512_loadu_ps(bt + d * ldb);
    const __m512 b1 = _mm512_loadu_ps(bt + d * ldb + 16);
    for (int r = 0; r < R; ++r) {
      const __m512 x = _mm512_set1_ps(a[r * lda + d]);
      acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_ps(out + r * ldo, acc[r][0]);
    _mm512_storeu_ps(out + r * ldo + 16, acc[r][1]);
  }
}

// out[rows, cols32] = a[rows, depth] @ bt[depth, cols32] (cols32 a multiple of 32).
void Logits(const float* a, int64_t lda, const float* bt, int64_t ldb, int depth, int rows,
            int cols32, float* out, int64_t ldo) {
  for (int c = 0; c < cols32; c += 32) {
    int r = 0;
    for (; r + kRows <= rows; r += kRows)
      LogitsTile<kRows>(a + r * lda, lda, bt + c, ldb, depth, out + r * ldo + c, ldo);
    switch (rows - r) {
#define VIVIT_CASE(n) \
  case n: LogitsTile<n>(a + r * lda, lda, bt + c, ldb, depth, out + r * ldo + c, ldo); break;
      VIVIT_CASE(1) VIVIT_CASE(2) VIVIT_CASE(3) VIVIT_CASE(4) VIVIT_CASE(5) VIVIT_CASE(6)
      VIVIT_CASE(7)
#undef VIVIT_CASE
      default: break;
    }
  }
}

// acc[r][0:16*V] += sum_t a[r * a_row + t * a_inner] * b[t * ldb + 0:16*V], r < R:
// one register tile of `a @ b` where a is read through strides (so a transposed a
// costs nothing) and b's rows are V vectors long.
template <int R, int V>
inline void AccumulateTile(const float* a, int64_t a_row, int64_t a_inner, const float* b,
                           int64_t ldb, int inner, float* acc, int64_t ldacc) {
  __m512 sum[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) sum[r][v] = _mm512_loadu_ps(acc + r * ldacc + 16 * v);
  for (int t = 0; t < inner; ++t) {
    __m512 row[V];
    for (int v = 0; v < V; ++v) row[v] = _mm512_loadu_ps(b + t * ldb + 16 * v);
    for (int r = 0; r < R; ++r) {
      const __m512 x = _mm512_set1_ps(a[r * a_row + t * a_inner]);
      for (int v = 0; v < V; ++v) sum[r][v] = _mm512_fmadd_ps(x, row[v], sum[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(acc + r * ldacc + 16 * v, sum[r][v]);
}

// Rows per register tile: R * V accumulators + V row vectors + 1 broadcast <= 32.
template <int V>
constexpr int AccumulateRows() { return V <= 4 ? 6 : (V <= 6 ? 4 : (V == 7 ? 3 : 2)); }

template <int V>
void AccumulateV(const float* a, int64_t a_row, int64_t a_inner, const float* b, int64_t ldb,
                 int rows, int inner, float* acc, int64_t ldacc) {
  constexpr int kR = AccumulateRows<V>();
  int r = 0;
  for (; r + kR <= rows; r += kR)
    AccumulateTile<kR, V>(a + r * a_row, a_row, a_inner, b, ldb, inner, acc + r * ldacc, ldacc);
  for (; r < rows; ++r)
    AccumulateTile<1, V>(a + r * a_row, a_row, a_inner, b, ldb, inner, acc + r * ldacc, ldacc);
}

// acc[rows, depth] += a[rows, inner] @ b[inner, depth], a element (r, t) at
// a[r * a_row + t * a_inner]; depth = 16 * vectors.
void Accumulate(const float* a, int64_t a_row, int64_t a_inner, const float* b, int64_t ldb,
                int rows, int inner, int vectors, float* acc, int64_t ldacc) {
  switch (vectors) {
#define VIVIT_CASE(n) \
  case n: AccumulateV<n>(a, a_row, a_inner, b, ldb, rows, inner, acc, ldacc); break;
    VIVIT_CASE(1) VIVIT_CASE(2) VIVIT_CASE(3) VIVIT_CASE(4) VIVIT_CASE(5) VIVIT_CASE(6)
    VIVIT_CASE(7) VIVIT_CASE(8)
#undef VIVIT_CASE
    default: break;
  }
}

// One head's rows: element (i, d) of a `[batch, length, heads, head_dim]` array.
struct HeadView {
  const float* data;
  int64_t stride;  // heads * head_dim
  const float* row(int64_t i) const { return data + i * stride; }
};

struct Shape {
  int64_t batch, length, heads, depth;
  int64_t stride() const { return heads * depth; }
  int64_t padded() const { return (length + 31) / 32 * 32; }
  HeadView head(const float* x, int64_t b, int64_t h) const {
    return {x + b * length * stride() + h * depth, stride()};
  }
};

// [length, depth] rows of one head -> [depth, padded] (zero columns past length).
void Transpose(const Shape& s, HeadView x, float* out) {
  const int64_t padded = s.padded();
  for (int64_t d = 0; d < s.depth; ++d)
    std::fill(out + d * padded + s.length, out + (d + 1) * padded, 0.0f);
  for (int64_t i = 0; i < s.length; ++i) {
    const float* row = x.row(i);
    for (int64_t d = 0; d < s.depth; ++d) out[d * padded + i] = row[d];
  }
}

// Runs task(0..count-1) on the caller and the pool's threads; returns when all are
// done. Workers that start late find nothing left (state is shared, not on the stack).
void ParallelFor(ffi::ThreadPool& pool, int64_t count, std::function<void(int64_t)> task) {
  struct State {
    std::function<void(int64_t)> task;
    int64_t count;
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mutex;
    std::condition_variable finished;
    void Work() {
      for (int64_t i; (i = next.fetch_add(1)) < count;) {
        task(i);
        if (done.fetch_add(1) + 1 == count) {
          std::lock_guard<std::mutex> lock(mutex);
          finished.notify_all();
        }
      }
    }
  };
  auto state = std::make_shared<State>();
  state->task = std::move(task);
  state->count = count;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), count - 1);
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([state] { state->Work(); });
  state->Work();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->finished.wait(lock, [&] { return state->done.load() == count; });
}

// Query, key and value of one self-attention: the same [batch, length, heads,
// head_dim], head_dim a multiple of 16 from 16 to 128.
ffi::Error CheckShapes(const ffi::Buffer<ffi::F32>& q, const ffi::Buffer<ffi::F32>& k,
                       const ffi::Buffer<ffi::F32>& v, Shape* shape) {
  auto dims = q.dimensions();
  if (dims.size() != 4)
    return ffi::Error::InvalidArgument("expected [batch, length, heads, head_dim]");
  for (const auto* other : {&k, &v}) {
    auto other_dims = other->dimensions();
    if (other_dims.size() != 4 || !std::equal(dims.begin(), dims.end(), other_dims.begin()))
      return ffi::Error::InvalidArgument("query, key and value must have the same shape");
  }
  *shape = {dims[0], dims[1], dims[2], dims[3]};
  if (shape->depth % 16 || shape->depth < 16 || shape->depth > 128)
    return ffi::Error::InvalidArgument("head_dim must be a multiple of 16 from 16 to 128");
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> query, ffi::Buffer<ffi::F32> key,
                   ffi::Buffer<ffi::F32> value, float scale, ffi::ResultBuffer<ffi::F32> out,
                   ffi::ResultBuffer<ffi::F32> log2_sum_exp) {
  Shape s;
  if (auto error = CheckShapes(query, key, value, &s); error.failure()) return error;
  // Nothing to do (and no tasks to divide among); XLA skips empty calls today anyway.
  if (s.batch == 0 || s.heads == 0 || s.length == 0) return ffi::Error::Success();
  const int64_t query_blocks = (s.length + kQueryBlock - 1) / kQueryBlock;
  // Tasks: (batch, head, run of query blocks), enough of them to balance the threads.
  const int64_t heads = s.batch * s.heads;
  const int64_t wanted = std::max<int64_t>(1, 4 * (pool.num_threads() + 1));
  const int64_t runs = std::min(query_blocks, (wanted + heads - 1) / heads);
  const int64_t per_run = (query_blocks + runs - 1) / runs;
  const int vectors = static_cast<int>(s.depth / 16);
  const float* q = query.typed_data();
  const float* k = key.typed_data();
  const float* v = value.typed_data();
  float* o = out->typed_data();
  float* lse = log2_sum_exp->typed_data();

  ParallelFor(pool, heads * runs, [&](int64_t task) {
    const int64_t b = task / runs / s.heads, h = task / runs % s.heads, run = task % runs;
    const int64_t padded = s.padded(), depth = s.depth;
    std::vector<float> key_t(depth * padded), scaled(kQueryBlock * depth),
        logits(kQueryBlock * kKeyBlock), total(kQueryBlock * depth);
    float running_max[kQueryBlock], normaliser[kQueryBlock];
    Transpose(s, s.head(k, b, h), key_t.data());
    const HeadView qh = s.head(q, b, h), vh = s.head(v, b, h);
    const int64_t first = run * per_run, last = std::min(query_blocks, first + per_run);
    for (int64_t qb = first; qb < last; ++qb) {
      const int64_t q0 = qb * kQueryBlock;
      const int rows = static_cast<int>(std::min<int64_t>(kQueryBlock, s.length - q0));
      for (int r = 0; r < rows; ++r)
        for (int64_t d = 0; d < depth; ++d) scaled[r * depth + d] = qh.row(q0 + r)[d] * scale;
      std::fill(total.begin(), total.end(), 0.0f);
      std::fill(running_max, running_max + kQueryBlock, -INFINITY);
      std::fill(normaliser, normaliser + kQueryBlock, 0.0f);
      for (int64_t k0 = 0; k0 < s.length; k0 += kKeyBlock) {
        const int cols = static_cast<int>(std::min<int64_t>(kKeyBlock, s.length - k0));
        const int cols32 = (cols + 31) / 32 * 32;
        Logits(scaled.data(), depth, key_t.data() + k0, padded, depth, rows, cols32,
               logits.data(), kKeyBlock);
        for (int r = 0; r < rows; ++r) {
          float* row = logits.data() + r * kKeyBlock;
          // A NaN logit may be missed here; through Exp2 it makes the row's sum NaN.
          __m512 m = _mm512_set1_ps(-INFINITY);
          for (int c = 0; c < cols; c += 16)
            m = _mm512_max_ps(m, _mm512_mask_loadu_ps(m, Tail(cols - c), row + c));
          const float new_max = std::max(running_max[r], _mm512_reduce_max_ps(m));
          // Only -inf so far: shifting by 0 keeps their probabilities 0, not -inf - -inf.
          const __m512 shift = _mm512_set1_ps(new_max == -INFINITY ? 0.0f : new_max);
          __m512 sum = _mm512_setzero_ps();
          for (int c = 0; c < cols; c += 16) {
            const __mmask16 mask = Tail(cols - c);
            const __m512 p = _mm512_maskz_mov_ps(
                mask, Exp2(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, row + c), shift)));
            _mm512_mask_storeu_ps(row + c, mask, p);
            sum = _mm512_add_ps(sum, p);
          }
          const float rescale =
              running_max[r] == new_max ? 1.0f : std::exp2(running_max[r] - new_max);
          normaliser[r] = normaliser[r] * rescale + _mm512_reduce_add_ps(sum);
          running_max[r] = new_max;
          if (rescale != 1.0f) {
            const __m512 factor = _mm512_set1_ps(rescale);
            float* acc = total.data() + r * depth;
            for (int d = 0; d < depth; d += 16)
              _mm512_storeu_ps(acc + d, _mm512_mul_ps(factor, _mm512_loadu_ps(acc + d)));
          }
        }
        Accumulate(logits.data(), kKeyBlock, 1, vh.row(k0), vh.stride, rows, cols, vectors,
                   total.data(), depth);
      }
      for (int r = 0; r < rows; ++r) {
        const __m512 inverse = _mm512_set1_ps(1.0f / normaliser[r]);
        float* dst = o + (b * s.length + q0 + r) * s.stride() + h * depth;
        for (int d = 0; d < depth; d += 16)
          _mm512_storeu_ps(dst + d, _mm512_mul_ps(inverse, _mm512_loadu_ps(&total[r * depth + d])));
        lse[(b * s.heads + h) * s.length + q0 + r] = running_max[r] + std::log2(normaliser[r]);
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> query,
                    ffi::Buffer<ffi::F32> key, ffi::Buffer<ffi::F32> value,
                    ffi::Buffer<ffi::F32> out, ffi::Buffer<ffi::F32> log2_sum_exp,
                    ffi::Buffer<ffi::F32> grad_out, float scale, float grad_scale,
                    ffi::ResultBuffer<ffi::F32> grad_query, ffi::ResultBuffer<ffi::F32> grad_key,
                    ffi::ResultBuffer<ffi::F32> grad_value) {
  Shape s;
  if (auto error = CheckShapes(query, key, value, &s); error.failure()) return error;
  if (s.batch == 0 || s.heads == 0 || s.length == 0) return ffi::Error::Success();
  const int vectors = static_cast<int>(s.depth / 16);
  const float* q = query.typed_data();
  const float* k = key.typed_data();
  const float* v = value.typed_data();
  const float* o = out.typed_data();
  const float* lse_all = log2_sum_exp.typed_data();
  const float* dout = grad_out.typed_data();
  float* dq = grad_query->typed_data();
  float* dk = grad_key->typed_data();
  float* dv = grad_value->typed_data();

  // One task per (batch, head): it owns that head's rows of every gradient.
  ParallelFor(pool, s.batch * s.heads, [&](int64_t task) {
    const int64_t b = task / s.heads, h = task % s.heads;
    const int64_t padded = s.padded(), depth = s.depth, length = s.length;
    std::vector<float> key_t(depth * padded), value_t(depth * padded), scaled(length * depth),
        out_dot(length), grad_query_acc(length * depth, 0.0f),
        probabilities(kQueryBlock * kKeyBlock), grad_logits(kQueryBlock * kKeyBlock),
        grad_key_acc(kKeyBlock * depth), grad_value_acc(kKeyBlock * depth);
    const HeadView qh = s.head(q, b, h), kh = s.head(k, b, h), vh = s.head(v, b, h),
                   oh = s.head(o, b, h), doh = s.head(dout, b, h);
    const float* lse = lse_all + (b * s.heads + h) * length;
    Transpose(s, kh, key_t.data());
    Transpose(s, vh, value_t.data());
    for (int64_t i = 0; i < length; ++i) {
      __m512 dot = _mm512_setzero_ps();
      for (int64_t d = 0; d < depth; d += 16) {
        _mm512_storeu_ps(&scaled[i * depth + d],
                         _mm512_mul_ps(_mm512_set1_ps(scale), _mm512_loadu_ps(qh.row(i) + d)));
        dot = _mm512_fmadd_ps(_mm512_loadu_ps(doh.row(i) + d), _mm512_loadu_ps(oh.row(i) + d), dot);
      }
      out_dot[i] = _mm512_reduce_add_ps(dot);
    }
    for (int64_t k0 = 0; k0 < length; k0 += kKeyBlock) {
      const int cols = static_cast<int>(std::min<int64_t>(kKeyBlock, length - k0));
      const int cols32 = (cols + 31) / 32 * 32;
      std::fill(grad_key_acc.begin(), grad_key_acc.end(), 0.0f);
      std::fill(grad_value_acc.begin(), grad_value_acc.end(), 0.0f);
      for (int64_t q0 = 0; q0 < length; q0 += kQueryBlock) {
        const int rows = static_cast<int>(std::min<int64_t>(kQueryBlock, length - q0));
        Logits(&scaled[q0 * depth], depth, key_t.data() + k0, padded, depth, rows, cols32,
               probabilities.data(), kKeyBlock);
        Logits(doh.row(q0), doh.stride, value_t.data() + k0, padded, depth, rows, cols32,
               grad_logits.data(), kKeyBlock);
        for (int r = 0; r < rows; ++r) {
          float* p_row = probabilities.data() + r * kKeyBlock;
          float* g_row = grad_logits.data() + r * kKeyBlock;
          const __m512 shift = _mm512_set1_ps(lse[q0 + r]);
          const __m512 delta = _mm512_set1_ps(out_dot[q0 + r]);
          for (int c = 0; c < cols32; c += 16) {
            const __mmask16 mask = Tail(cols - c);
            const __m512 p = _mm512_maskz_mov_ps(mask, Exp2(_mm512_sub_ps(_mm512_loadu_ps(p_row + c), shift)));
            _mm512_storeu_ps(p_row + c, p);
            _mm512_storeu_ps(g_row + c, _mm512_mul_ps(p, _mm512_sub_ps(_mm512_loadu_ps(g_row + c), delta)));
          }
        }
        // grad_value[keys] += p^T @ grad_out; grad_key[keys] += grad_logits^T @ query.
        Accumulate(probabilities.data(), 1, kKeyBlock, doh.row(q0), doh.stride, cols, rows,
                   vectors, grad_value_acc.data(), depth);
        Accumulate(grad_logits.data(), 1, kKeyBlock, qh.row(q0), qh.stride, cols, rows,
                   vectors, grad_key_acc.data(), depth);
        // grad_query[queries] += grad_logits @ key.
        Accumulate(grad_logits.data(), kKeyBlock, 1, kh.row(k0), kh.stride, rows, cols,
                   vectors, &grad_query_acc[q0 * depth], depth);
      }
      for (int c = 0; c < cols; ++c) {
        float* dk_row = dk + (b * length + k0 + c) * s.stride() + h * depth;
        float* dv_row = dv + (b * length + k0 + c) * s.stride() + h * depth;
        for (int64_t d = 0; d < depth; ++d) {
          dk_row[d] = grad_key_acc[c * depth + d] * grad_scale;
          dv_row[d] = grad_value_acc[c * depth + d];
        }
      }
    }
    for (int64_t i = 0; i < length; ++i) {
      float* dq_row = dq + (b * length + i) * s.stride() + h * depth;
      for (int64_t d = 0; d < depth; ++d) dq_row[d] = grad_query_acc[i * depth + d] * grad_scale;
    }
  });
  return ffi::Error::Success();
}

}  // namespace

#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

XLA_FFI_DEFINE_HANDLER_SYMBOL(VivitFusedAttentionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(VivitFusedAttentionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Attr<float>("grad_scale")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
