// Fused MaxSup cross-entropy for the CPU: the kernels of the registered op
// maxsup_mm::maxsup_ce (see maxsup_mm/ops/maxsup_op.py for the op, its
// autograd formula and its fake implementation; the naive oracle is
// maxsup_mm/ops/reference.py).  This file only computes: no autograd, no op
// schema of the public namespace.  It registers two plain CPU functions,
//   maxsup_mm_cpu::fwd(logits, target, alpha, ignore_index, reduction, isa)
//       -> (loss, gap, aux)
//   maxsup_mm_cpu::bwd(grad, logits, target, aux, alpha, ignore_index,
//                      reduction, isa) -> dlogits
// which the op's CPU implementation calls.
//
// Layout: logits are a contiguous (N, K, S) tensor (S = 1 for classification,
// S = H*W for segmentation, the class dim is dim 1 and is NOT permuted).
//  * S == 1: one row of K contiguous logits per sample, vectorised along K.
//  * S  > 1: blocks of 16 neighbouring pixels, vectorised along S (the
//            contiguous axis), looping over the K classes at stride S.
// Channels-last logits (class dim innermost in memory) are read as rows.
//
// Per position the forward pass computes, in fp32 whatever the input type:
//   m = max_k z_k and its first arg-max (torch.max's tie rule: lowest index),
//   ls = log sum_k exp(z_k - m), d = sum_k (z_k - m), and for soft targets
//   sum_k y_k (z_k - m) and sum_y = sum_k y_k; then
//   gap  = z_max - mean_k z_k = -d / K                    (eq. 8, >= 0)
//   loss = sum_y * ls - sum_k y_k (z_k - m) + alpha * gap
//        (hard: ls - (z_gt - m) + alpha * gap; 0 where target == ignore_index).
// Every sum is over differences to the row max, so no term grows with |z|:
// the error of loss and gradient stays at fp32 rounding of the spread of the
// row, not of its offset.  Saved per position ("aux", fp32 rows of N*S): m,
// ls, the arg-max (as a float: exact below 2^24 classes) and, soft, sum_y.
// The backward pass writes
//   dz_k = g * (sum_y * exp((z_k - m) - ls) - y_k + alpha*([k == argmax] - 1/K))
// into the one (N, K, S) gradient buffer (0 at ignored positions).
//
// reduction: 0 = none (loss and gap per position), 1 = mean, 2 = sum over
// all N*S positions (ignored ones count, with loss 0: the mean of the
// unreduced loss).  The reduced loss is summed in double from the fp32 row
// losses and rounded once.
//
// SIMD: GCC/Clang vector extensions; the kernels (maxsup_kernels.inc) are
// compiled for 4 lanes for any CPU (SSE2 on x86-64, NEON on arm64) and, on
// x86-64, 8 lanes with AVX2 + FMA and 16 lanes with AVX-512, chosen at run
// time (the widest the CPU and OS support, as ATen's own kernels do).  No OpenMP pragmas
// of our own: threads come from at::parallel_for (torch's intra-op pool).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

