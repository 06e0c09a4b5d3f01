# Stand-in for ollama/ollama in the compose test (tests/images, used only when
# the public image cannot be pulled): the Ollama test double
# (tests/double/ollama_double.c, canned answers, not a real model) on :11434,
# plus an `ollama` command answering the two subcommands compose/core.yml
# runs (`ollama list` for the health check, `ollama pull`), over HTTP.
# Build from the repository root: podman build -f tests/images/ollama.Dockerfile .
FROM debian:bookworm AS build
# Same line as the services' Dockerfiles, so the layer is built once.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config libevent-dev libcurl4-openssl-dev libhiredis-dev \
      libpq-dev libjansson-dev libwslay-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt README.md .env.example ./
COPY common ./common
COPY llm_proxy ./llm_proxy
COPY memory_worker ./memory_worker
COPY systemd ./systemd
COPY tests/CMakeLists.txt ./tests/CMakeLists.txt
COPY tests/double ./tests/double
COPY tests/unit ./tests/unit
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=ON \
 && cmake --build /build -j"$(nproc)" --target ollama_double

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libevent-2.1-7 libevent-core-2.1-7 libevent-extra-2.1-7 libjansson4 libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10003 --no-create-home --shell /usr/sbin/nologin ollama \
 && mkdir -p /root/.ollama
COPY --from=build /build/bin/ollama_double /usr/local/bin/ollama_double
COPY tests/images/ollama-cli.sh /usr/local/bin/ollama
USER 10003:10003
EXPOSE 11434
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ollama_double", "--host", "0.0.0.0", "--port", "11434"]
