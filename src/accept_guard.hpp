#pragma once

#include <chrono>
#include <cstdint>

namespace nodepool {

/// Out of file descriptors, accept(2) fails with EMFILE (or ENFILE) and
/// leaves the connection waiting in the listen queue, so the listening
/// socket stays readable. A poll loop that retries at once spins a core
/// until a descriptor frees up: CAF 0.17's multiplexer does, for the port
/// miners connect to (measured: a whole core, silently).
///
/// This program defines `accept` (the executable's definition comes first
/// for CAF's library too; every call goes on to libc's). On a thread that
/// called shed_when_out_of_descriptors(), an accept that fails for want of
/// descriptors gives up a descriptor kept in reserve, accepts the waiting
/// connection and closes it at once (its peer sees the connection closed
/// and retries later, as miners and clients do), takes the reserve back,
/// and reports EAGAIN: nothing is left waiting, so nothing spins. Each
/// such connection is counted and the first and every 100th are logged.
/// Other threads are not affected (the HTTP server and the TLS tunnel wait
/// 100 ms and accept the connection then).
///
/// The connections such a thread accepts are also watched: one whose peer
/// has sent nothing at all `silence_limit` after it was accepted (CAF's
/// client sends its handshake, and TLS its hello, at once) is shut down,
/// which its owner sees as the peer leaving; counted and logged likewise.
/// CAF itself keeps a connection that never says a word for ever, so a
/// peer could hold descriptors without limit.
void shed_when_out_of_descriptors(
  std::chrono::milliseconds silence_limit = std::chrono::seconds(10));

/// Connections closed for want of descriptors since the start.
uint64_t connections_shed();
/// Connections shut down because their peer said nothing in time.
uint64_t connections_silent_closed();

/// The descriptors this process has open, and its (soft) limit.
uint64_t open_descriptors();
uint64_t descriptor_limit();

/// Raises the soft limit of open files to the hard limit (Debian's default
/// soft limit, 1024, would cap an oracle near a thousand miner
/// connections). Returns the limit now in force.
uint64_t raise_descriptor_limit();

} // namespace nodepool