namespace maxsup_mm_cpu {
namespace {

#define MS_INLINE inline __attribute__((always_inline))

constexpr int64_t kBlock = 16;  // pixels per task in the (N, K, S > 1) layout
constexpr int64_t kMaxClasses = int64_t(1) << 24;  // arg-max stored as float

struct Args {
  const void* logits;   // (N, K, S) contiguous, type T
  const int64_t* hard;  // (N, S) class indices, or nullptr
  const float* soft;    // (N, K, S) fp32 soft target, or nullptr
  int64_t N, K, S;
  float alpha;
  int64_t ignore_index;
  // forward outputs, per position
  void* loss;           // type T (reduction none), or nullptr
  float* loss_f;        // fp32 (mean / sum: reduced afterwards), or nullptr
  float* gap;           // fp32, z_max - mean z
  float* m;             // aux rows: max, log-sum-exp minus max, arg-max, sum_y
  float* ls;
  float* am;
  float* sum_y;         // soft only
  std::atomic<int64_t>* bad_target;
  // backward inputs / output
  const float* grad;    // upstream gradient, (N, S) with strides below
  int64_t grad_sn, grad_ss;
  float grad_scale;     // 1 / (N*S) for mean, else 1
  const float* m_in;
  const float* ls_in;
  const float* am_in;
  const float* sum_y_in;
  void* dlogits;        // (N, K, S) type T
};

MS_INLINE void flag_bad(const Args& a, int64_t t) {
  int64_t expected = std::numeric_limits<int64_t>::min();
  a.bad_target->compare_exchange_strong(expected, t);
}

// Whether hard target t is skipped (ignored, or out of range: flagged).
MS_INLINE bool skip_target(const Args& a, int64_t t) {
  if (t == a.ignore_index) return true;
  if (t < 0 || t >= a.K) {
    flag_bad(a, t);
    return true;
  }
  return false;
}

// Each ISA's copy of the kernels is compiled for that ISA as a whole (GCC:
// `#pragma GCC target`, Clang: `#pragma clang attribute`), so that the
// compiler lowers the vector code natively; only functions of these
// namespaces are affected, and they run only where cpu_best_isa() allows.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MS_HAVE_X86 1
#if defined(__clang__)
#define MS_TARGET_BEGIN_AVX512 \
  _Pragma("clang attribute push(__attribute__((target(\"avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c\"))), apply_to = function)")
#define MS_TARGET_BEGIN_AVX2 \
  _Pragma("clang attribute push(__attribute__((target(\"avx2,fma,f16c\"))), apply_to = function)")
#define MS_TARGET_END _Pragma("clang attribute pop")
#else
#define MS_TARGET_BEGIN_AVX512 \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c\")")
#define MS_TARGET_BEGIN_AVX2 _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c\")")
#define MS_TARGET_END _Pragma("GCC pop_options")
#endif

MS_TARGET_BEGIN_AVX512
namespace v16 {
#define MS_L 16
#include "maxsup_kernels.inc"
#undef MS_L
template <typename T, bool SOFT>
__attribute__((noinline)) void fwd(const Args& a, int64_t b, int64_t e) {
  fwd_range<T, SOFT>(a, b, e);
}
template <typename T, bool SOFT>
__attribute__((noinline)) void bwd(const Args& a, int64_t b, int64_t e) {
  bwd_range<T, SOFT>(a, b, e);
}
}  // namespace v16
MS_TARGET_END

MS_TARGET_BEGIN_AVX2
namespace v8 {
#define MS_L 8
#include "maxsup_kernels.inc"
#undef MS_L
template <typename T, bool SOFT>
__attribute__((noinline)) void fwd(const Args& a, int64_t b, int64_t e) {
  fwd_range<T, SOFT>(a, b, e);
}
template <typename T, bool SOFT>
__attribute__((noinline)) void bwd(const Args& a, int64_t b, int64_t e) {
  bwd_range<T, SOFT>(a, b, e);
}
}  // namespace v8
MS_TARGET_END
#else
#define MS_HAVE_X86 0
#endif

namespace v4 {
#define MS_L 4
#include "maxsup_kernels.inc"
#undef MS_L
template <typename T, bool SOFT>
__attribute__((noinline)) void fwd(const Args& a, int64_t b, int64_t e) {
  fwd_range<T, SOFT>(a, b, e);
}
template <typename T, bool SOFT>
__attribute__((noinline)) void bwd(const Args& a, int64_t b, int64_t e) {
  bwd_range<T, SOFT>(a, b, e);
}
}  // namespace v4

// ---------------------------------------------------------------------------
// Entry points per (dtype, soft, ISA).
// ---------------------------------------------------------------------------
typedef void (*RangeFn)(const Args&, int64_t, int64_t);

#if MS_HAVE_X86
// the widest instruction set the CPU (and OS: libgcc checks the saved
// register state) supports: 1 = generic, 2 = AVX2, 3 = AVX-512
int64_t cpu_best_isa() {
  static const int64_t best = [] {
    __builtin_cpu_init();
    const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
    const bool v4 = v3 && __builtin_cpu_supports("avx512f") &&
                    __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                    __builtin_cpu_supports("avx512dq");
    return v4 ? int64_t(3) : v3 ? int64_t(2) : int64_t(1);
  }();
  return best;
}
#else
int64_t cpu_best_isa() { return 1; }
#endif

// isa: 0 = best available, 1 = generic, 2 = AVX2, 3 = AVX-512 (error if the
// CPU lacks it)
int64_t pick_isa(int64_t isa) {
  TORCH_CHECK_VALUE(isa >= 0 && isa <= 3, "maxsup_mm: isa must be 0, 1, 2 or 3, got ", isa);
  const int64_t best = cpu_best_isa();
  TORCH_CHECK_VALUE(isa <= best, "maxsup_mm: ", isa == 3 ? "AVX-512" : "AVX2/FMA",
                    " kernel requested on a CPU (or build) without it");
  return isa == 0 ? best : isa;
}

template <typename T, bool SOFT>
RangeFn select_fwd(int64_t isa) {
#if MS_HAVE_X86
  if (isa == 3) return &v16::fwd<T, SOFT>;
  if (isa == 2) return &v8::fwd<T, SOFT>;
#endif
  return &v4::fwd<T, SOFT>;
}
template <typename T, bool SOFT>
RangeFn select_bwd(int64_t isa) {
#if MS_HAVE_X86
  if (isa == 3) return &v16::bwd<T, SOFT>;
  if (isa == 2) return &v8::bwd<T, SOFT>;
#endif
  return &v4::bwd<T, SOFT>;
}

RangeFn pick(bool fwd, at::ScalarType dt, bool soft, int64_t isa) {
#define MS_CASE(T)                                                        \
  if (fwd) return soft ? select_fwd<T, true>(isa) : select_fwd<T, false>(isa); \
  return soft ? select_bwd<T, true>(isa) : select_bwd<T, false>(isa);
  switch (dt) {
    case at::kFloat: { MS_CASE(float) }
    case at::kBFloat16: { MS_CASE(c10::BFloat16) }
    case at::kHalf: { MS_CASE(c10::Half) }
    default:
      TORCH_CHECK_VALUE(false, "maxsup_mm: the fused CPU kernel supports float32, bfloat16 "
                        "and float16 logits, got ", dt);
  }
#undef MS_CASE
  return nullptr;
}

int64_t num_tasks(const Args& a) {
  return a.S == 1 ? a.N : a.N * ((a.S + kBlock - 1) / kBlock);
}

int64_t grain(const Args& a) {
  const int64_t per_task = a.S == 1 ? a.K : a.K * kBlock;
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, per_task));
}

