#include "http/server.hpp"

#include <atomic>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>

#include "log.hpp"

namespace nodepool::http {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace websocket = boost::beast::websocket;
namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;

const std::string& request::header(const std::string& lower_name) const {
  static const std::string none;
  auto i = headers.find(lower_name);
  return i == headers.end() ? none : i->second;
}

bool url_decode(const std::string& in, std::string& out) {
  out.clear();
  out.reserve(in.size());
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out += in[i];
      continue;
    }
    if (i + 2 >= in.size())
      return false;
    int a = hex(in[i + 1]), b = hex(in[i + 2]);
    if (a < 0 || b < 0)
      return false;
    out += static_cast<char>(a * 16 + b);
    i += 2;
  }
  return true;
}

namespace {

/// Answers written to a stream or a WebSocket and not yet taken by its
/// client, at most: a client that sends and does not read is disconnected
/// past this, instead of holding the oracle's memory.
constexpr size_t max_pending_bytes = 4 << 20;

/// What every connection shares: the handler and the limits. Held by
/// shared_ptr, with the io_context, so a reply that comes after stop()
/// finds them still there (and does nothing).
/// What stop() can close: a connection or a WebSocket.
struct closable {
  virtual ~closable() = default;
  virtual void post_close() = 0;
};

struct shared {
  handler h;
  server_config cfg;
  std::atomic<bool> stopped{false};
  /// Guards `stopped` against posts: once it is set, nothing new is posted
  /// to the io_context, so its threads run out of work and end.
  std::mutex mu;
  std::vector<std::weak_ptr<closable>> open;

  /// Notes `c` for stop() to close; false if the server is stopping
  /// already (stop() will not see it: the caller closes it).
  bool track(std::weak_ptr<closable> c) {
    std::lock_guard<std::mutex> g{mu};
    if (stopped)
      return false;
    if (open.size() >= 64 && open.size() == open.capacity())
      open.erase(std::remove_if(open.begin(), open.end(),
                                [](auto& w) { return w.expired(); }),
                 open.end());
    open.push_back(std::move(c));
    return true;
  }

  /// Runs `post` unless the server is stopping (then drops it).
  template <class F>
  void guarded(F&& post) {
    std::lock_guard<std::mutex> g{mu};
    if (!stopped)
      post();
  }
};

/// One of the server's max_connections places: taken at accept, given back
/// when its connection (or the WebSocket it became) closes, or at the
/// latest when it goes.
class conn_slot {
 public:
  explicit conn_slot(std::shared_ptr<server_counters> c) : c_(std::move(c)) {}
  conn_slot(conn_slot&& o) noexcept : c_(std::move(o.c_)) {}
  conn_slot& operator=(conn_slot&&) = delete;
  ~conn_slot() { release(); }
  void release() {
    if (c_)
      c_->open.fetch_sub(1);
    c_.reset();
  }

 private:
  std::shared_ptr<server_counters> c_;
};

/// Bytes read at most, while a handler works, to see the client leave.
constexpr size_t watch_bytes = 4096;

} // namespace

bool split_target(const std::string& target, request& r) {
  auto q = target.find('?');
  if (!url_decode(target.substr(0, q), r.path))
    return false;
  if (q == std::string::npos)
    return true;
  auto rest = target.substr(q + 1);
  size_t at = 0;
  while (at <= rest.size()) {
    auto amp = rest.find('&', at);
    auto part = rest.substr(at, amp == std::string::npos ? std::string::npos
                                                         : amp - at);
    if (!part.empty()) {
      auto eq = part.find('=');
      std::string k, v;
      for (auto& c : part)
        if (c == '+')
          c = ' ';
      if (!url_decode(part.substr(0, eq), k)
          || !url_decode(eq == std::string::npos ? "" : part.substr(eq + 1), v))
        return false;
      r.query[k] = v;
    }
    if (amp == std::string::npos)
      break;
    at = amp + 1;
  }
  return true;
}

