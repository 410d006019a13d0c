// layerpager.hpp: header-only C++17 wrapper over the C API in layerpager.h.
//
//   layerpager::Pager pager = layerpager::Pager::open_gguf("model.gguf", opts);
//   layerpager::Tensor q = pager.acquire("blk.0.attn_q.weight");   // released on scope exit
//   compute(q.data(), q.size());
//
// Errors are exceptions (layerpager::Error, carrying the status and the
// message) when exceptions are enabled. Every operation also has a
// non-throwing form returning a layerpager::Status (try_open_gguf,
// try_acquire, ...), the only forms available when the engine is built with
// -fno-exceptions.
//
// Thread safety is the C API's: one Pager may be used from many threads; a
// Tensor guard belongs to one owner (it is move-only).
#ifndef LAYERPAGER_HPP
#define LAYERPAGER_HPP

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "layerpager.h"

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#include <stdexcept>
#define LAYERPAGER_HAS_EXCEPTIONS 1
#else
#define LAYERPAGER_HAS_EXCEPTIONS 0
#endif

namespace layerpager {

/// A status with its message (the thread's last error at the time of failure).
class Status {
 public:
  Status() = default;
  explicit Status(pager_status_t code) : code_(code) {
    if (code != PAGER_OK) message_ = pager_last_error_message();
  }
  bool ok() const noexcept { return code_ == PAGER_OK; }
  explicit operator bool() const noexcept { return ok(); }
  pager_status_t code() const noexcept { return code_; }
  const std::string &message() const noexcept { return message_; }
  const char *name() const noexcept { return pager_status_string(code_); }

 private:
  pager_status_t code_ = PAGER_OK;
  std::string message_;
};

#if LAYERPAGER_HAS_EXCEPTIONS
/// Thrown by the throwing forms: the status and the library's message.
class Error : public std::runtime_error {
 public:
  explicit Error(const Status &s)
      : std::runtime_error(std::string(s.name()) + ": " + s.message()), status_(s.code()) {}
  pager_status_t status() const noexcept { return status_; }

 private:
  pager_status_t status_;
};

inline void throw_if_error(const Status &s) {
  if (!s.ok()) throw Error(s);
}
#endif

/// A read-only view of a tensor's bytes (std::span<const std::byte>-like).
class Bytes {
 public:
  Bytes() = default;
  Bytes(const std::byte *data, std::size_t size) : data_(data), size_(size) {}
  const std::byte *data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  const std::byte *begin() const noexcept { return data_; }
  const std::byte *end() const noexcept { return data_ + size_; }
  std::byte operator[](std::size_t i) const noexcept { return data_[i]; }

 private:
  const std::byte *data_ = nullptr;
  std::size_t size_ = 0;
};

class Pager;

/// An acquired tensor: resident until the guard is destroyed or released.
class Tensor {
 public:
  Tensor() = default;
  Tensor(const Tensor &) = delete;
  Tensor &operator=(const Tensor &) = delete;
  Tensor(Tensor &&o) noexcept : pager_(o.pager_), t_(o.t_) { o.pager_ = nullptr; }
  Tensor &operator=(Tensor &&o) noexcept {
    if (this != &o) {
      release();
      pager_ = o.pager_;
      t_ = o.t_;
      o.pager_ = nullptr;
    }
    return *this;
  }
  ~Tensor() { release(); }

  /// Releases now (the destructor does it otherwise). Safe to call twice.
  Status release() noexcept {
    if (!pager_) return Status();
    Status s(pager_release(pager_, &t_));
    pager_ = nullptr;
    return s;
  }

  bool valid() const noexcept { return pager_ != nullptr; }
  const void *data() const noexcept { return t_.data; }
  std::uint64_t size() const noexcept { return t_.size; }
  std::uint32_t id() const noexcept { return t_.id; }
  Bytes bytes() const noexcept {
    return Bytes(static_cast<const std::byte *>(t_.data), static_cast<std::size_t>(t_.size));
  }
  /// The raw C acquisition (still owned by this guard).
  const pager_tensor_t &c_tensor() const noexcept { return t_; }

