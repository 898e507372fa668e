#pragma once

#include <cstdint>

namespace nodepool {

/// libraft 0.15's disk I/O (raft_uv) gives each open segment a kernel AIO
/// context and destroys it with io_destroy(2) on raft's loop thread when the
/// segment closes: at every snapshot, and when a segment fills. io_destroy
/// waits for an RCU grace period, 30-48 ms on the kernels measured, and the
/// loop (sending, receiving, committing) waits with it. raft_aio.cpp hands
/// that call to a thread of its own: libraft makes it through libc's
/// `syscall`, which this program defines (see there). Nothing else changes:
/// every other system call goes straight to libc's.

/// io_destroy calls handed over since the start.
uint64_t deferred_aio_destroys();
/// Waits until every io_destroy handed over has run (tests).
void drain_aio_destroys();
/// Makes sure the interposer is linked in (raft_log calls it at start).
void keep_aio_interposer();

} // namespace nodepool