namespace {

/// Our request from Beast's; false if the target's encoding is malformed.
bool from_beast(bhttp::request<bhttp::string_body>& msg, request& req) {
  req.method = std::string{msg.method_string()};
  req.target = std::string{msg.target()};
  for (auto& f : msg) {
    std::string name{f.name_string()};
    for (auto& c : name)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    req.headers[name] = std::string{f.value()};
  }
  req.body = msg.body();
  req.websocket = websocket::is_upgrade(msg);
  return split_target(req.target, req);
}

template <class Stream>
class ws_session;

/// One HTTP connection: reads a request, hands it to the handler, writes
/// what the handler answers, and reads the next one (keep-alive).
template <class Stream>
class connection : public closable,
                   public std::enable_shared_from_this<connection<Stream>> {
 public:
  void post_close() override {
    net::post(stream_.get_executor(),
              [self = this->shared_from_this()] { self->close(); });
  }

  connection(std::shared_ptr<net::io_context> io, std::shared_ptr<shared> sh,
             Stream stream, conn_slot slot)
    : io_(std::move(io)), sh_(std::move(sh)), stream_(std::move(stream)),
      slot_(std::move(slot)), idle_(stream_.get_executor()) {}

  void run() {
    if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
      read();
    } else {
      beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(30));
      stream_.async_handshake(
        ssl::stream_base::server,
        [self = this->shared_from_this()](beast::error_code ec) {
          if (!ec)
            self->read();
        });
    }
  }

  // --- what a reply does, always on the connection's strand

  void post(std::function<void(connection&)> f) {
    sh_->guarded([&] {
      net::post(stream_.get_executor(),
                [self = this->shared_from_this(), f = std::move(f)] { f(*self); });
    });
  }

  void send(response r) {
    if (answered_ || closed_)
      return;
    answered_ = true;
    auto res = std::make_shared<bhttp::response<bhttp::string_body>>();
    res->version(11);
    res->result(static_cast<unsigned>(r.status));
    res->set(bhttp::field::server, "nodepool");
    if (!r.content_type.empty())
      res->set(bhttp::field::content_type, r.content_type);
    for (auto& [k, v] : r.headers)
      res->set(k, v);
    res->keep_alive(keep_alive_);
    res->body() = std::move(r.body);
    res->prepare_payload();
    beast::get_lowest_layer(stream_).expires_after(sh_->cfg.idle_timeout);
    bhttp::async_write(stream_, *res,
                       [self = this->shared_from_this(), res](
                         beast::error_code ec, size_t) {
                         self->after_response(ec, res->need_eof());
                       });
  }

  void begin_stream(response head) {
    if (answered_ || closed_)
      return;
    answered_ = true;
    streaming_ = true;
    auto res = std::make_shared<bhttp::response<bhttp::empty_body>>();
    res->version(11);
    res->result(static_cast<unsigned>(head.status));
    res->set(bhttp::field::server, "nodepool");
    res->set(bhttp::field::content_type, head.content_type);
    res->set(bhttp::field::cache_control, "no-cache");
    for (auto& [k, v] : head.headers)
      res->set(k, v);
    res->keep_alive(keep_alive_);
    res->chunked(true);
    auto sr = std::make_shared<bhttp::response_serializer<bhttp::empty_body>>(*res);
    writing_ = true;
    beast::get_lowest_layer(stream_).expires_after(sh_->cfg.idle_timeout);
    bhttp::async_write_header(
      stream_, *sr,
      [self = this->shared_from_this(), res, sr](beast::error_code ec, size_t) {
        self->writing_ = false;
        if (ec)
          return self->close();
        self->drain();
      });
  }

  void chunk(std::string data) {
    if (!streaming_ || closed_ || data.empty())
      return;
    if (pending_bytes_ + data.size() > max_pending_bytes) {
      // A client that does not read its stream is not kept waiting for
      // (nor is its backlog kept in memory): it is closed.
      return close();
    }
    pending_bytes_ += data.size();
    pending_.push_back(std::move(data));
    drain();
  }
  bool gone() const { return gone_; }

  void end() {
    if (!streaming_ || closed_)
      return;
    ending_ = true;
    drain();
  }

  void accept_websocket(std::function<void(std::string)> on_message);
  std::shared_ptr<ws_session<Stream>> websocket() const { return ws_; }

 private:
  void read() {
    parser_.emplace();
    parser_->body_limit(sh_->cfg.max_body);
    parser_->header_limit(16 * 1024);
    answered_ = false;
    streaming_ = false;
    ending_ = false;
    beast::get_lowest_layer(stream_).expires_after(sh_->cfg.idle_timeout);
    bhttp::async_read(stream_, buffer_, *parser_,
                      [self = this->shared_from_this()](beast::error_code ec,
                                                        size_t) {
                        self->on_read(ec);
                      });
  }

  void on_read(beast::error_code ec) {
    if (ec == bhttp::error::end_of_stream || ec == net::error::eof
        || ec == beast::error::timeout || ec == net::error::operation_aborted
        || sh_->stopped)
      return close();
    if (ec) {
      // The request could not be read: say why once, then close.
      keep_alive_ = false;
      response r;
      if (ec == bhttp::error::body_limit) {
        r.status = 413;
        r.body = R"({"error":{"code":"body_too_large","message":"the body is over )"
                 + std::to_string(sh_->cfg.max_body) + R"( bytes"}})";
      } else if (ec == bhttp::error::header_limit) {
        r.status = 431;
        r.body = R"({"error":{"code":"headers_too_large","message":"the headers are over 16384 bytes"}})";
      } else {
        r.status = 400;
        r.body = R"({"error":{"code":"bad_request","message":"malformed HTTP request"}})";
      }
      send(std::move(r));
      return;
    }
    auto msg = parser_->release();
    keep_alive_ = msg.keep_alive();
    request req;
    bool target_ok = from_beast(msg, req);
    beast::error_code pe;
    auto ep = beast::get_lowest_layer(stream_).socket().remote_endpoint(pe);
    if (!pe)
      req.remote = ep.address().to_string();
    req.websocket = websocket::is_upgrade(msg);
    if (req.websocket)
      upgrade_ = std::move(msg);
    // Waiting for the handler: no read timeout (a completion may take as
    // long as its own timeout says).
    beast::get_lowest_layer(stream_).expires_never();
    if (!req.websocket && buffer_.size() == 0)
      watch();
    if (!target_ok) {
      keep_alive_ = false;
      response r;
      r.status = 400;
      r.body = R"({"error":{"code":"bad_request","message":"malformed URL encoding in the target"}})";
      send(std::move(r));
      return;
    }
    auto rep = make_reply();
    try {
      sh_->h(std::move(req), rep);
    } catch (const std::exception& e) {
      // A handler that throws still answers (once: a second send is
      // ignored), and the connection goes on.
      log("http")->error("handler failed: {}", e.what());
      response r;
      r.status = 500;
      r.body = R"({"error":{"code":"internal","message":"the request failed on the server"}})";
      rep->send(std::move(r));
    }
  }

  std::shared_ptr<reply> make_reply();

  /// While the handler works the connection reads on, so that a client
  /// who leaves (end of stream, a reset, TLS's close) is seen at once: the
  /// connection closes, whoever holds the reply sees closed(), and its
  /// place is free. Bytes that come instead (a pipelined request) stay in
  /// the buffer for the next read. Not when bytes wait there already: the
  /// client may be waiting for this answer before it sends any more.
  void watch() {
    watching_ = true;
    stream_.async_read_some(
      buffer_.prepare(watch_bytes),
      [self = this->shared_from_this()](beast::error_code ec, size_t n) {
        self->on_watch(ec, n);
      });
  }

  void on_watch(beast::error_code ec, size_t n) {
    watching_ = false;
    if (ec) {
      if (!answered_ && !closed_)
        ++sh_->cfg.counters->abandoned;
      return close();
    }
    buffer_.commit(n);
    if (read_next_) {
      read_next_ = false;
      idle_.cancel();
      read();
    }
  }

  void drain() {
    if (writing_ || closed_)
      return;
    if (!pending_.empty()) {
      auto data = std::make_shared<std::string>(std::move(pending_.front()));
      pending_.pop_front();
      pending_bytes_ -= data->size();
      writing_ = true;
      // Each write of a long stream has the idle timeout of its own.
      beast::get_lowest_layer(stream_).expires_after(sh_->cfg.idle_timeout);
      net::async_write(stream_, bhttp::make_chunk(net::buffer(*data)),
                       [self = this->shared_from_this(), data](
                         beast::error_code ec, size_t) {
                         self->writing_ = false;
                         if (ec)
                           return self->close();
                         self->drain();
                       });
      return;
    }
    if (ending_) {
      ending_ = false;
      streaming_ = false;
      writing_ = true;
      net::async_write(stream_, bhttp::make_chunk_last(),
                       [self = this->shared_from_this()](beast::error_code ec,
                                                         size_t) {
                         self->writing_ = false;
                         self->after_response(ec, !self->keep_alive_);
                       });
    }
  }

  void after_response(beast::error_code ec, bool eof) {
    if (ec || eof || sh_->stopped)
      return close();
    if (!watching_)
      return read();
    // The watch's read goes on as the next request's first; it began with
    // no timeout, so the idle one is a timer of its own.
    read_next_ = true;
    idle_.expires_after(sh_->cfg.idle_timeout);
    idle_.async_wait([self = this->shared_from_this()](beast::error_code ec) {
      if (!ec && self->read_next_)
        self->close();
    });
  }

 public:
  void close() {
    if (closed_)
      return;
    closed_ = true;
    gone_ = true;
    read_next_ = false;
    idle_.cancel();
    beast::error_code ec;
    beast::get_lowest_layer(stream_).socket().shutdown(tcp::socket::shutdown_both, ec);
    beast::get_lowest_layer(stream_).close();
    slot_.release();
  }

 private:
  std::shared_ptr<net::io_context> io_;  // outlives the stream
  std::shared_ptr<shared> sh_;
  Stream stream_;
  conn_slot slot_;
  net::steady_timer idle_;  // see after_response
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  bhttp::request<bhttp::string_body> upgrade_;
  bool keep_alive_ = true;
  bool answered_ = false;
  bool streaming_ = false;
  bool writing_ = false;
  bool ending_ = false;
  bool closed_ = false;
  bool watching_ = false;   // see watch()
  bool read_next_ = false;  // answered while watching: read on after it
  std::atomic<bool> gone_{false};  // closed_, readable from any thread
  size_t pending_bytes_ = 0;
  std::deque<std::string> pending_;
  std::shared_ptr<ws_session<Stream>> ws_;
  friend class ws_session<Stream>;
};

