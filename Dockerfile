# syntax=docker/dockerfile:1
# Dependencies are compiled in a layer of their own (cargo-chef): a source change rebuilds
# only the workspace's crates, not every dependency.
ARG RUST_IMAGE=rust:1.95-slim-bookworm

FROM ${RUST_IMAGE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

# The recipe: the workspace's manifests and lock file, without the sources.
FROM chef AS planner
COPY Cargo.toml Cargo.lock ./
COPY entity entity
COPY migration migration
COPY loadgen loadgen
COPY src src
RUN cargo chef prepare --recipe-path recipe.json

# Build stage: the dependencies from the recipe (cached until Cargo.toml or Cargo.lock
# change), then the workspace itself.
FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin order-service
COPY Cargo.toml Cargo.lock ./
COPY entity entity
COPY migration migration
COPY loadgen loadgen
COPY src src
RUN cargo build --release --locked --bin order-service \
    && strip target/release/order-service

# Runtime stage: a small Debian image, a non-root user, and the binary only. The health
# check uses the binary itself, so the image needs no curl.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --create-home orders
COPY --from=build /src/target/release/order-service /usr/local/bin/order-service
USER orders
WORKDIR /app
ENV LISTEN_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json \
    DATABASE_URL=sqlite:///app/data/orders.db?mode=rwc
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["order-service", "healthcheck"]
ENTRYPOINT ["order-service"]
CMD ["serve"]
