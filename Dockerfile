# syntax=docker/dockerfile:1

# ---- builder ------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /app

# Build the dependencies alone first, so this layer is reused until a manifest or Cargo.lock
# changes. The service's manifest is the root of a workspace (the service, its client, its bench
# and its test kit), so every member's manifest must be there, with stand-ins for the targets
# cargo looks for; only the service is built.
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY bench/Cargo.toml bench/
COPY client/Cargo.toml client/
COPY testkit/Cargo.toml testkit/
RUN mkdir -p src tests/api bench/src client/src testkit/src \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > bench/src/main.rs \
 && touch src/lib.rs tests/api/main.rs client/src/lib.rs testkit/src/lib.rs \
 && cargo build --release --locked --bin session-manager \
 && rm -rf src

# Now the real sources (and the schemas, which GET /openapi.json serves from the binary). COPY
# keeps the files' modification times, which can be older than the stand-ins' build, so touch the
# crate roots to make sure cargo rebuilds the crate itself.
COPY schemas ./schemas
COPY src ./src
RUN touch src/lib.rs src/main.rs \
 && cargo build --release --locked --bin session-manager

# ---- runtime ------------------------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 session-manager \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin session-manager

COPY --from=builder /app/target/release/session-manager /usr/local/bin/session-manager

USER 10001:10001
# REST port (SERVICE_PORT). Everything else is configured by environment; see the README.
EXPOSE 8090

# No HEALTHCHECK here: the image has no curl/wget. docker-compose.yml runs
# `session-manager --healthcheck`, which GETs /healthz on localhost:$SERVICE_PORT and exits 0/1.
# SIGTERM (the default stop signal) starts a graceful shutdown.
ENTRYPOINT ["/usr/local/bin/session-manager"]
