#pragma once

// The CAF type-ID block of nodepool: every atom used between actors, in one
// place. Payloads between processes are plain std::string holding
// serialized Protobuf messages (nodepool.proto), so nothing else needs
// registering, the same bytes cross CAF's middleman, and a miner that sends
// garbage is caught by one decoder. Inside a process the supervisor's
// events and the commands its neighbours build pass undecoded
// (actors/local.hpp).
#include <caf/atom.hpp>
#include <caf/type_id.hpp>

CAF_BEGIN_TYPE_ID_BLOCK(nodepool, caf::first_custom_type_id)

// supervisor
CAF_ADD_ATOM(nodepool, nodepool, cmd_atom, "cmd")
CAF_ADD_ATOM(nodepool, nodepool, accepted_atom, "accepted")
CAF_ADD_ATOM(nodepool, nodepool, refused_atom, "refused")
CAF_ADD_ATOM(nodepool, nodepool, flush_atom, "flush")
CAF_ADD_ATOM(nodepool, nodepool, tick_atom, "tick")
CAF_ADD_ATOM(nodepool, nodepool, subscribe_atom, "subscribe")
CAF_ADD_ATOM(nodepool, nodepool, events_atom, "events")
CAF_ADD_ATOM(nodepool, nodepool, state_atom, "state")
CAF_ADD_ATOM(nodepool, nodepool, stats_atom, "stats")
CAF_ADD_ATOM(nodepool, nodepool, archive_atom, "archive")
CAF_ADD_ATOM(nodepool, nodepool, snapshot_atom, "snapshot")
// miner <-> oracle
CAF_ADD_ATOM(nodepool, nodepool, miner_atom, "miner")
CAF_ADD_ATOM(nodepool, nodepool, oracle_atom, "oracle")
CAF_ADD_ATOM(nodepool, nodepool, send_atom, "send")
CAF_ADD_ATOM(nodepool, nodepool, connect_atom, "connect")
// oracle internals
CAF_ADD_ATOM(nodepool, nodepool, answers_atom, "answers")
CAF_ADD_ATOM(nodepool, nodepool, task_atom, "task")
CAF_ADD_ATOM(nodepool, nodepool, submit_atom, "submit")
CAF_ADD_ATOM(nodepool, nodepool, timeout_atom, "timeout")
CAF_ADD_ATOM(nodepool, nodepool, beat_atom, "beat")
CAF_ADD_ATOM(nodepool, nodepool, reply_atom, "reply")
CAF_ADD_ATOM(nodepool, nodepool, prompt_atom, "prompt")
CAF_ADD_ATOM(nodepool, nodepool, log_atom, "log")
// cluster
CAF_ADD_ATOM(nodepool, nodepool, lead_atom, "lead")
CAF_ADD_ATOM(nodepool, nodepool, follow_atom, "follow")
CAF_ADD_ATOM(nodepool, nodepool, committed_atom, "committed")
CAF_ADD_ATOM(nodepool, nodepool, reset_atom, "reset")
CAF_ADD_ATOM(nodepool, nodepool, cluster_atom, "cluster")
CAF_ADD_ATOM(nodepool, nodepool, transfer_atom, "transfer")
CAF_ADD_ATOM(nodepool, nodepool, rotate_atom, "rotate")
CAF_ADD_ATOM(nodepool, nodepool, member_atom, "member")
// a ticketed command's answer (actors/tickets.hpp); last, so that the ids
// before it stay what they were
CAF_ADD_ATOM(nodepool, nodepool, answer_atom, "answer")
// when the gateway last heard from each connected node (the HTTP API's
// miners); after the others for the same reason
CAF_ADD_ATOM(nodepool, nodepool, seen_atom, "seen")

CAF_END_TYPE_ID_BLOCK(nodepool)
