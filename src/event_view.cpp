#include "event_view.hpp"

#include <cctype>

namespace nodepool {

namespace {

std::string lower(std::string s) {
  for (auto& c : s)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

} // namespace

nlohmann::json event_json(const pb::Event& e) {
  nlohmann::json j;
  switch (e.kind_case()) {
    case pb::Event::kNodeStateChanged: {
      auto& x = e.node_state_changed();
      j["type"] = "node_state_changed";
      j["node_id"] = x.node_id();
      j["from"] = x.from() == pb::NODE_STATE_UNSPECIFIED
                    ? std::string{"none"}
                    : lower(pb::NodeState_Name(x.from()));
      j["to"] = lower(pb::NodeState_Name(x.to()));
      j["reason"] = x.reason();
      break;
    }
    case pb::Event::kTestRequested: {
      auto& x = e.test_requested();
      j["type"] = "test_requested";
      j["node_id"] = x.node_id();
      j["test_id"] = x.test_id();
      j["kind"] = lower(pb::TestKind_Name(x.kind()));
      j["level"] = x.level();
      break;
    }
    case pb::Event::kNodeReserved:
      j["type"] = "node_reserved";
      j["node_id"] = e.node_reserved().node_id();
      j["session_id"] = e.node_reserved().session_id();
      break;
    case pb::Event::kNodeReleased:
      j["type"] = "node_released";
      j["node_id"] = e.node_released().node_id();
      j["session_id"] = e.node_released().session_id();
      j["reason"] = e.node_released().reason();
      break;
    case pb::Event::kSessionAccepted:
      j["type"] = "session_accepted";
      j["session_id"] = e.session_accepted().session_id();
      break;
    case pb::Event::kSessionStarted: {
      auto& x = e.session_started();
      j["type"] = "session_started";
      j["session_id"] = x.session_id();
      j["nodes"] = std::vector<std::string>(x.nodes().begin(), x.nodes().end());
      j["model"] = x.model();
      break;
    }
    case pb::Event::kSessionEnded: {
      auto& x = e.session_ended();
      j["type"] = "session_ended";
      j["session_id"] = x.session_id();
      j["state"] = lower(pb::SessionState_Name(x.state()));
      j["reason"] = x.reason();
      break;
    }
    case pb::Event::kTestFinished: {
      auto& x = e.test_finished();
      j["type"] = "test_finished";
      j["node_id"] = x.node_id();
      j["test_id"] = x.test_id();
      j["passed"] = x.passed();
      if (!x.reason().empty())
        j["reason"] = x.reason();
      break;
    }
    case pb::Event::kNodeForgotten:
      j["type"] = "node_forgotten";
      j["node_id"] = e.node_forgotten().node_id();
      j["reason"] = e.node_forgotten().reason();
      break;
    default:
      j["type"] = "unknown";
  }
  return j;
}

log_fields event_fields(const nlohmann::json& j) {
  log_fields out;
  for (auto& [k, v] : j.items()) {
    if (k == "type")
      continue;
    if (v.is_string()) {
      out.emplace_back(k, v.get<std::string>());
    } else if (v.is_array()) {
      std::string s;
      for (auto& x : v) {
        if (!s.empty())
          s += ',';
        s += x.is_string() ? x.get<std::string>() : x.dump();
      }
      out.emplace_back(k, s);
    } else {
      out.emplace_back(k, v.dump());
    }
  }
  return out;
}

} // namespace nodepool