/// A WebSocket that was an HTTP connection: every text message goes to the
/// handler's callback; answers are queued and written one at a time.
template <class Stream>
class ws_session : public closable,
                   public std::enable_shared_from_this<ws_session<Stream>> {
 public:
  void post_close() override {
    net::post(ws_.get_executor(), [self = this->shared_from_this()] {
      self->closed_ = true;
      beast::get_lowest_layer(self->ws_).close();
      self->slot_.release();
    });
  }

  ws_session(std::shared_ptr<net::io_context> io, std::shared_ptr<shared> sh,
             Stream&& s, conn_slot slot)
    : io_(std::move(io)), sh_(std::move(sh)), ws_(std::move(s)),
      slot_(std::move(slot)) {}

  void start(bhttp::request<bhttp::string_body> req,
             std::function<void(std::string)> on_message) {
    on_message_ = std::move(on_message);
    ws_.set_option(
      websocket::stream_base::timeout::suggested(beast::role_type::server));
    ws_.read_message_max(sh_->cfg.max_body);
    ws_.async_accept(req, [self = this->shared_from_this()](beast::error_code ec) {
      if (ec) {
        // Refused (Beast answered 400) or the client left: nothing will
        // read, so let go of what the handler gave, which holds the reply.
        self->let_go();
        return;
      }
      self->open_ = true;
      self->read();
      self->drain();
    });
  }

  void post(std::function<void(ws_session&)> f) {
    sh_->guarded([&] {
      net::post(ws_.get_executor(),
                [self = this->shared_from_this(), f = std::move(f)] { f(*self); });
    });
  }

  void send(std::string text) {
    if (closed_)
      return;
    if (pending_bytes_ + text.size() > max_pending_bytes) {
      // A client that sends and does not read: its answers are not kept
      // in memory without end (as a stream's are not); it is closed.
      let_go();
      return;
    }
    pending_bytes_ += text.size();
    out_.push_back(std::move(text));
    drain();
  }

  void end() {
    if (closed_)
      return;
    closing_ = true;
    drain();
  }

 private:
  /// Closed for good: what the handler gave for messages (it may hold the
  /// reply, and so this session) and the answers not written go.
  void let_go() {
    closed_ = true;
    on_message_ = nullptr;
    out_.clear();
    pending_bytes_ = 0;
    beast::get_lowest_layer(ws_).close();
    slot_.release();
  }

  void read() {
    ws_.async_read(in_, [self = this->shared_from_this()](beast::error_code ec,
                                                           size_t) {
      if (ec) {
        self->let_go();
        return;
      }
      auto text = beast::buffers_to_string(self->in_.data());
      self->in_.consume(self->in_.size());
      if (self->on_message_)
        self->on_message_(std::move(text));
      self->read();
    });
  }

  void drain() {
    if (!open_ || writing_ || closed_)
      return;
    if (!out_.empty()) {
      auto data = std::make_shared<std::string>(std::move(out_.front()));
      out_.pop_front();
      pending_bytes_ -= data->size();
      writing_ = true;
      ws_.text(true);
      ws_.async_write(net::buffer(*data),
                      [self = this->shared_from_this(), data](
                        beast::error_code ec, size_t) {
                        self->writing_ = false;
                        if (ec)
                          return self->let_go();
                        self->drain();
                      });
      return;
    }
    if (closing_) {
      closed_ = true;
      ws_.async_close(websocket::close_code::normal,
                      [self = this->shared_from_this()](beast::error_code) {});
    }
  }

  std::shared_ptr<net::io_context> io_;
  std::shared_ptr<shared> sh_;
  websocket::stream<Stream> ws_;
  conn_slot slot_;
  beast::flat_buffer in_;
  std::function<void(std::string)> on_message_;
  std::deque<std::string> out_;
  size_t pending_bytes_ = 0;  // in out_
  bool open_ = false;
  bool writing_ = false;
  bool closing_ = false;
  bool closed_ = false;
};

