# sinkline-sink-archive: multi-stage build on Debian 12; the runtime image holds the binary
# and its shared libraries only, and runs as a non-root user.
#   docker build -f deploy/docker/sink-archive.Dockerfile -t sinkline/sink-archive .
FROM debian:12 AS build
COPY scripts/install-deps.sh /src/scripts/install-deps.sh
RUN /src/scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . /src
WORKDIR /src
RUN cmake --preset release && cmake --build --preset release --target sinkline-sink-archive

FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgrpc++1.51 libprotobuf32 libspdlog1.10 libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home sinkline
COPY --from=build /src/build/release/bin/sinkline-sink-archive /usr/local/bin/sinkline-sink-archive
USER 10001:10001
EXPOSE 7100
ENTRYPOINT ["/usr/local/bin/sinkline-sink-archive"]