// The kernels' (N, K, S) view of the user's logits, without copies for
// contiguous (N, K, *spatial) and channels-last tensors (class dim innermost
// in memory: read as N * S rows of K).  Only data pointers and sizes are
// derived here: no view ops, so the hot path makes few dispatcher calls.
struct Prepared {
  at::Tensor z;  // the logits, or their contiguous copy
  at::Tensor t;  // hard: int64, soft: float32, in z's memory order
  int64_t N = 0, K = 0, S = 1;
  bool soft = false;
  bool channels_last = false;  // rows of K: N here is N * prod(spatial)
};

// Whether `logits` (dim > 2) has its class dim innermost and the rest dense
// in (N, *spatial) order: then it is read as rows of K without a copy.
bool is_class_last(const at::Tensor& logits, std::vector<int64_t>* perm_out) {
  const int64_t dim = logits.dim();
  if (dim <= 2 || logits.is_contiguous()) return false;
  std::vector<int64_t> perm{0};
  for (int64_t d = 2; d < dim; ++d) perm.push_back(d);
  perm.push_back(1);
  if (!logits.permute(perm).is_contiguous()) return false;
  if (perm_out) *perm_out = perm;
  return true;
}

Prepared prepare(const at::Tensor& logits, const at::Tensor& target) {
  TORCH_CHECK_VALUE(logits.device().is_cpu(), "maxsup_mm: the CPU kernel got logits on ",
                    logits.device());
  TORCH_CHECK_VALUE(logits.dim() >= 2 && logits.is_floating_point(),
                    "maxsup_cross_entropy: logits must be a floating (N, K) or "
                    "(N, K, *spatial) tensor, got ", logits.scalar_type(), " of shape ",
                    logits.sizes());
  TORCH_CHECK_VALUE(logits.device() == target.device(), "maxsup_cross_entropy: logits on ",
                    logits.device(), ", target on ", target.device());
  TORCH_CHECK_VALUE(logits.size(1) > 0, "maxsup_cross_entropy: logits have no classes");
  TORCH_CHECK_VALUE(logits.size(1) < kMaxClasses, "maxsup_cross_entropy: at most 2^24 "
                    "classes, got ", logits.size(1));
  Prepared p;
  p.soft = target.dim() == logits.dim() && target.is_floating_point();
  const int64_t dim = logits.dim();
  p.N = logits.size(0);
  p.K = logits.size(1);
  for (int64_t d = 2; d < dim; ++d) p.S *= logits.size(d);
  if (p.soft) {
    TORCH_CHECK_VALUE(target.sizes() == logits.sizes(), "maxsup_cross_entropy: soft target "
                      "shape ", target.sizes(), " != logits shape ", logits.sizes());
  } else {
    bool ok = target.dim() == dim - 1 && !target.is_floating_point() &&
              !target.is_complex() && target.scalar_type() != at::kBool &&
              target.size(0) == p.N;
    for (int64_t d = 2; ok && d < dim; ++d) ok = target.size(d - 1) == logits.size(d);
    if (!ok) {
      std::vector<int64_t> shape{p.N};
      for (int64_t d = 2; d < dim; ++d) shape.push_back(logits.size(d));
      TORCH_CHECK_VALUE(false, "maxsup_cross_entropy: hard target must be integer class "
                        "indices of shape ", at::IntArrayRef(shape), ", got ",
                        target.scalar_type(), " of shape ", target.sizes());
    }
  }
  auto hard = [](const at::Tensor& t) {
    return t.scalar_type() == at::kLong && t.is_contiguous() ? t
                                                             : t.to(at::kLong).contiguous();
  };
  auto softf = [](const at::Tensor& t) {
    return t.scalar_type() == at::kFloat && t.is_contiguous() ? t
                                                              : t.to(at::kFloat).contiguous();
  };
  std::vector<int64_t> perm;
  if (is_class_last(logits, &perm)) {  // class dim innermost: rows of K logits
    p.channels_last = true;
    p.z = logits;  // same memory as the contiguous (N, *spatial, K) view
    p.t = p.soft ? softf(target.permute(perm)) : hard(target);
    p.N *= p.S;
    p.S = 1;
    return p;
  }
  p.z = logits.is_contiguous() ? logits : logits.contiguous();
  p.t = p.soft ? softf(target) : hard(target);
  return p;
}

