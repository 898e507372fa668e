#include "raft/raft_tls.hpp"

#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <thread>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <openssl/x509.h>

#include "cluster_config.hpp"
#include "log.hpp"

namespace nodepool {

namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;
using error_code = boost::system::error_code;

namespace {

using tls_stream = ssl::stream<tcp::socket>;

/// One connection through the tunnel: its TLS side and its plain side
/// (raft's), bytes copied both ways until either side ends.
struct joint : std::enable_shared_from_this<joint> {
  std::shared_ptr<tls_stream> tls;
  std::shared_ptr<tcp::socket> plain;
  std::array<char, 16384> to_plain{}, to_tls{};

  void start() {
    from_tls();
    from_plain();
  }
  void close() {
    error_code ec;
    tls->lowest_layer().close(ec);
    plain->close(ec);
  }
  void from_tls() {
    auto self = shared_from_this();
    tls->async_read_some(net::buffer(to_plain), [self](error_code ec, size_t n) {
      if (ec)
        return self->close();
      net::async_write(*self->plain, net::buffer(self->to_plain, n),
                       [self](error_code ec, size_t) {
                         if (ec)
                           return self->close();
                         self->from_tls();
                       });
    });
  }
  void from_plain() {
    auto self = shared_from_this();
    plain->async_read_some(net::buffer(to_tls), [self](error_code ec, size_t n) {
      if (ec)
        return self->close();
      net::async_write(*self->tls, net::buffer(self->to_tls, n),
                       [self](error_code ec, size_t) {
                         if (ec)
                           return self->close();
                         self->from_plain();
                       });
    });
  }
};

void join(std::shared_ptr<tls_stream> tls, std::shared_ptr<tcp::socket> plain) {
  auto j = std::make_shared<joint>();
  j->tls = std::move(tls);
  j->plain = std::move(plain);
  j->start();
}

/// Both ends present a certificate signed by the cluster's CA; TLS 1.2 at
/// least. (Peers are known by the CA, as the miners' TLS does: no host name
/// is checked.)
void configure(ssl::context& ctx, const raft_tls_tunnel::files& f) {
  ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2
                  | ssl::context::no_sslv3 | ssl::context::no_tlsv1
                  | ssl::context::no_tlsv1_1);
  ctx.use_certificate_chain_file(f.certificate);
  ctx.use_private_key_file(f.key, ssl::context::pem);
  ctx.load_verify_file(f.ca);
  ctx.set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
  // The CA may sign miners' certificates too: only an oracle's speaks Raft,
  // and an oracle's common name begins with "oracle".
  ctx.set_verify_callback([](bool preverified, ssl::verify_context& v) {
    if (!preverified)
      return false;
    auto* store = v.native_handle();
    if (X509_STORE_CTX_get_error_depth(store) != 0)
      return true;
    char cn[256] = {};
    auto* cert = X509_STORE_CTX_get_current_cert(store);
    if (!cert
        || X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn,
                                     sizeof cn) < 0)
      return false;
    return std::string_view{cn}.rfind("oracle", 0) == 0;
  });
}

tcp::endpoint endpoint_of(const std::string& address) {
  auto hp = split_host_port(address);
  if (!hp)
    throw std::runtime_error("'" + address + "' is not host:port");
  error_code ec;
  auto ip = net::ip::make_address(hp->first, ec);
  if (ec)
    throw std::runtime_error("'" + hp->first + "' is not an IP address");
  return {ip, hp->second};
}

} // namespace

struct raft_tls_tunnel::impl {
  net::io_context io{1};
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  ssl::context server{ssl::context::tls_server};
  ssl::context client{ssl::context::tls_client};
  tcp::acceptor inbound{io};
  tcp::endpoint local;
  std::mutex mu;
  std::map<std::string, std::pair<std::string, std::shared_ptr<tcp::acceptor>>> outbound;
  std::atomic<uint64_t> failed{0};
  std::atomic<uint64_t> accept_errors{0};
  /// A connection's TCP connect and TLS handshake must be done by then.
  static constexpr std::chrono::seconds handshake_limit{5};
  std::thread thread;

  void handshake_failed(const std::string& with, const error_code& ec) {
    auto n = ++failed;
    if (n == 1 || n % 100 == 0)
      log("raft")->warn("TLS between oracles: a handshake {} failed: {} ({} so far; "
                        "do both ends use certificates of the same CA?)",
                        with, ec.message(), n);
  }

  /// A handshake not done within the limit is given up: its socket is
  /// closed (a peer that connects and says nothing holds nothing for long).
  std::shared_ptr<net::steady_timer> handshake_deadline(std::shared_ptr<tls_stream> tls) {
    auto t = std::make_shared<net::steady_timer>(io, handshake_limit);
    t->async_wait([tls](error_code ec) {
      if (ec)
        return;  // cancelled: the handshake ended first
      error_code ignored;
      tls->lowest_layer().close(ignored);
    });
    return t;
  }

  /// After an accept error other than shutting down (out of descriptors,
  /// say), the acceptor is armed again 100 ms later, not at once: an error
  /// that persists would otherwise spin the tunnel's thread.
  void accept_error(const error_code& ec, std::function<void()> again) {
    auto n = ++accept_errors;
    if (n == 1 || n % 100 == 0)
      log("raft")->warn("TLS between oracles: accepting a connection failed: {} ({} so far)",
                        ec.message(), n);
    auto t = std::make_shared<net::steady_timer>(io, std::chrono::milliseconds(100));
    t->async_wait([t, again = std::move(again)](error_code) { again(); });
  }

