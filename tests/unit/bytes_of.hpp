#pragma once

#include <string>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/message_lite.h>

namespace nodepool::testing {

/// Deterministic serialization, for comparing two states byte for byte.
inline std::string bytes_of(const google::protobuf::MessageLite& m) {
  std::string out;
  {
    google::protobuf::io::StringOutputStream os(&out);
    google::protobuf::io::CodedOutputStream cos(&os);
    cos.SetSerializationDeterministic(true);
    m.SerializeToCodedStream(&cos);
  }
  return out;
}

} // namespace nodepool::testing
