#include "sink_broker/config.h"

#include <gtest/gtest.h>

namespace sinkline::broker {
namespace {

constexpr char kGood[] = R"(
sinks:
  - name: stamp
    target: 127.0.0.1:7100
  - name: policy
    target: dns:///policy:7100
bindings:
  - name: b-late
    sink: stamp
    event: EOD
    priority: 30000
    content_access: read-write
    failure_policy: continue
  - name: a-early
    sink: policy
    event: eod
    priority: 100
  - name: z-tie
    sink: policy
    event: EOD
    priority: 100
    rule: "mail from=*@example.com"
  - name: status
    sink: policy
    event: XSTATUS
  - name: off
    sink: policy
    event: RCPT
    enabled: false
)";

TEST(Config, ParsesAndOrdersByPriorityThenName) {
  auto c = ParseConfig(kGood, "b.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->sinks.size(), 2u);
  v1::Event eod;
  eod.set_type(v1::EVENT_TYPE_EOD);
  auto chain = c->ChainFor(eod);
  ASSERT_EQ(chain.size(), 3u);
  EXPECT_EQ(chain[0]->spec.name(), "a-early");
  EXPECT_EQ(chain[1]->spec.name(), "z-tie");
  EXPECT_EQ(chain[2]->spec.name(), "b-late");
  EXPECT_EQ(chain[2]->spec.content_access(), v1::CONTENT_ACCESS_READ_WRITE);
  EXPECT_EQ(chain[2]->spec.failure_policy(), v1::FAILURE_POLICY_CONTINUE);
  // Defaults.
  EXPECT_EQ(chain[0]->spec.failure_policy(), v1::FAILURE_POLICY_TEMPFAIL);
  EXPECT_EQ(chain[0]->spec.content_access(), v1::CONTENT_ACCESS_NONE);
  EXPECT_EQ(chain[0]->spec.deadline_ms(), 5000u);
  EXPECT_TRUE(chain[0]->spec.enabled());
}

TEST(Config, SessionAffinity) {
  auto c = ParseConfig(R"(
sinks:
  - name: milter
    target: ipv4:127.0.0.1:7001,127.0.0.1:7002
bindings:
  - name: milter-rcpt
    sink: milter
    event: RCPT
    session_affinity: true
  - name: milter-eod
    sink: milter
    event: EOD
)",
                       "b.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->bindings.size(), 2u);
  for (const auto& b : c->bindings) {
    EXPECT_EQ(b.spec.session_affinity(), b.spec.name() == "milter-rcpt");
  }
  EXPECT_FALSE(ParseConfig(R"(
sinks: [{name: m, target: "127.0.0.1:1"}]
bindings: [{name: b, sink: m, event: RCPT, session_affinity: maybe}]
)",
                           "b.yaml")
                   .ok());
}

TEST(Config, DefaultPriorityIsNative) {
  auto c = ParseConfig(kGood, "b.yaml");
  ASSERT_TRUE(c.ok());
  v1::Event ev;
  ev.set_type(v1::EVENT_TYPE_UNKNOWN);
  ev.set_verb("xstatus");
  auto chain = c->ChainFor(ev);
  ASSERT_EQ(chain.size(), 1u);
  EXPECT_EQ(chain[0]->spec.priority(), kNativePriority);
  ev.set_verb("XOTHER");
  EXPECT_TRUE(c->ChainFor(ev).empty());
}

TEST(Config, BindingMapListsEnabledEventsAndVerbs) {
  auto c = ParseConfig(kGood, "b.yaml");
  ASSERT_TRUE(c.ok());
  auto map = c->MakeBindingMap();
  ASSERT_EQ(map.events_size(), 1);
  EXPECT_EQ(map.events(0), v1::EVENT_TYPE_EOD);
  ASSERT_EQ(map.verbs_size(), 1);
  EXPECT_EQ(map.verbs(0), "XSTATUS");
}

TEST(Config, EmptyFileIsAnEmptyConfig) {
  auto c = ParseConfig("", "b.yaml");
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->bindings.empty());
}

TEST(Config, ErrorsNameFileLineAndReason) {
  struct Case {
    const char* yaml;
    const char* error;
  } cases[] = {
      {"sinks:\n  - name: a\n    target: x\nbindings:\n  - name: b\n    "
       "sink: nope\n    event: EOD\n",
       "b.yaml:6:11: unknown sink 'nope'"},
      {"sinks:\n  - name: a\n    target: x\nbindings:\n  - name: b\n    "
       "sink: a\n    event: EOD\n    priority: 40000\n",
       "b.yaml:8:15: 'priority' must be 0..32767"},
      {"sinks:\n  - name: a\n    target: x\n    colour: red\n",
       "b.yaml:4:5: unknown key 'colour' in a sink"},
      {"sinks:\n  - name: a\n    target: x\n  - name: a\n    target: y\n",
       "b.yaml:4:11: duplicate sink 'a'"},
      {"sinks:\n  - name: a\n    target: x\nbindings:\n  - name: b\n    "
       "sink: a\n    event: EOD\n    failure_policy: maybe\n",
       "b.yaml:8:21: failure_policy must be continue, tempfail or reject"},
      {"sinks:\n  - name: a\n    target: x\nbindings:\n  - name: b\n    "
       "sink: a\n    event: EOD\n    rule: \"mail form=x\"\n",
       "b.yaml:8:11: rule error at position 1: unknown key 'mail form'"},
      {"sinks: [\n", "b.yaml:2:1:"},
      {"sinks:\n  - name: a\n    target: x\nbindings:\n  - name: b\n    "
       "sink: a\n    event: \"E O D\"\n",
       "is neither an event nor a verb"},
  };
  for (const auto& c : cases) {
    auto r = ParseConfig(c.yaml, "b.yaml");
    ASSERT_FALSE(r.ok()) << c.yaml;
    EXPECT_NE(r.status().message().find(c.error), std::string::npos)
        << "got: " << r.status().message() << "\nwant: " << c.error;
  }
}

// Found by config_fuzz: a rule with a byte that is not UTF-8 was taken, sent
// as an invalid protobuf string and changed by the YAML round trip.
TEST(Config, TextMustBeUtf8) {
  auto c = ParseConfig(
      "sinks: [{name: m, target: \"127.0.0.1:1\"}]\n"
      "bindings: [{name: b, sink: m, event: MAIL, rule: \"helo=\x86\"}]\n",
      "b.yaml");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("b.yaml: not UTF-8"), std::string::npos)
      << c.status();
  EXPECT_TRUE(ParseConfig("sinks: [{name: m, target: \"127.0.0.1:1\"}]\n"
                          "bindings: [{name: b, sink: m, event: MAIL, rule: "
                          "\"helo=j\xc3\xb6rg\"}]\n",
                          "b.yaml")
                  .ok());
}

}  // namespace
}  // namespace sinkline::broker
