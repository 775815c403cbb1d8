# syntax=docker/dockerfile:1
# Build stage: compile the release binary with the workspace's locked dependencies.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY entity entity
COPY migration migration
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
