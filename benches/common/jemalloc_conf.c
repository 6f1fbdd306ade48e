/* jemalloc's options for weft's executables (linked in only with
 * WEFT_WITH_JEMALLOC, off by default). A work-stealing runtime allocates a task on one worker
 * and frees it on another; with jemalloc's default of four arenas per CPU the
 * freed memory goes back to an arena the allocating thread does not use, so
 * spawn_many ran about 2x slower and with about 2x the peak RSS. One arena
 * (each thread keeps its own cache in front of it) and a 1 s decay of unused
 * pages measured best here: docs/performance.md. */
const char *malloc_conf = "narenas:1,dirty_decay_ms:1000";