template <class Stream>
void connection<Stream>::accept_websocket(
  std::function<void(std::string)> on_message) {
  if (answered_ || closed_ || !upgrade_.target().size())
    return;
  answered_ = true;
  ws_ = std::make_shared<ws_session<Stream>>(io_, sh_, std::move(stream_),
                                             std::move(slot_));
  closed_ = true;  // the stream belongs to the WebSocket now
  if (!sh_->track(ws_))
    return ws_->post_close();
  ws_->start(std::move(upgrade_), std::move(on_message));
}

/// The reply object a handler gets: forwards to the connection's strand.
template <class Stream>
class reply_impl : public reply {
 public:
  explicit reply_impl(std::shared_ptr<connection<Stream>> c) : c_(std::move(c)) {}
  void send(response r) override {
    c_->post([r = std::move(r)](connection<Stream>& c) mutable {
      c.send(std::move(r));
    });
  }
  void begin_stream(response head) override {
    c_->post([h = std::move(head)](connection<Stream>& c) mutable {
      c.begin_stream(std::move(h));
    });
  }
  void chunk(std::string data) override {
    if (auto ws = ws_session())
      return ws->post([d = std::move(data)](ws_session_t& w) mutable {
        w.send(std::move(d));
      });
    c_->post([d = std::move(data)](connection<Stream>& c) mutable {
      c.chunk(std::move(d));
    });
  }
  void end() override {
    if (auto ws = ws_session())
      return ws->post([](ws_session_t& w) { w.end(); });
    c_->post([](connection<Stream>& c) { c.end(); });
  }
  bool closed() const override { return c_->gone(); }
  void accept_websocket(std::function<void(std::string)> on_message) override {
    auto me = this;
    c_->post([me, f = std::move(on_message)](connection<Stream>& c) mutable {
      c.accept_websocket(std::move(f));
      std::lock_guard<std::mutex> g{me->mu_};
      me->ws_ = c.websocket();
    });
  }