std::vector<int64_t> loss_shape(at::IntArrayRef sizes) {
  std::vector<int64_t> out{sizes[0]};
  for (size_t d = 2; d < sizes.size(); ++d) out.push_back(sizes[d]);
  return out;
}

// sum of n floats in double, four chains (deterministic for a given n)
double sum_rows(const float* x, int64_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += x[i];
    s1 += x[i + 1];
    s2 += x[i + 2];
    s3 += x[i + 3];
  }
  for (; i < n; ++i) s0 += x[i];
  return (s0 + s1) + (s2 + s3);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> maxsup_fwd(
    const at::Tensor& logits, const at::Tensor& target, double alpha, int64_t ignore_index,
    int64_t reduction, int64_t isa) {
  TORCH_CHECK_VALUE(reduction >= 0 && reduction <= 2,
                    "maxsup_mm: reduction must be 0 (none), 1 (mean) or 2 (sum), got ",
                    reduction);
  const Prepared p = prepare(logits, target);
  RangeFn fn = pick(true, p.z.scalar_type(), p.soft, pick_isa(isa));
  const int64_t NS = p.N * p.S;
  const int64_t saved = p.soft ? 4 : 3;
  const at::TensorOptions f32 = logits.options().dtype(at::kFloat);
  // aux: m, ls, arg-max, [sum_y], and for mean/sum the row losses and gaps
  at::Tensor aux = at::empty({saved + (reduction ? 2 : 0), NS}, f32);
  float* auxp = aux.data_ptr<float>();
  at::Tensor loss, gap;
  std::atomic<int64_t> bad{std::numeric_limits<int64_t>::min()};
  Args a{};
  a.logits = p.z.data_ptr();
  a.hard = p.soft ? nullptr : p.t.data_ptr<int64_t>();
  a.soft = p.soft ? p.t.data_ptr<float>() : nullptr;
  a.N = p.N, a.K = p.K, a.S = p.S;
  a.alpha = static_cast<float>(alpha);
  a.ignore_index = ignore_index;
  a.m = auxp;
  a.ls = auxp + NS;
  a.am = auxp + 2 * NS;
  a.sum_y = p.soft ? auxp + 3 * NS : nullptr;
  a.bad_target = &bad;
  if (reduction == 0) {
    loss = at::empty(loss_shape(logits.sizes()), logits.options());
    gap = at::empty(loss_shape(logits.sizes()), f32);
    a.loss = loss.data_ptr();
    a.gap = gap.data_ptr<float>();
  } else {
    a.loss_f = auxp + saved * NS;
    a.gap = auxp + (saved + 1) * NS;
  }
  at::parallel_for(0, num_tasks(a), grain(a), [&](int64_t b, int64_t e) { fn(a, b, e); });
  const int64_t b = bad.load();
  TORCH_CHECK_INDEX(b == std::numeric_limits<int64_t>::min(), "maxsup_cross_entropy: target ",
                    b, " is out of bounds for ", p.K, " classes (ignore_index is ",
                    ignore_index, ")");
  if (reduction != 0) {
    const double div = reduction == 1 ? static_cast<double>(NS) : 1.0;
    loss = at::empty({}, logits.options());
    gap = at::empty({}, f32);
    const double ls = sum_rows(a.loss_f, NS) / div, gs = sum_rows(a.gap, NS) / div;
    switch (logits.scalar_type()) {
      case at::kFloat: *loss.data_ptr<float>() = static_cast<float>(ls); break;
      case at::kBFloat16: *loss.data_ptr<c10::BFloat16>() = c10::BFloat16(static_cast<float>(ls)); break;
      default: *loss.data_ptr<c10::Half>() = c10::Half(static_cast<float>(ls)); break;
    }
    *gap.data_ptr<float>() = static_cast<float>(gs);
  }
  return {loss, gap, aux};
}

