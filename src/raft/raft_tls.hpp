#pragma once

#include <memory>
#include <string>

namespace nodepool {

/// TLS between the members of a cluster, under libraft's TCP transport
/// (raft_uv_tcp speaks plain TCP, and its streams are libuv's): each member
/// runs this tunnel on a thread of its own.
///
/// - Inbound: it listens on the member's Raft address with TLS; a peer that
///   completes a mutual handshake (a certificate signed by the CA given,
///   whose common name begins with "oracle": the CA may sign miners' too)
///   is joined to raft's own listener, bound on loopback (`local`).
/// - Outbound: for each peer's Raft address, a listener on loopback that
///   raft is told to connect to (`local_for`); each connection made there
///   goes on to the peer over TLS.
///
/// Bytes are copied both ways unchanged. A connection whose handshake
/// fails is closed, logged (the first, then one in 100) and counted.
class raft_tls_tunnel {
public:
  struct files {
    std::string certificate, key, ca;
  };
  /// Listens on `public_address` (host:port) and forwards to `local`
  /// (127.0.0.1:port, raft's listener; may be empty, see set_local). Throws std::runtime_error with the
  /// reason when the files do not load or the address cannot be bound.
  /// A connection whose TCP connect and TLS handshake take longer than
  /// 5 s is closed.
  raft_tls_tunnel(const files& f, const std::string& public_address,
                  const std::string& local);
  ~raft_tls_tunnel();
  raft_tls_tunnel(const raft_tls_tunnel&) = delete;
  raft_tls_tunnel& operator=(const raft_tls_tunnel&) = delete;

  /// Where raft listens, when it was not known at construction (an empty
  /// `local`): until then a peer that connects is closed after its
  /// handshake.
  void set_local(const std::string& local);

  /// The loopback address ("127.0.0.1:port") through which raft reaches the
  /// peer at `address` over TLS; made at the first call. Empty if it cannot
  /// be made (the reason is logged).
  std::string local_for(const std::string& address);

  /// Handshakes refused or failed, both ways.
  uint64_t failed_handshakes() const;

  struct impl;

private:
  std::unique_ptr<impl> p_;
};

} // namespace nodepool
