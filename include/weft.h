/* weft: a C11 async runtime for Linux.
 *
 * Poll-based futures (weft/future.h), run by a multi-threaded work-stealing
 * executor (weft/runtime.h), with channels to pass values between tasks and
 * threads (weft/sync.h), and timers, TCP and files over io_uring (weft/io.h). Read docs/tutorial.md first; docs/lifetimes.md holds
 * the ownership rules and docs/errors.md the error conventions.
 *
 * Every function returns 0 or a value >= 0 on success and -errno on failure,
 * never -1 plus errno. A call that fails synchronously has no side effects. */
#ifndef WEFT_H
#define WEFT_H

#ifdef __cplusplus
extern "C" {
#endif

#include "weft/future.h"
#include "weft/runtime.h"
#include "weft/sync.h"
#include "weft/io.h"
#include "weft/blocking.h"
#include "weft/metrics.h"

#ifdef __cplusplus
}
#endif

#endif
