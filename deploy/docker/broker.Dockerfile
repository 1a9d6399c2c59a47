# sinkline-broker: multi-stage build on Debian 12; the runtime image holds the binary
# and its shared libraries only, and runs as a non-root user.
#   docker build -f deploy/docker/broker.Dockerfile -t sinkline/broker .
FROM debian:12 AS build
COPY scripts/install-deps.sh /src/scripts/install-deps.sh
RUN /src/scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . /src
WORKDIR /src
RUN cmake --preset release && cmake --build --preset release --target sinkline-broker

FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgrpc++1.51 libprotobuf32 libspdlog1.10 libboost-system1.74.0 libssl3 libyaml-cpp0.7 librocksdb7.8 libgflags2.2 libsnappy1v5 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home sinkline
COPY --from=build /src/build/release/bin/sinkline-broker /usr/local/bin/sinkline-broker
USER 10001:10001
EXPOSE 7000
ENTRYPOINT ["/usr/local/bin/sinkline-broker"]
