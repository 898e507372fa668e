// What operators read: the Prometheus exposition writer and histograms,
// log lines (key=value and JSON), the log limiter, and the event feed.
#include <gtest/gtest.h>

#include <sstream>

#include <nlohmann/json.hpp>
#include <spdlog/sinks/ostream_sink.h>

#include "event_view.hpp"
#include "http/event_feed.hpp"
#include "log.hpp"
#include "metrics.hpp"

using namespace nodepool;
using nlohmann::json;

namespace {

TEST(histogram, a_value_on_a_bound_counts_in_that_bucket) {
  histogram h{{1, 5, 10}};
  for (double v : {0.5, 1.0, 1.01, 5.0, 9.0, 10.0, 11.0, 1e9})
    h.add(v);
  EXPECT_EQ(h.counts(), (std::vector<uint64_t>{2, 2, 2, 2}));
  EXPECT_EQ(h.count(), 8u);
  EXPECT_DOUBLE_EQ(h.sum(), 0.5 + 1 + 1.01 + 5 + 9 + 10 + 11 + 1e9);
}

TEST(histogram, travels_as_json_and_refuses_a_bad_one) {
  auto h = histogram::exponential(1, 2, 4);
  EXPECT_EQ(h.bounds(), (std::vector<double>{1, 2, 4, 8}));
  h.add(3);
  h.add(100);
  histogram back;
  ASSERT_TRUE(back.from_json(h.to_json()));
  EXPECT_EQ(back.counts(), h.counts());
  EXPECT_EQ(back.count(), 2u);
  histogram bad;
  EXPECT_FALSE(bad.from_json(json{{"bounds", {1, 2}}, {"counts", {1}}}));
  EXPECT_FALSE(bad.from_json(json{{"bounds", "x"}, {"counts", {1}}}));
  EXPECT_FALSE(bad.from_json(json::array()));
  EXPECT_EQ(bad.count(), 0u);
}

TEST(exposition, writes_families_escapes_labels_and_numbers) {
  exposition out;
  out.family("x_total", "counter", "Help with a \\ and a\nnewline.");
  out.sample("x_total", {{"code", "a\"b\\c\nd"}}, 3);
  out.sample("x_total", {}, 0.25);
  EXPECT_EQ(out.str(),
            "# HELP x_total Help with a \\\\ and a\\nnewline.\n"
            "# TYPE x_total counter\n"
            "x_total{code=\"a\\\"b\\\\c\\nd\"} 3\n"
            "x_total 0.25\n");
  EXPECT_EQ(exposition::number(1.0 / 0.0), "+Inf");
  EXPECT_EQ(exposition::number(-1.0 / 0.0), "-Inf");
  EXPECT_EQ(exposition::number(0.0 / 0.0), "NaN");
  EXPECT_EQ(exposition::number(1e-3), "0.001");
  EXPECT_EQ(exposition::number(12345678), "12345678");
}

TEST(exposition, a_histogram_has_cumulative_buckets_sum_and_count) {
  histogram h{{1, 10}};
  h.add(0.5);
  h.add(5);
  h.add(50);
  exposition out;
  out.histogram("lat_seconds", "Latency.", h, 1e-3, {{"route", "r"}});
  EXPECT_EQ(out.str(),
            "# HELP lat_seconds Latency.\n"
            "# TYPE lat_seconds histogram\n"
            "lat_seconds_bucket{route=\"r\",le=\"0.001\"} 1\n"
            "lat_seconds_bucket{route=\"r\",le=\"0.01\"} 2\n"
            "lat_seconds_bucket{route=\"r\",le=\"+Inf\"} 3\n"
            "lat_seconds_sum{route=\"r\"} 0.0555\n"
            "lat_seconds_count{route=\"r\"} 3\n");
}

/// Formats what `f` logs on a logger of its own with nodepool's formatter.
template <class F>
std::string logged(log_format fmt, F&& f) {
  std::ostringstream os;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(os);
  auto l = std::make_shared<spdlog::logger>("unit", sink);
  l->set_formatter(make_line_formatter());
  set_log_format(fmt);
  f(*l);
  set_log_format(log_format::text);
  return os.str();
}

TEST(log_lines, text_is_key_value_with_quoted_values) {
  auto s = logged(log_format::text, [](spdlog::logger& l) {
    l.warn("a \"quoted\" word\nand a second line");
  });
  EXPECT_NE(s.find(" level=warn component=unit msg=\"a \\\"quoted\\\" word\\nand "
                   "a second line\"\n"),
            std::string::npos)
    << s;
  EXPECT_EQ(s.rfind("ts=", 0), 0u) << s;
  EXPECT_EQ(std::count(s.begin(), s.end(), '\n'), 1) << "one line per record";
}

TEST(log_lines, json_is_one_object_per_line) {
  auto s = logged(log_format::json, [](spdlog::logger& l) {
    l.error("bad \"input\"\n\x01");
  });
  ASSERT_EQ(std::count(s.begin(), s.end(), '\n'), 1) << s;
  auto j = json::parse(s);
  EXPECT_EQ(j["level"], "error");
  EXPECT_EQ(j["component"], "unit");
  EXPECT_EQ(j["msg"], "bad \"input\"\n\x01");
  EXPECT_EQ(j["ts"].get<std::string>().back(), 'Z');
}

TEST(log_lines, an_event_has_its_fields_as_keys) {
  pb::Event e;
  auto* x = e.mutable_node_state_changed();
  x->set_node_id("m-1");
  x->set_from(pb::TESTING);
  x->set_to(pb::QUARANTINED);
  x->set_reason("failed test 4: 1 of 4 right");
  auto ej = event_json(e);
  EXPECT_EQ(ej["type"], "node_state_changed");
  EXPECT_EQ(ej["from"], "testing");
  EXPECT_EQ(ej["to"], "quarantined");
  // log_event writes on the "events" logger; the same payload through ours:
  set_log_level("info");
  std::ostringstream os;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(os);
  auto events = log("events");
  events->sinks().push_back(sink);
  sink->set_formatter(make_line_formatter());
  set_log_format(log_format::json);
  log_event(ej["type"], event_fields(ej));
  set_log_format(log_format::text);
  log_event(ej["type"], event_fields(ej));
  events->sinks().pop_back();
  std::istringstream in{os.str()};
  std::string json_line, text_line;
  std::getline(in, json_line);
  std::getline(in, text_line);
  auto j = json::parse(json_line);
  EXPECT_EQ(j["component"], "events");
  EXPECT_EQ(j["event"], "node_state_changed");
  EXPECT_EQ(j["node_id"], "m-1");
  EXPECT_EQ(j["to"], "quarantined");
  EXPECT_EQ(j["reason"], "failed test 4: 1 of 4 right");
  EXPECT_FALSE(j.contains("msg"));
  EXPECT_NE(text_line.find(" event=node_state_changed "), std::string::npos)
    << text_line;
  EXPECT_NE(text_line.find(" reason=\"failed test 4: 1 of 4 right\""),
            std::string::npos)
    << text_line;
  set_log_level("warn");
}

TEST(log_limiter, writes_a_burst_then_counts_and_summarises_once) {
  log_limiter l{1000, 3};
  int written = 0;
  for (int i = 0; i < 10; ++i)
    written += l.allow("m1", 100 + i);
  EXPECT_EQ(written, 3);
  EXPECT_TRUE(l.allow("m2", 150)) << "another source has its own burst";
  EXPECT_TRUE(l.due(999).empty()) << "the interval has not ended";
  auto d = l.due(1100);
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].key, "m1");
  EXPECT_EQ(d[0].suppressed, 7u);
  EXPECT_FALSE(l.holding());
  EXPECT_EQ(l.keys(), 1u) << "m1's interval ended and is forgotten; m2's has not";
  EXPECT_TRUE(l.due(1200).empty()) << "m2 held nothing back";
  EXPECT_EQ(l.keys(), 0u);
  EXPECT_TRUE(l.allow("m1", 1200)) << "a new interval writes again";
}

