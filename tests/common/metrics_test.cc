#include "sinkline/common/metrics.h"

#include <gtest/gtest.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "sinkline/common/metrics_http.h"

namespace sinkline {
namespace {

TEST(Metrics, RendersCountersGaugesAndHistograms) {
  MetricsRegistry r;
  r.GetCounter("sinkline_commands_total", "Commands.",
               {{"verb", "MAIL"}, {"class", "2xx"}})
      .Inc();
  r.GetCounter("sinkline_commands_total", "Commands.",
               {{"verb", "MAIL"}, {"class", "2xx"}})
      .Inc(2);
  r.GetGauge("sinkline_sessions", "Open sessions.").Set(4);
  auto& h = r.GetHistogram("sinkline_latency_seconds", "Latency.",
                           {{"binding", "a\"b"}}, {0.1, 1});
  h.Observe(0.05);
  h.Observe(0.5);
  h.Observe(5);
  EXPECT_EQ(
      r.Render(),
      "# HELP sinkline_commands_total Commands.\n"
      "# TYPE sinkline_commands_total counter\n"
      "sinkline_commands_total{verb=\"MAIL\",class=\"2xx\"} 3\n"
      "# HELP sinkline_latency_seconds Latency.\n"
      "# TYPE sinkline_latency_seconds histogram\n"
      "sinkline_latency_seconds_bucket{binding=\"a\\\"b\",le=\"0.1\"} 1\n"
      "sinkline_latency_seconds_bucket{binding=\"a\\\"b\",le=\"1\"} 2\n"
      "sinkline_latency_seconds_bucket{binding=\"a\\\"b\",le=\"+Inf\"} 3\n"
      "sinkline_latency_seconds_sum{binding=\"a\\\"b\"} 5.55\n"
      "sinkline_latency_seconds_count{binding=\"a\\\"b\"} 3\n"
      "# HELP sinkline_sessions Open sessions.\n"
      "# TYPE sinkline_sessions gauge\n"
      "sinkline_sessions 4\n");
}

std::string HttpGet(int port, const std::string& target, int* status) {
  namespace asio = boost::asio;
  namespace http = boost::beast::http;
  asio::io_context io;
  asio::ip::tcp::socket sock(io);
  sock.connect(
      {asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)});
  http::request<http::empty_body> req(http::verb::get, target, 11);
  req.set(http::field::host, "localhost");
  http::write(sock, req);
  boost::beast::flat_buffer buf;
  http::response<http::string_body> res;
  http::read(sock, buf, res);
  *status = res.result_int();
  return res.body();
}

TEST(MetricsHttp, ServesMetricsAndNotFound) {
  MetricsRegistry r;
  r.GetCounter("sinkline_test_total", "Test.").Inc(7);
  auto server = MetricsHttpServer::Start("127.0.0.1:0", &r);
  ASSERT_TRUE(server.ok()) << server.status();
  int status = 0;
  std::string body = HttpGet((*server)->port(), "/metrics", &status);
  EXPECT_EQ(status, 200);
  EXPECT_NE(body.find("sinkline_test_total 7\n"), std::string::npos) << body;
  HttpGet((*server)->port(), "/nope", &status);
  EXPECT_EQ(status, 404);
}

TEST(MetricsHttp, RefusesBadAddress) {
  MetricsRegistry r;
  EXPECT_FALSE(MetricsHttpServer::Start("nonsense", &r).ok());
  EXPECT_FALSE(MetricsHttpServer::Start("999.1.1.1:0", &r).ok());
}

}  // namespace
}  // namespace sinkline
