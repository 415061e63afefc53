// Fused MaxSup cross-entropy for the CPU: one read of the logits in the
// forward pass (two sweeps over a row that sits in L1/L2), one read and one
// write in the backward pass.  See maxsup_mm/ops/fused_maxsup.py for the
// math and the Python side; the naive oracle is
// maxsup_mm.models.losses.functional.maxsup_cross_entropy_reference.
//
// Layout: logits are a contiguous (N, K, S) tensor (S = 1 for classification,
// S = H*W for segmentation, the class dim is dim 1 and is NOT permuted).
//  * S == 1: one row of K contiguous logits per sample, vectorised along K.
//  * S  > 1: blocks of 16 neighbouring pixels, vectorised along S (the
//            contiguous axis), looping over the K classes at stride S.
//
// Per position the forward pass computes, in fp32 whatever the input type:
//   max_k z_k and its first arg-max (torch.max's tie rule: the lowest index),
//   sum_k z_k, lse = log sum_k exp z_k, z_gt (hard) or sum_k y_k z_k and
//   sum_k y_k (soft), and returns
//   loss = sum_y * lse - z_gt + alpha * (z_max - sum_k z_k / K)
// (sum_y = 1 for a hard target; loss 0 where target == ignore_index).
// It saves lse (fp32), the arg-max (int32) and, for soft targets, sum_y.
// The backward pass writes
//   dz_k = g * (sum_y * exp(z_k - lse) - y_k + alpha * ([k == argmax] - 1/K))
// into the one (N, K, S) gradient buffer (0 at ignored positions).
//
// SIMD: GCC/Clang vector extensions; the kernels (maxsup_kernels.inc) are
// compiled twice: 4 lanes for any CPU (SSE2 on x86-64, NEON on arm64) and,
// on x86-64, 8 lanes with AVX2 + FMA, chosen at run time.  No OpenMP pragmas
// of our own: threads come from at::parallel_for (torch's intra-op pool).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/csrc/autograd/custom_function.h>
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

struct Args {
  const void* logits;   // (N, K, S) contiguous, type T
  const int64_t* hard;  // (N, S) class indices, or nullptr
  const float* soft;    // (N, K, S) fp32 soft target, or nullptr
  int64_t N, K, S;
  float alpha;
  int64_t ignore_index;
  // forward outputs
  void* loss;           // (N, S) type T
  float* lse;           // (N, S)
  int32_t* amax;        // (N, S)
  float* sum_y;         // (N, S) soft only
  std::atomic<int64_t>* bad_target;
  // backward inputs / output
  const float* grad;    // upstream gradient, (N, S) with strides below
  int64_t grad_sn, grad_ss;
  const float* lse_in;
  const int32_t* amax_in;
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

namespace v8 {
#define MS_L 8
#include "maxsup_kernels.inc"
#undef MS_L
}  // namespace v8

namespace v4 {
#define MS_L 4
#include "maxsup_kernels.inc"
#undef MS_L
}  // namespace v4

// ---------------------------------------------------------------------------
// Entry points per (dtype, soft, ISA).
// ---------------------------------------------------------------------------
typedef void (*RangeFn)(const Args&, int64_t, int64_t);

template <typename T, bool SOFT>
__attribute__((noinline)) void fwd_generic(const Args& a, int64_t b, int64_t e) {
  v4::fwd_range<T, SOFT>(a, b, e);
}
template <typename T, bool SOFT>
__attribute__((noinline)) void bwd_generic(const Args& a, int64_t b, int64_t e) {
  v4::bwd_range<T, SOFT>(a, b, e);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MS_HAVE_V3 1
template <typename T, bool SOFT>
__attribute__((noinline, target("avx2,fma,f16c"))) void fwd_v3(const Args& a, int64_t b,
                                                                 int64_t e) {
  v8::fwd_range<T, SOFT>(a, b, e);
}
template <typename T, bool SOFT>
__attribute__((noinline, target("avx2,fma,f16c"))) void bwd_v3(const Args& a, int64_t b,
                                                                 int64_t e) {
  v8::bwd_range<T, SOFT>(a, b, e);
}
bool cpu_has_v3() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
  }();
  return has;
}
#else
#define MS_HAVE_V3 0
bool cpu_has_v3() { return false; }
#endif

// isa: 0 = best available, 1 = generic, 2 = AVX2 (error if unavailable)
int64_t pick_isa(int64_t isa) {
  TORCH_CHECK(isa >= 0 && isa <= 2, "maxsup_mm: isa must be 0, 1 or 2, got ", isa);
  if (isa == 2) TORCH_CHECK(cpu_has_v3(), "maxsup_mm: AVX2/FMA kernel requested on a CPU "
                            "(or build) without it");
  if (isa == 0) return cpu_has_v3() ? 2 : 1;
  return isa;
}

