// A 64-byte aligned, growable buffer of trivially copyable T. Growth is the only allocation; `ensure` with a
// size already reached is free, which is how per-call scratch stays allocation-free after warm-up.
// Buffers of 4 MiB and more are 2 MiB aligned and asked to use transparent huge pages: packed expert weights are
// streamed at memory bandwidth, and with 4 KiB pages every 4 KiB of that stream would cost a TLB miss.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <new>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace moe {

template <typename T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t n) { ensure(n); }
  ~AlignedBuffer() { std::free(data_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& o) noexcept : data_(o.data_), size_(o.size_) { o.data_ = nullptr, o.size_ = 0; }

  // Grows to at least n elements (contents are not preserved on growth).
  void ensure(size_t n) {
    if (n <= size_) return;
    std::free(data_);
    data_ = nullptr;
    size_ = 0;
    const size_t align = n * sizeof(T) >= kHugeThreshold ? kHugePage : 64;
    const size_t bytes = (n * sizeof(T) + align - 1) / align * align;
    data_ = static_cast<T*>(std::aligned_alloc(align, bytes));
    if (!data_) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align == kHugePage) madvise(data_, bytes, MADV_HUGEPAGE);  // a hint: failure only costs speed
#endif
    size_ = n;
  }
  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  size_t bytes() const { return size_ * sizeof(T); }

 private:
  static constexpr size_t kHugePage = size_t(2) << 20;
  static constexpr size_t kHugeThreshold = size_t(4) << 20;
  T* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace moe