at::Tensor maxsup_bwd(const at::Tensor& grad, const at::Tensor& logits,
                      const at::Tensor& target, const at::Tensor& aux, double alpha,
                      int64_t ignore_index, int64_t reduction, int64_t isa) {
  const Prepared p = prepare(logits, target);
  RangeFn fn = pick(false, p.z.scalar_type(), p.soft, pick_isa(isa));
  const int64_t N = p.N, K = p.K, S = p.S, NS = N * S;
  TORCH_CHECK_VALUE(aux.scalar_type() == at::kFloat && aux.is_contiguous() && aux.dim() == 2 &&
                    aux.size(1) == NS && aux.size(0) >= (p.soft ? 4 : 3),
                    "maxsup_mm: the saved statistics do not match the logits");
  at::Tensor g = grad.scalar_type() == at::kFloat ? grad : grad.to(at::kFloat);
  int64_t gsn, gss;
  if (reduction != 0) {  // one upstream gradient for every position
    TORCH_CHECK_VALUE(g.numel() == 1, "maxsup_mm: a reduced loss has a scalar gradient");
    gsn = gss = 0;
  } else if (g.dim() == 1) {  // (N,) per-sample loss (or channels-last rows)
    gsn = g.stride(0);
    gss = 0;
  } else {
    g = g.reshape({N, S});
    gsn = g.stride(0);
    gss = g.stride(1);
  }
  // the gradient, allocated directly in the logits' layout (contiguous, or
  // class dim innermost), as the fake implementation promises
  at::Tensor dlogits;
  const at::IntArrayRef sizes = logits.sizes();
  if (p.channels_last) {
    std::vector<int64_t> nsk{sizes[0]}, inv{0, static_cast<int64_t>(sizes.size()) - 1};
    for (size_t d = 2; d < sizes.size(); ++d) {
      nsk.push_back(sizes[d]);
      inv.push_back(static_cast<int64_t>(d) - 1);
    }
    nsk.push_back(sizes[1]);
    dlogits = at::empty(nsk, p.z.options()).permute(inv);
  } else {
    dlogits = at::empty(sizes, p.z.options());
  }
  const float* auxp = aux.data_ptr<float>();
  Args a{};
  a.logits = p.z.data_ptr();
  a.hard = p.soft ? nullptr : p.t.data_ptr<int64_t>();
  a.soft = p.soft ? p.t.data_ptr<float>() : nullptr;
  a.N = N, a.K = K, a.S = S;
  a.alpha = static_cast<float>(alpha);
  a.ignore_index = ignore_index;
  a.grad = g.data_ptr<float>();
  a.grad_sn = gsn;
  a.grad_ss = gss;
  a.grad_scale = reduction == 1 ? static_cast<float>(1.0 / static_cast<double>(NS)) : 1.0f;
  a.m_in = auxp;
  a.ls_in = auxp + NS;
  a.am_in = auxp + 2 * NS;
  a.sum_y_in = p.soft ? auxp + 3 * NS : nullptr;
  a.dlogits = dlogits.data_ptr();
  at::parallel_for(0, num_tasks(a), grain(a), [&](int64_t b, int64_t e) { fn(a, b, e); });
  return dlogits;
}

int64_t maxsup_best_isa() { return pick_isa(0); }

}  // namespace
}  // namespace maxsup_mm_cpu

TORCH_LIBRARY(maxsup_mm_cpu, m) {
  m.def("fwd(Tensor logits, Tensor target, float alpha, int ignore_index, int reduction, "
        "int isa) -> (Tensor, Tensor, Tensor)");
  m.def("bwd(Tensor grad, Tensor logits, Tensor target, Tensor aux, float alpha, "
        "int ignore_index, int reduction, int isa) -> Tensor");
  m.def("best_isa() -> int", &maxsup_mm_cpu::maxsup_best_isa);
}

TORCH_LIBRARY_IMPL(maxsup_mm_cpu, CPU, m) {
  m.impl("fwd", &maxsup_mm_cpu::maxsup_fwd);
  m.impl("bwd", &maxsup_mm_cpu::maxsup_bwd);
}
