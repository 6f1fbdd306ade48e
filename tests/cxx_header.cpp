// tests/cxx_header.cpp: <weft.h> compiles as C++ (-Wall -Wextra -pedantic
// -Werror; g++ rejects C11's _Atomic, which a public struct used) and a C++
// program can run a future written with the async macros on a runtime.
#include <weft.h>

#include <cstdio>

struct count_to {
    weft_future base;
    weft_yield_now y;
    int i, n;
};

static enum weft_poll count_poll(weft_future *f, weft_cx *cx)
{
    count_to *c = reinterpret_cast<count_to *>(f);
    WEFT_ASYNC_BEGIN(f);
    for (c->i = 0; c->i < c->n; c->i++) {
        weft_yield_now_init(&c->y);
        WEFT_AWAIT(f, cx, &c->y);
    }
    WEFT_ASYNC_END(f);
}

static const weft_future_ops count_ops = { count_poll, nullptr };

int main()
{
    weft_runtime_config cfg;
    weft_runtime_config_init(&cfg);
    cfg.workers = 1;
    weft_runtime *rt = nullptr;
    if (weft_runtime_create(&rt, &cfg) != 0)
        return 1;
    count_to c = {};
    c.base.ops = &count_ops;
    c.n = 5;
    int r = weft_block_on(rt, &c.base);
    weft_runtime_destroy(rt);
    std::printf("C++: block_on %d, counted to %d\n", r, c.i);
    return r == 0 && c.i == 5 ? 0 : 1;
}