 private:
  using ws_session_t = nodepool::http::ws_session<Stream>;
  std::shared_ptr<ws_session_t> ws_session() {
    std::lock_guard<std::mutex> g{mu_};
    return ws_;
  }
  std::shared_ptr<connection<Stream>> c_;
  std::mutex mu_;
  std::shared_ptr<ws_session_t> ws_;
};

template <class Stream>
std::shared_ptr<reply> connection<Stream>::make_reply() {
  return std::make_shared<reply_impl<Stream>>(this->shared_from_this());
}

} // namespace

std::string parse_request(const std::string& bytes, request& out, size_t max_body) {
  bhttp::request_parser<bhttp::string_body> parser;
  parser.body_limit(max_body);
  parser.header_limit(16 * 1024);
  parser.eager(true);
  beast::error_code ec;
  auto used = parser.put(net::buffer(bytes), ec);
  (void)used;
  if (!ec && !parser.is_done())
    parser.put_eof(ec);
  if (ec)
    return ec.message();
  if (!parser.is_done())
    return "incomplete request";
  auto msg = parser.release();
  if (!from_beast(msg, out))
    return "malformed URL encoding in the target";
  return "";
}

struct server::impl {
  std::shared_ptr<net::io_context> io = std::make_shared<net::io_context>();
  std::shared_ptr<shared> sh = std::make_shared<shared>();
  std::optional<ssl::context> tls;
  std::optional<tcp::acceptor> acceptor;
  std::vector<std::thread> threads;
  uint16_t port = 0;
  std::chrono::steady_clock::time_point last_turned_away_log{};