TEST(log_limiter, many_sources_share_one_key_past_the_cap) {
  log_limiter l{1000, 1, 4};
  for (int i = 0; i < 100; ++i)
    l.allow("m" + std::to_string(i), 0);
  EXPECT_EQ(l.keys(), 5u);  // four sources and "*"
  auto d = l.due(1000);
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].key, "*");
  EXPECT_EQ(d[0].suppressed, 95u);
}

/// A reply that keeps what was streamed to it.
struct stream_sink : http::reply {
  bool begun = false, ended = false, gone = false;
  std::string data;
  void send(http::response) override { ADD_FAILURE() << "not a stream"; }
  void begin_stream(http::response h) override {
    begun = true;
    EXPECT_EQ(h.content_type, "text/event-stream");
  }
  void chunk(std::string d) override { data += d; }
  void end() override { ended = true; }
  void accept_websocket(std::function<void(std::string)>) override {}
  bool closed() const override { return gone; }
};

TEST(event_feed, numbers_keeps_the_last_and_pages_after_a_seq) {
  http::event_feed f{5};
  for (int i = 0; i < 8; ++i)
    f.publish({json{{"type", "t"}, {"i", i}}});
  EXPECT_EQ(f.published(), 8u);
  auto all = f.recent(0, 100);
  ASSERT_EQ(all.size(), 5u);
  EXPECT_EQ(all.front()["seq"], 4);
  EXPECT_EQ(all.back()["seq"], 8);
  auto later = f.recent(6, 100);
  ASSERT_EQ(later.size(), 2u);
  EXPECT_EQ(later[0]["seq"], 7);
  EXPECT_TRUE(f.recent(8, 100).empty());
  EXPECT_EQ(f.recent(0, 2).size(), 2u);
}

