// The one way the CLI and the tests run a program: its output, its status,
// and how it is ended.
#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <fcntl.h>
#include <filesystem>
#include <thread>
#include <unistd.h>

#include "cli/os.hpp"

namespace nodepool::cli {
namespace {

class ChildProcess : public ::testing::Test {
protected:
  std::string dir = make_temp_dir("os");
  ~ChildProcess() override { std::filesystem::remove_all(dir); }

  static child_options program(std::string bin) {
    child_options o;
    o.bin = std::move(bin);
    return o;
  }
};

TEST_F(ChildProcess, StdoutAndStderrApartOrInOneLog) {
  child_process apart{{"-c", "echo out; echo err >&2; exit 3"}, dir + "/apart",
                      program("/bin/sh")};
  EXPECT_EQ(apart.wait(std::chrono::seconds(30)), 3);
  EXPECT_EQ(apart.output(), "out\n");
  EXPECT_EQ(apart.errors(), "err\n");

  auto one = program("/bin/sh");
  one.one_log = true;
  {
    child_process first{{"-c", "echo first"}, dir + "/log", one};
    EXPECT_EQ(first.wait(std::chrono::seconds(30)), 0);
  }
  // Appended: a second run adds to the same log.
  child_process second{{"-c", "echo out; echo err >&2"}, dir + "/log", one};
  EXPECT_EQ(second.wait(std::chrono::seconds(30)), 0);
  EXPECT_EQ(second.output(), "first\nout\nerr\n");
  EXPECT_EQ(second.errors(), "");
}

TEST_F(ChildProcess, AProgramThatCannotRunEndsWith127) {
  child_process c{{}, dir + "/none", program(dir + "/no-such-program")};
  EXPECT_EQ(c.wait(std::chrono::seconds(30)), 127);
}

// finish(): past its limit the child is killed; once `stop` is set it is
// asked to end (SIGTERM) and killed only if it does not.
TEST_F(ChildProcess, FinishPassesAStopOnAndKillsPastItsLimit) {
  std::atomic<bool> stop{false};
  child_process slow{{"30"}, dir + "/slow", program("/bin/sleep")};
  EXPECT_EQ(slow.finish(std::chrono::milliseconds(100), stop), -SIGKILL);

  stop = true;
  child_process asked{{"30"}, dir + "/asked", program("/bin/sleep")};
  EXPECT_EQ(asked.finish(std::chrono::minutes(10), stop), -SIGTERM);

  // A child that ignores SIGTERM is killed half a second later.
  child_process deaf{{"-c", "trap '' TERM; echo deaf; sleep 30"},
                     dir + "/deaf", program("/bin/sh")};
  for (int i = 0; i < 3000 && deaf.output().empty(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // its trap set
  ASSERT_EQ(deaf.output(), "deaf\n");
  EXPECT_EQ(deaf.finish(std::chrono::minutes(10), stop), -SIGKILL);
}

TEST_F(ChildProcess, TerminateAndSignalsOfAChildThatEnded) {
  child_process c{{"30"}, dir + "/t", program("/bin/sleep")};
  EXPECT_TRUE(c.running());
  EXPECT_FALSE(c.status());
  auto [st, killed] = c.terminate(std::chrono::seconds(30));
  EXPECT_EQ(st, -SIGTERM);
  EXPECT_FALSE(killed);
  EXPECT_FALSE(c.running());
  c.signal(SIGKILL);  // reaped: nothing is sent, the status stays
  EXPECT_EQ(c.status(), -SIGTERM);
}

// A descriptor the parent opened without close-on-exec (a socket, a
// store's file) does not go along into the child.
TEST_F(ChildProcess, TakesNoDescriptorOfTheParentBeyondItsOutput) {
  int fd = ::open("/dev/null", O_RDONLY);  // no O_CLOEXEC
  ASSERT_GE(fd, 3);
  auto probe = "test -e /proc/$$/fd/" + std::to_string(fd)
               + " && echo inherited || echo not; test -e /proc/$$/fd/1 && echo out";
  child_process c{{"-c", probe}, dir + "/fds", program("/bin/sh")};
  EXPECT_EQ(c.wait(std::chrono::seconds(30)), 0);
  ::close(fd);
  EXPECT_EQ(c.output(), "not\nout\n");
}

TEST(TempDir, EachCallMakesANewEmptyDirectoryNamedByItsTag) {
  auto a = make_temp_dir("os-tag");
  auto b = make_temp_dir("os-tag");
  EXPECT_NE(a, b);
  EXPECT_TRUE(std::filesystem::is_directory(a));
  EXPECT_TRUE(std::filesystem::is_empty(a));
  EXPECT_EQ(std::filesystem::path(a).filename().string().rfind("nodepool-os-tag-", 0),
            0u);
  std::filesystem::remove_all(a);
  std::filesystem::remove_all(b);
}

} // namespace
} // namespace nodepool::cli