template <typename T, bool SOFT>
RangeFn select_fwd(int64_t isa) {
#if MS_HAVE_V3
  if (isa == 2) return &fwd_v3<T, SOFT>;
#endif
  return &fwd_generic<T, SOFT>;
}
template <typename T, bool SOFT>
RangeFn select_bwd(int64_t isa) {
#if MS_HAVE_V3
  if (isa == 2) return &bwd_v3<T, SOFT>;
#endif
  return &bwd_generic<T, SOFT>;
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
      TORCH_CHECK(false, "maxsup_mm: fused MaxSup supports float32, bfloat16 and "
                  "float16 logits, got ", dt);
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

Prepared prepare(const at::Tensor& logits, const at::Tensor& target) {
  TORCH_CHECK_VALUE(logits.dim() >= 2 && logits.is_floating_point(),
                    "maxsup_cross_entropy: logits must be a floating (N, K) or "
                    "(N, K, *spatial) tensor, got ", logits.scalar_type(), " of shape ",
                    logits.sizes());
  TORCH_CHECK_VALUE(logits.device() == target.device(), "maxsup_cross_entropy: logits on ",
                    logits.device(), ", target on ", target.device());
  TORCH_CHECK_VALUE(logits.size(1) > 0, "maxsup_cross_entropy: logits have no classes");
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
              !target.is_complex() && target.size(0) == p.N;
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
  if (dim > 2 && !logits.is_contiguous()) {
    std::vector<int64_t> perm{0};
    for (int64_t d = 2; d < dim; ++d) perm.push_back(d);
    perm.push_back(1);
    at::Tensor last = logits.permute(perm);
    if (last.is_contiguous()) {  // class dim innermost: rows of K logits
      p.channels_last = true;
      p.z = logits;  // same memory as the contiguous (N, *spatial, K) view
      p.t = p.soft ? softf(target.permute(perm)) : hard(target);
      p.N *= p.S;
      p.S = 1;
      return p;
    }
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

// Forward over the prepared view.  Returns the loss (N, *spatial) and `aux`,
// one fp32 buffer of 2 (hard) or 3 (soft) rows of N * S: lse, the arg-max
// (int32 bits) and sum_y: all that the backward pass needs.
std::pair<at::Tensor, at::Tensor> run_fwd(const at::Tensor& logits, const Prepared& p,
                                          double alpha, int64_t ignore_index,
                                          int64_t isa) {
  const int64_t NS = p.N * p.S;
  at::Tensor loss = at::empty(loss_shape(logits.sizes()), logits.options());
  at::Tensor aux = at::empty({p.soft ? 3 : 2, NS}, logits.options().dtype(at::kFloat));
  float* auxp = aux.data_ptr<float>();
  std::atomic<int64_t> bad{std::numeric_limits<int64_t>::min()};
  Args a{};
  a.logits = p.z.data_ptr();
  a.hard = p.soft ? nullptr : p.t.data_ptr<int64_t>();
  a.soft = p.soft ? p.t.data_ptr<float>() : nullptr;
  a.N = p.N, a.K = p.K, a.S = p.S;
  a.alpha = static_cast<float>(alpha);
  a.ignore_index = ignore_index;
  a.loss = loss.data_ptr();
  a.lse = auxp;
  a.amax = reinterpret_cast<int32_t*>(auxp + NS);
  a.sum_y = p.soft ? auxp + 2 * NS : nullptr;
  a.bad_target = &bad;
  RangeFn fn = pick(true, p.z.scalar_type(), p.soft, pick_isa(isa));
  at::parallel_for(0, num_tasks(a), grain(a), [&](int64_t b, int64_t e) { fn(a, b, e); });
  const int64_t b = bad.load();
  TORCH_CHECK_INDEX(b == std::numeric_limits<int64_t>::min(), "maxsup_cross_entropy: target ",
                    b, " is out of bounds for ", p.K, " classes (ignore_index is ",
                    ignore_index, ")");
  return {loss, aux};
}

at::Tensor maxsup_ce_cpu(const at::Tensor& logits, const at::Tensor& target, double alpha,
                         int64_t ignore_index, int64_t isa) {
  TORCH_CHECK_VALUE(logits.device().is_cpu(), "maxsup_mm: the CPU kernel got logits on ",
                    logits.device());
  return run_fwd(logits, prepare(logits, target), alpha, ignore_index, isa).first;
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct MaxSupCE : public torch::autograd::Function<MaxSupCE> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits,
                            const at::Tensor& target, double alpha, int64_t ignore_index,
                            int64_t isa) {
    TORCH_CHECK_VALUE(logits.device().is_cpu(), "maxsup_mm: the CPU kernel got logits on ",
                      logits.device());
    Prepared p = prepare(logits, target);
    auto out = run_fwd(logits, p, alpha, ignore_index, isa);
    ctx->save_for_backward({p.z, p.t, out.second});
    ctx->saved_data["alpha"] = alpha;
    std::vector<int64_t> info{ignore_index, isa, p.soft, p.channels_last, p.N, p.K, p.S};
    for (int64_t s : logits.sizes()) info.push_back(s);
    ctx->saved_data["info"] = std::move(info);
    return out.first;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "maxsup_cross_entropy: the fused MaxSup loss is differentiable once "
                "(its backward is a closed-form kernel); for double backward "
                "(create_graph=True) use backend='reference'");
    auto saved = ctx->get_saved_variables();
    const at::Tensor &z = saved[0], &t = saved[1], &aux = saved[2];
    const double alpha = ctx->saved_data["alpha"].toDouble();
    const std::vector<int64_t> info = ctx->saved_data["info"].toIntVector();
    const int64_t ignore_index = info[0], isa = info[1];
    const bool soft = info[2], channels_last = info[3];
    const int64_t N = info[4], K = info[5], S = info[6], NS = N * S;
    const std::vector<int64_t> sizes(info.begin() + 7, info.end());
    // upstream gradient as (N, S) with strides; reshape only when needed
    at::Tensor g = grads[0];
    if (g.scalar_type() != at::kFloat) g = g.to(at::kFloat);
    int64_t gsn, gss;
    if (g.dim() == 1) {  // (N,) per-sample loss (or channels-last rows)
      gsn = g.stride(0);
      gss = 0;
    } else {
      g = g.reshape({N, S});
      gsn = g.stride(0);
      gss = g.stride(1);
    }
    // the gradient, allocated directly in the logits' layout
    at::Tensor dlogits;
    if (channels_last) {
      std::vector<int64_t> nsk{sizes[0]}, inv{0, static_cast<int64_t>(sizes.size()) - 1};
      for (size_t d = 2; d < sizes.size(); ++d) {
        nsk.push_back(sizes[d]);
        inv.push_back(static_cast<int64_t>(d) - 1);
      }
      nsk.push_back(sizes[1]);
      dlogits = at::empty(nsk, z.options()).permute(inv);
    } else {
      dlogits = at::empty(sizes, z.options());
    }
    const float* auxp = aux.data_ptr<float>();
    Args a{};
    a.logits = z.data_ptr();
    a.hard = soft ? nullptr : t.data_ptr<int64_t>();
    a.soft = soft ? t.data_ptr<float>() : nullptr;
    a.N = N, a.K = K, a.S = S;
    a.alpha = static_cast<float>(alpha);
    a.ignore_index = ignore_index;
    a.grad = g.data_ptr<float>();
    a.grad_sn = gsn;
    a.grad_ss = gss;
    a.lse_in = auxp;
    a.amax_in = reinterpret_cast<const int32_t*>(auxp + NS);
    a.sum_y_in = soft ? auxp + 2 * NS : nullptr;
    a.dlogits = dlogits.data_ptr();
    RangeFn fn = pick(false, z.scalar_type(), soft, pick_isa(isa));
    at::parallel_for(0, num_tasks(a), grain(a), [&](int64_t b, int64_t e) { fn(a, b, e); });
    return {dlogits, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor maxsup_ce_autograd(const at::Tensor& logits, const at::Tensor& target,
                              double alpha, int64_t ignore_index, int64_t isa) {
  return MaxSupCE::apply(logits, target, alpha, ignore_index, isa);
}

int64_t maxsup_best_isa() { return pick_isa(0); }

}  // namespace
}  // namespace maxsup_mm_cpu

TORCH_LIBRARY(maxsup_mm, m) {
  m.def("maxsup_ce(Tensor logits, Tensor target, float alpha, int ignore_index, int isa) "
        "-> Tensor");
  m.def("best_isa() -> int", &maxsup_mm_cpu::maxsup_best_isa);
}

TORCH_LIBRARY_IMPL(maxsup_mm, CPU, m) {
  m.impl("maxsup_ce", &maxsup_mm_cpu::maxsup_ce_cpu);
}

TORCH_LIBRARY_IMPL(maxsup_mm, Autograd, m) {
  m.impl("maxsup_ce", &maxsup_mm_cpu::maxsup_ce_autograd);
}