TEST(event_feed, is_watched_while_a_stream_is_open_or_a_minute_after_a_read) {
  http::event_feed f;
  int started = 0;
  f.on_watch([&] { ++started; });
  auto t = std::chrono::steady_clock::now();
  EXPECT_FALSE(f.watched(t)) << "nobody looked yet";
  f.recent(0, 10);
  EXPECT_EQ(started, 1) << "the first look starts the feed";
  f.recent(0, 10);
  EXPECT_EQ(started, 1) << "already watched";
  EXPECT_TRUE(f.watched(std::chrono::steady_clock::now()));
  EXPECT_FALSE(f.watched(std::chrono::steady_clock::now() + std::chrono::seconds(61)));
  auto s = std::make_shared<stream_sink>();
  ASSERT_TRUE(f.follow(s, 0));
  EXPECT_TRUE(f.watched(std::chrono::steady_clock::now() + std::chrono::hours(1)));
  s->gone = true;
  f.heartbeat();  // drops it
  EXPECT_FALSE(f.watched(std::chrono::steady_clock::now() + std::chrono::hours(1)));
}

TEST(event_feed, says_when_a_client_missed_events) {
  http::event_feed f{3};
  http::event_feed other;
  EXPECT_EQ(f.epoch().size(), 16u);
  EXPECT_NE(f.epoch(), other.epoch()) << "a restart shows as a new epoch";
  EXPECT_FALSE(f.gap(0));
  for (int i = 0; i < 6; ++i)
    f.publish({json{{"type", "t"}}});
  EXPECT_FALSE(f.gap(0)) << "from the start: whatever is kept";
  EXPECT_FALSE(f.gap(3)) << "4..6 are kept";
  EXPECT_TRUE(f.gap(2)) << "3 was dropped";
  EXPECT_TRUE(f.gap(7)) << "numbered by another process";
  auto s = std::make_shared<stream_sink>();
  ASSERT_TRUE(f.follow(s, 9));
  EXPECT_NE(s->data.find("event: gap\n"), std::string::npos) << s->data;
  EXPECT_NE(s->data.find(f.epoch()), std::string::npos);
}