  void accept() {
    acceptor->async_accept(net::make_strand(*io), [this](beast::error_code ec,
                                                         tcp::socket s) {
      if (sh->stopped || ec == net::error::operation_aborted)
        return;
      if (ec)
        return accept_failed(ec);
      auto& counters = *sh->cfg.counters;
      conn_slot slot{sh->cfg.counters};
      if (static_cast<uint64_t>(counters.open.fetch_add(1)) >= sh->cfg.max_connections) {
        slot.release();
        turn_away(std::move(s));
      } else {
        beast::error_code ignored;
        s.set_option(tcp::no_delay(true), ignored);
        if (tls)
          start(std::make_shared<connection<beast::ssl_stream<beast::tcp_stream>>>(
            io, sh, beast::ssl_stream<beast::tcp_stream>(std::move(s), *tls),
            std::move(slot)));
        else
          start(std::make_shared<connection<beast::tcp_stream>>(
            io, sh, beast::tcp_stream(std::move(s)), std::move(slot)));
      }
      accept();
    });
  }

  template <class Connection>
  void start(std::shared_ptr<Connection> c) {
    if (sh->track(c))
      c->run();
    else
      c->close();  // stop() came meanwhile and will not see it
  }

  /// A connection past max_connections: over plain HTTP it is told so
  /// (503, before it says anything) and closed; under TLS, closed at once
  /// (a handshake is the dearest part of a connection). Counted and logged
  /// (at most once a second).
  void turn_away(tcp::socket s) {
    auto n = ++sh->cfg.counters->over_capacity;
    auto now = std::chrono::steady_clock::now();
    if (now - last_turned_away_log >= std::chrono::seconds(1)) {
      last_turned_away_log = now;
      log("http")->warn("{} HTTP connections are open, the most allowed: "
                        "turning new ones away ({} so far)",
                        sh->cfg.max_connections, n);
    }
    beast::error_code ec;
    if (!tls) {
      static const std::string busy = [] {
        std::string body =
          R"({"error":{"code":"too_many_connections","message":"the server )"
          R"(has all the connections it takes; try again shortly"}})";
        return "HTTP/1.1 503 Service Unavailable\r\nServer: nodepool\r\n"
               "Content-Type: application/json\r\nRetry-After: 1\r\n"
               "Connection: close\r\nContent-Length: "
               + std::to_string(body.size()) + "\r\n\r\n" + body;
      }();
      // A fresh socket's send buffer takes it whole; what the client sent
      // meanwhile is read and dropped so that the close does not reset it.
      s.non_blocking(true, ec);
      s.write_some(net::buffer(busy), ec);
      s.shutdown(tcp::socket::shutdown_send, ec);
      char sink[1024];
      while (s.read_some(net::buffer(sink), ec) > 0) {
      }
    }
    s.close(ec);
  }

  /// An accept that failed (out of descriptors, say) is counted and tried
  /// again 100 ms later, not at once: the connection is still waiting in
  /// the listen queue, so an error that persists would otherwise spin an
  /// HTTP thread. Connections waiting meanwhile are accepted once it passes.
  void accept_failed(const beast::error_code& ec) {
    auto n = ++sh->cfg.counters->accept_errors;
    if (n == 1 || n % 100 == 0)
      log("http")->warn("accepting a connection failed: {} ({} so far); "
                        "trying again in 100 ms", ec.message(), n);
    auto t = std::make_shared<net::steady_timer>(*io, std::chrono::milliseconds(100));
    t->async_wait([this, t](beast::error_code) {
      if (!sh->stopped)
        accept();
    });
  }
};

