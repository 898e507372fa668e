// The one way the CLI and the tests run a program: its output, its status,
// and how it is ended.
#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <fcntl.h>
#include <memory>
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

// terminate_all() asks every child before it waits for any: three children
// that each end only once all three have been asked (each marks its SIGTERM
// in a file and waits for the others' marks) all end by the signal, none
// killed. Ended one after the other, the first would wait for good and be
// killed past the grace.
TEST_F(ChildProcess, TerminateAllAsksEveryChildBeforeItWaits) {
  auto script = "trap 'touch " + dir + "/asked.$0; "
                "while [ $(ls " + dir + " | grep -c asked) -lt 3 ]; do sleep 0.01; done; "
                "exit 7' TERM; touch " + dir + "/ready.$0; "
                "while true; do sleep 0.01; done";
  std::vector<std::unique_ptr<child_process>> cs;
  std::vector<child_process*> ptrs;
  for (int i = 0; i < 3; ++i) {
    cs.push_back(std::make_unique<child_process>(
      std::vector<std::string>{"-c", script, std::to_string(i)},
      dir + "/c" + std::to_string(i), program("/bin/sh")));
    ptrs.push_back(cs.back().get());
  }
  ptrs.insert(ptrs.begin() + 1, nullptr);  // skipped
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 3000 && !std::filesystem::exists(
                                   dir + "/ready." + std::to_string(i));
         ++k)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));  // traps set
  auto out = terminate_all(ptrs, std::chrono::seconds(60));
  ASSERT_EQ(out.size(), 4u);
  for (size_t i = 0; i < out.size(); ++i) {
    EXPECT_EQ(out[i].first, i == 1 ? 0 : 7) << i;
    EXPECT_FALSE(out[i].second) << i;
  }
  // One that ignores SIGTERM is killed past the grace; the others are not.
  child_process deaf{{"-c", "trap '' TERM; echo deaf; sleep 30"},
                     dir + "/deaf", program("/bin/sh")};
  child_process plain{{"30"}, dir + "/plain", program("/bin/sleep")};
  for (int i = 0; i < 3000 && deaf.output().empty(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  auto two = terminate_all({&deaf, &plain}, std::chrono::milliseconds(200));
  EXPECT_EQ(two[0], std::make_pair(-SIGKILL, true));
  EXPECT_EQ(two[1], std::make_pair(-SIGTERM, false));

  // Once this process is asked to stop, half a second, not the grace.
  std::atomic<bool> stop{true};
  child_process deafer{{"-c", "trap '' TERM; echo deaf; sleep 600"},
                       dir + "/deafer", program("/bin/sh")};
  for (int i = 0; i < 3000 && deafer.output().empty(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  auto t0 = std::chrono::steady_clock::now();
  auto three = terminate_all({&deafer}, std::chrono::minutes(10), &stop);
  EXPECT_EQ(three[0], std::make_pair(-SIGKILL, true));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::minutes(5));
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