TEST(event_feed, a_stream_resumed_from_another_processs_id_gets_the_gap_and_all_kept) {
  http::event_feed before{100};  // the process before a restart
  for (int i = 0; i < 9; ++i)
    before.publish({json{{"type", "old"}}});
  http::event_feed f{100};
  for (int i = 0; i < 12; ++i)
    f.publish({json{{"type", "new"}}});
  // The ids name the epoch, as a browser hands them back in Last-Event-ID.
  auto s = std::make_shared<stream_sink>();
  ASSERT_TRUE(before.follow(s, 8));
  auto id_at = s->data.find("id: " + before.epoch() + "-9\n");
  ASSERT_NE(id_at, std::string::npos) << s->data;
  auto last_id = before.epoch() + "-9";
  // Resumed on the new process with the old one's id: 9 is below the new
  // numbering's 12, and a bare seq would skip 1..9 without a word.
  auto c = http::event_feed::parse_cursor(last_id);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->epoch, before.epoch());
  EXPECT_EQ(c->seq, 9u);
  EXPECT_FALSE(f.gap(c->seq)) << "a bare seq cannot tell";
  EXPECT_TRUE(f.gap(*c));
  EXPECT_EQ(f.read(*c, 100).events.size(), 12u);
  auto r = std::make_shared<stream_sink>();
  ASSERT_TRUE(f.follow(r, *c));
  // The gap frame has an id of this epoch: a stream that drops before the
  // next event resumes here, not from the old id (another gap).
  EXPECT_NE(r->data.find("id: " + f.epoch() + "-12\nevent: gap\n"), std::string::npos)
    << r->data;
  EXPECT_NE(r->data.find("id: " + f.epoch() + "-1\n"), std::string::npos) << r->data;
  EXPECT_NE(r->data.find("id: " + f.epoch() + "-12\n"), std::string::npos) << r->data;
  // Its own epoch: as a bare seq.
  auto own = http::event_feed::parse_cursor(f.epoch() + "-10");
  ASSERT_TRUE(own);
  EXPECT_FALSE(f.gap(*own));
  EXPECT_EQ(f.read(*own, 100).events.size(), 2u);
  auto o = std::make_shared<stream_sink>();
  ASSERT_TRUE(f.follow(o, *own));
  EXPECT_EQ(o->data.find("event: gap"), std::string::npos) << o->data;
  EXPECT_EQ(o->data.find("-10\n"), std::string::npos) << o->data;
  EXPECT_NE(o->data.find("id: " + f.epoch() + "-11\n"), std::string::npos) << o->data;
  // A bare seq past any this process gave (an old client, a restart): a
  // gap, and every kept event, not none until the seqs catch up.
  EXPECT_TRUE(f.gap(http::event_feed::cursor{"", 40}));
  EXPECT_EQ(f.read(http::event_feed::cursor{"", 40}, 100).events.size(), 12u);
  auto page = f.read(http::event_feed::cursor{"", 40}, 5);
  EXPECT_TRUE(page.gap);
  EXPECT_EQ(page.events.size(), 5u);
  EXPECT_EQ(page.next, 5u);
  auto b = std::make_shared<stream_sink>();
  ASSERT_TRUE(f.follow(b, 40));
  EXPECT_NE(b->data.find("event: gap"), std::string::npos) << b->data;
  EXPECT_NE(b->data.find("id: " + f.epoch() + "-1\n"), std::string::npos) << b->data;
  // What is not a cursor.
  for (auto bad : {"", "x", "-1", "+1", "12-3", "0123456789abcdeg-1",
                   "0123456789ABCDEF-1", "0123456789abcdef-", "0123456789abcdef--1",
                   "99999999999999999999"})
    EXPECT_FALSE(http::event_feed::parse_cursor(bad)) << bad;
  EXPECT_TRUE(http::event_feed::parse_cursor("0123456789abcdef-0"));
}

TEST(event_feed, a_stream_gets_the_backlog_then_live_events_until_it_closes) {
  http::event_feed f{100, 2};
  f.publish({json{{"type", "a"}}, json{{"type", "b"}}});
  auto s = std::make_shared<stream_sink>();
  ASSERT_TRUE(f.follow(s, 1));  // resumed after seq 1
  EXPECT_TRUE(s->begun);
  EXPECT_EQ(s->data.find("-1\n"), std::string::npos) << s->data;
  EXPECT_NE(s->data.find("id: " + f.epoch() + "-2\ndata: {"), std::string::npos) << s->data;
  f.publish({json{{"type", "c"}}});
  EXPECT_NE(s->data.find("id: " + f.epoch() + "-3\n"), std::string::npos);
  EXPECT_NE(s->data.find("\"type\":\"c\""), std::string::npos);
  // At most two streams.
  auto s2 = std::make_shared<stream_sink>();
  auto s3 = std::make_shared<stream_sink>();
  EXPECT_TRUE(f.follow(s2, 0));
  EXPECT_FALSE(f.follow(s3, 0));
  EXPECT_FALSE(s3->begun);
  // A closed one is dropped at the next heartbeat, and gets nothing more.
  s->gone = true;
  f.heartbeat();
  EXPECT_EQ(f.streams(), 1u);
  auto before = s->data.size();
  f.publish({json{{"type", "d"}}});
  EXPECT_EQ(s->data.size(), before);
  EXPECT_NE(s2->data.find(": keep-alive\n\n"), std::string::npos);
  f.close_all();
  EXPECT_TRUE(s2->ended);
  EXPECT_EQ(f.streams(), 0u);
}

} // namespace