  void accept_inbound() {
    inbound.async_accept([this](error_code ec, tcp::socket s) {
      if (ec == net::error::operation_aborted || !inbound.is_open())
        return;
      if (ec)
        return accept_error(ec, [this] { accept_inbound(); });
      {
        auto tls = std::make_shared<tls_stream>(std::move(s), server);
        auto deadline = handshake_deadline(tls);
        tls->async_handshake(ssl::stream_base::server, [this, tls, deadline](error_code ec) {
          deadline->cancel();
          if (ec)
            return handshake_failed("with a peer that connected", ec);
          auto plain = std::make_shared<tcp::socket>(io);
          if (local.port() == 0) {  // raft is not listening yet
            error_code ignored;
            tls->lowest_layer().close(ignored);
            return;
          }
          plain->async_connect(local, [tls, plain](error_code ec) {
            if (ec) {
              error_code ignored;
              tls->lowest_layer().close(ignored);
              return;
            }
            join(tls, plain);
          });
        });
      }
      accept_inbound();
    });
  }

  void accept_outbound(std::shared_ptr<tcp::acceptor> acc, tcp::endpoint peer,
                       std::string address) {
    acc->async_accept([this, acc, peer, address](error_code ec, tcp::socket s) {
      if (ec == net::error::operation_aborted || !acc->is_open())
        return;
      if (ec)
        return accept_error(ec, [this, acc, peer, address] {
          accept_outbound(acc, peer, address);
        });
      {
        auto plain = std::make_shared<tcp::socket>(std::move(s));
        auto tls = std::make_shared<tls_stream>(io, client);
        auto deadline = handshake_deadline(tls);
        tls->lowest_layer().async_connect(peer, [this, plain, tls, address,
                                                 deadline](error_code ec) {
          if (ec) {
            deadline->cancel();
            error_code ignored;
            plain->close(ignored);
            return;
          }
          tls->async_handshake(ssl::stream_base::client,
                               [this, plain, tls, address, deadline](error_code ec) {
                                 deadline->cancel();
                                 if (ec) {
                                   handshake_failed("with " + address, ec);
                                   error_code ignored;
                                   plain->close(ignored);
                                   tls->lowest_layer().close(ignored);
                                   return;
                                 }
                                 join(tls, plain);
                               });
        });
      }
      accept_outbound(acc, peer, address);
    });
  }
};

raft_tls_tunnel::raft_tls_tunnel(const files& f, const std::string& public_address,
                                 const std::string& local)
    : p_(std::make_unique<impl>()) {
  try {
    configure(p_->server, f);
    configure(p_->client, f);
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string{"TLS between oracles: "} + e.what()
                             + " (" + f.certificate + ", " + f.key + ", " + f.ca + ")");
  }
  if (!local.empty())
    p_->local = endpoint_of(local);
  auto ep = endpoint_of(public_address);
  error_code ec;
  p_->inbound.open(ep.protocol(), ec);
  if (!ec)
    p_->inbound.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec)
    p_->inbound.bind(ep, ec);
  if (!ec)
    p_->inbound.listen(net::socket_base::max_listen_connections, ec);
  if (ec)
    throw std::runtime_error("cannot listen on " + public_address + " (Raft over TLS): "
                             + ec.message());
  p_->work.emplace(net::make_work_guard(p_->io));
  p_->accept_inbound();
  p_->thread = std::thread{[this] { p_->io.run(); }};
}

raft_tls_tunnel::~raft_tls_tunnel() {
  net::post(p_->io, [p = p_.get()] {
    error_code ec;
    p->inbound.close(ec);
    std::lock_guard<std::mutex> g{p->mu};
    for (auto& [a, x] : p->outbound)
      x.second->close(ec);
  });
  p_->work.reset();
  p_->io.stop();
  if (p_->thread.joinable())
    p_->thread.join();
}

void raft_tls_tunnel::set_local(const std::string& local) {
  auto ep = endpoint_of(local);
  // On the tunnel's thread, which reads it.
  net::post(p_->io, [p = p_.get(), ep] { p->local = ep; });
}

std::string raft_tls_tunnel::local_for(const std::string& address) {
  std::lock_guard<std::mutex> g{p_->mu};
  if (auto i = p_->outbound.find(address); i != p_->outbound.end())
    return i->second.first;
  try {
    auto peer = endpoint_of(address);
    auto acc = std::make_shared<tcp::acceptor>(p_->io);
    tcp::endpoint ep{net::ip::make_address("127.0.0.1"), 0};
    acc->open(ep.protocol());
    acc->bind(ep);
    acc->listen();
    auto at = "127.0.0.1:" + std::to_string(acc->local_endpoint().port());
    p_->outbound[address] = {at, acc};
    net::post(p_->io, [p = p_.get(), acc, peer, address] {
      p->accept_outbound(acc, peer, address);
    });
    return at;
  } catch (const std::exception& e) {
    log("raft")->error("TLS between oracles: no way to {}: {}", address, e.what());
    return {};
  }
}

uint64_t raft_tls_tunnel::failed_handshakes() const { return p_->failed.load(); }

} // namespace nodepool
