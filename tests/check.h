/* tests/check.h: CHECK, an assertion for threads Criterion does not watch
 * (workers, pool threads) and for the plain stress programs. */
#ifndef WEFT_TESTS_CHECK_H
#define WEFT_TESTS_CHECK_H

#include <stdio.h>
#include <stdlib.h>

/* Criterion's asserts must not run on worker threads: a failed CHECK there
 * aborts the test process instead. */
#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                         \
        }                                                                    \
    } while (0)

#endif