 private:
  friend class Pager;
  pager_t *pager_ = nullptr;
  pager_tensor_t t_{};
};

/// Options, starting from the library's defaults.
struct Options {
  pager_options_t c;
  Options() { pager_options_default(&c); }
  Options &budget(std::uint64_t bytes) { c.budget_bytes = bytes; return *this; }
  Options &policy(std::uint32_t p) { c.policy = p; return *this; }
  Options &io_mode(std::uint32_t m) { c.io_mode = m; return *this; }
  Options &prefetch_threads(std::uint32_t n) { c.prefetch_threads = n; return *this; }
  Options &alignment(std::uint32_t a) { c.alignment = a; return *this; }
  Options &wait_ms(std::uint32_t ms) { c.wait_ms = ms; return *this; }
};

/// An open pager; closes on destruction. Move-only.
class Pager {
 public:
  Pager() = default;
  Pager(const Pager &) = delete;
  Pager &operator=(const Pager &) = delete;
  Pager(Pager &&o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  Pager &operator=(Pager &&o) noexcept {
    if (this != &o) {
      close();
      p_ = std::exchange(o.p_, nullptr);
    }
    return *this;
  }
  ~Pager() { close(); }

  /// Closes now. Tensors still acquired stay valid until released.
  void close() noexcept {
    if (p_) pager_close(std::exchange(p_, nullptr));
  }

  // ---- non-throwing forms
  static Status try_open_gguf(std::string_view path, const Options &o, Pager *out) noexcept {
    return open_with(pager_open_gguf, path, o, out);
  }
  static Status try_open_safetensors(std::string_view path, const Options &o, Pager *out) noexcept {
    return open_with(pager_open_safetensors, path, o, out);
  }
  Status try_find(std::string_view name, std::uint32_t *id) const noexcept {
    std::string n(name);
    return Status(pager_find(p_, n.c_str(), id));
  }
  Status try_acquire(std::uint32_t id, Tensor *out) noexcept {
    Tensor t;
    Status s(pager_acquire(p_, id, &t.t_));
    if (s.ok()) {
      t.pager_ = p_;
      *out = std::move(t);
    }
    return s;
  }
  Status try_acquire(std::string_view name, Tensor *out) noexcept {
    std::uint32_t id = 0;
    Status s = try_find(name, &id);
    return s.ok() ? try_acquire(id, out) : s;
  }
  Status try_info(std::uint32_t id, pager_tensor_info_t *out) const noexcept {
    return Status(pager_tensor_info(p_, id, out));
  }
  /* Prepares *out with pager_stats_init, then fills it. */
  Status try_stats(pager_stats_t *out) const noexcept {
    pager_stats_init(out);
    return Status(pager_get_stats(p_, out));
  }
  Status pin(std::uint32_t id) noexcept { return Status(pager_pin(p_, id)); }
  Status unpin(std::uint32_t id) noexcept { return Status(pager_unpin(p_, id)); }
  Status prefetch(std::uint32_t id) noexcept { return Status(pager_prefetch(p_, id)); }
  Status set_schedule(const std::uint32_t *ids, std::size_t n) noexcept {
    return Status(pager_set_schedule(p_, ids, n));
  }
  Status set_budget(std::uint64_t bytes) noexcept { return Status(pager_set_budget(p_, bytes)); }
  Status hint(const std::uint32_t *ids, std::size_t n) noexcept { return Status(pager_hint(p_, ids, n)); }
  /* Mixture of experts: one slice per expert of a merged tensor; expert e is *first + e. */
  Status try_split_experts(std::uint32_t parent, std::uint32_t n_experts, std::uint32_t *first) noexcept {
    return Status(pager_split_experts(p_, parent, n_experts, first));
  }
  /* The parent's slices read in place: an acquired slice at offset o of the parent is at *base + o. */
  Status try_place_slices(std::uint32_t parent, const void **base) noexcept {
    return Status(pager_place_slices(p_, parent, base));
  }

  std::size_t tensor_count() const noexcept { return pager_tensor_count(p_); }
  bool is_open() const noexcept { return p_ != nullptr; }
  pager_t *c_pager() const noexcept { return p_; }

#if LAYERPAGER_HAS_EXCEPTIONS
  // ---- throwing forms
  static Pager open_gguf(std::string_view path, const Options &o = Options()) {
    Pager p;
    throw_if_error(try_open_gguf(path, o, &p));
    return p;
  }
  static Pager open_safetensors(std::string_view path, const Options &o = Options()) {
    Pager p;
    throw_if_error(try_open_safetensors(path, o, &p));
    return p;
  }
  std::uint32_t find(std::string_view name) const {
    std::uint32_t id = 0;
    throw_if_error(try_find(name, &id));
    return id;
  }
  Tensor acquire(std::uint32_t id) {
    Tensor t;
    throw_if_error(try_acquire(id, &t));
    return t;
  }
  Tensor acquire(std::string_view name) {
    Tensor t;
    throw_if_error(try_acquire(name, &t));
    return t;
  }
  pager_tensor_info_t info(std::uint32_t id) const {
    pager_tensor_info_t i{};
    throw_if_error(try_info(id, &i));
    return i;
  }
  pager_stats_t stats() const {
    pager_stats_t s{};
    throw_if_error(try_stats(&s));
    return s;
  }
#endif

 private:
  template <typename F>
  static Status open_with(F f, std::string_view path, const Options &o, Pager *out) noexcept {
    std::string p(path);
    pager_t *raw = nullptr;
    Status s(f(p.c_str(), &o.c, &raw));
    if (s.ok()) *out = Pager(raw);
    return s;
  }
  explicit Pager(pager_t *p) noexcept : p_(p) {}
  pager_t *p_ = nullptr;
};

}  // namespace layerpager

#endif  // LAYERPAGER_HPP