server::server(server_config cfg, handler h) : impl_(std::make_shared<impl>()) {
  impl_->sh->cfg = std::move(cfg);
  if (!impl_->sh->cfg.counters)
    impl_->sh->cfg.counters = std::make_shared<server_counters>();
  impl_->sh->h = std::move(h);
}

server::~server() { stop(); }

std::string server::start() {
  auto& cfg = impl_->sh->cfg;
  try {
    if (!cfg.tls_certificate.empty()) {
      impl_->tls.emplace(ssl::context::tls_server);
      impl_->tls->set_options(ssl::context::default_workarounds
                              | ssl::context::no_sslv2 | ssl::context::no_sslv3
                              | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
      impl_->tls->use_certificate_chain_file(cfg.tls_certificate);
      impl_->tls->use_private_key_file(cfg.tls_key, ssl::context::pem);
    }
    beast::error_code ec;
    auto addr = net::ip::make_address(cfg.host, ec);
    if (ec) {
      // A host name ("localhost", a name of this host): its first address.
      tcp::resolver resolver{*impl_->io};
      auto found = resolver.resolve(tcp::v4(), cfg.host, std::to_string(cfg.port), ec);
      if (ec || found.empty())  // a name with IPv6 addresses only
        found = resolver.resolve(cfg.host, std::to_string(cfg.port), ec);
      if (ec || found.empty())
        return "'" + cfg.host + "' is neither an IP address nor a name this "
               "host resolves" + (ec ? ": " + ec.message() : std::string{});
      addr = found.begin()->endpoint().address();
    }
    tcp::endpoint ep{addr, cfg.port};
    impl_->acceptor.emplace(*impl_->io);
    impl_->acceptor->open(ep.protocol());
    impl_->acceptor->set_option(net::socket_base::reuse_address(true));
    impl_->acceptor->bind(ep, ec);
    if (ec)
      return "cannot listen on " + cfg.host + ":" + std::to_string(cfg.port)
             + ": " + ec.message();
    impl_->acceptor->listen(net::socket_base::max_listen_connections);
    impl_->port = impl_->acceptor->local_endpoint().port();
  } catch (const std::exception& e) {
    return e.what();
  }
  impl_->accept();
  for (int i = 0; i < std::max(1, cfg.threads); ++i)
    impl_->threads.emplace_back([io = impl_->io] {
      for (;;) {
        try {
          io->run();
          return;
        } catch (const std::exception& e) {
          log("http")->error("http thread: {}", e.what());
        }
      }
    });
  return "";
}

uint16_t server::port() const { return impl_->port; }

bool server::tls() const { return impl_->tls.has_value(); }

void server::stop() {
  if (!impl_)
    return;
  auto& sh = *impl_->sh;
  std::vector<std::weak_ptr<closable>> open;
  {
    std::lock_guard<std::mutex> g{sh.mu};
    if (sh.stopped)
      return;
    // Close the acceptor and every connection; then the threads run out of
    // work and return (no reply posts anything any more).
    net::post(*impl_->io, [i = impl_] {
      beast::error_code ec;
      if (i->acceptor)
        i->acceptor->close(ec);
    });
    open.swap(sh.open);
    for (auto& w : open)
      if (auto c = w.lock())
        c->post_close();
    sh.stopped = true;
  }
  // A stream whose close did not end its work (should not happen) must
  // not hold the caller: after 5 s, stop the io_context outright.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!impl_->io->stopped() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  impl_->io->stop();
  for (auto& t : impl_->threads)
    if (t.joinable())
      t.join();
  impl_->threads.clear();
}

} // namespace nodepool::http
