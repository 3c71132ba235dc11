// A 64-byte aligned, growable buffer of trivially copyable T. Growth is the only allocation; `ensure` with a
// size already reached is free, which is how per-call scratch stays allocation-free after warm-up.
// Buffers of 4 MiB and more are 2 MiB aligned and asked to use transparent huge pages: packed expert weights are
// streamed at memory bandwidth, and with 4 KiB pages every 4 KiB of that stream would cost a TLB miss and restart
// the hardware prefetcher. On Linux they are mapped on their own, so that the request comes before any page
// exists: from the heap, glibc served the 4-32 MiB ones (an OLMoE expert's packed weights) from memory an
// earlier allocation had already faulted in with 4 KiB pages, which madvise leaves as they are (bench/RESULTS.md,
// step 26). Under AddressSanitizer they stay on the heap, where its redzones see overflows.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define MOE_HEAP_ONLY 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MOE_HEAP_ONLY 1
#endif
#endif

namespace moe {

template <typename T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t n) { ensure(n); }
  ~AlignedBuffer() { release(); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& o) noexcept : data_(o.data_), size_(o.size_), mapped_(o.mapped_) {
    o.data_ = nullptr, o.size_ = 0, o.mapped_ = 0;
  }

  // Grows to at least n elements (contents are not preserved on growth).
  void ensure(size_t n) {
    if (n <= size_) return;
    release();
    const size_t bytes = n * sizeof(T);
    data_ = static_cast<T*>(bytes >= kHugeThreshold ? allocateHuge(bytes) : allocate(bytes, 64));
    size_ = n;
  }
  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  size_t bytes() const { return size_ * sizeof(T); }

 private:
  static constexpr size_t kHugePage = size_t(2) << 20;
  static constexpr size_t kHugeThreshold = size_t(4) << 20;

  static size_t roundUp(size_t bytes, size_t align) { return (bytes + align - 1) / align * align; }

  static void* allocate(size_t bytes, size_t align) {
    void* p = std::aligned_alloc(align, roundUp(bytes, align));
    if (!p) throw std::bad_alloc();
    return p;
  }

  void* allocateHuge(size_t bytes) {
    const size_t length = roundUp(bytes, kHugePage);
#if defined(__linux__) && defined(MADV_HUGEPAGE) && !defined(MOE_HEAP_ONLY)
    if (void* p = mapAligned(length)) {
      madvise(p, length, MADV_HUGEPAGE);  // a hint: failure only costs speed
      mapped_ = length;
      return p;
    }
    // (mapping fails where a process reaches vm.max_map_count, with tens of thousands of experts: the heap may not)
#endif
    void* p = allocate(length, kHugePage);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(p, length, MADV_HUGEPAGE);
#endif
    return p;
  }

#if defined(__linux__)
  // `length` bytes of fresh anonymous memory at a 2 MiB boundary, or null. One huge page more is mapped, then what
  // lies outside the aligned range is unmapped; that split can itself fail at vm.max_map_count, and then all of the
  // mapping goes back.
  static void* mapAligned(size_t length) {
    const size_t total = length + kHugePage;
    void* raw = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t begin = (start + kHugePage - 1) & ~uintptr_t(kHugePage - 1), end = begin + length;
    if (begin > start && munmap(raw, begin - start) != 0) {
      munmap(raw, total);
      return nullptr;
    }
    if (munmap(reinterpret_cast<void*>(end), start + total - end) != 0) {  // (never empty: begin - start < 2 MiB)
      munmap(reinterpret_cast<void*>(begin), start + total - begin);
      return nullptr;
    }
    return reinterpret_cast<void*>(begin);
  }
#endif

  void release() {
#if defined(__linux__)
    if (mapped_ != 0) munmap(data_, mapped_);
    else std::free(data_);
#else
    std::free(data_);
#endif
    data_ = nullptr;
    size_ = 0;
    mapped_ = 0;
  }

  T* data_ = nullptr;
  size_t size_ = 0;
  size_t mapped_ = 0;  // bytes mapped with mmap (0: the heap's)
};

}  // namespace moe
