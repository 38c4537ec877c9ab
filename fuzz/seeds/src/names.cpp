// Tiny ELF seed for the elf_symbols fuzz target: C++ names (namespaces,
// overloads, templates, operators, a lambda) and USDT probes without
// semaphores; no libstdc++ (-nostdlib).
#include <sys/sdt.h>
struct Frame { int w, h; };
namespace vision {
struct Detector {
    int infer(Frame const& f);
    int infer_layer(int x);
};
__attribute__((noinline)) int Detector::infer(Frame const& f) { return f.w * f.h; }
__attribute__((noinline)) int Detector::infer_layer(int x) {
    DTRACE_PROBE2(vision, layer, x, this);
    return x + 1;
}
__attribute__((noinline)) int scale(int x) { return x * 3; }
__attribute__((noinline)) double scale(double x) { return x * 3.5; }
template <typename T> __attribute__((noinline)) T twice(T x) { return x + x; }
struct Op { __attribute__((noinline)) int operator()(int x) const { return x - 1; } };
}
extern "C" __attribute__((noinline)) int plain_c(int x) { return x ^ 7; }
extern "C" void _start() {
    vision::Detector d; Frame f{2, 3};
    vision::Op op;
    auto lambda = [](int x) __attribute__((noinline)) { return x * 11; };
    volatile int r = d.infer(f) + d.infer_layer(1) + vision::scale(2) + (int)vision::scale(2.5)
        + vision::twice<int>(3) + (int)vision::twice<long>(4) + op(5) + plain_c(6) + lambda(7);
    (void)r;
    for (;;) {}
}
