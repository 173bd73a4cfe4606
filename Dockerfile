# syntax=docker/dockerfile:1

# ---- builder ------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /app

# Build the dependencies alone first, so this layer is reused until Cargo.toml/Cargo.lock change.
# The manifest names explicit targets (src/lib.rs, src/main.rs, tests/api/main.rs), so stand-ins
# for each must exist.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests/api \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs tests/api/main.rs \
 && cargo build --release --locked --bin session-manager \
 && rm -rf src

# Now the real sources. COPY keeps the files' modification times, which can be older than the
# stand-ins' build, so touch the crate roots to make sure cargo rebuilds the crate itself.
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
