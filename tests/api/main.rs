//! Integration tests: the whole service, started by `spawn_app()` against the real
//! PostgreSQL and RabbitMQ (one database and one vhost per test), driven over HTTP.
//! One test binary keeps link time down.

mod bad_input;
mod broker;
mod browser;
mod console;
mod crash;
mod database_tls;
mod deployment;
mod edge;
mod group_commit;
mod helpers;
mod idempotency;
mod invariants;
mod messaging;
mod observability;
mod openapi;
mod otlp;
mod participants;
mod process;
mod relay;
mod replicas;
mod saga;
mod schemathesis;
mod startup;
mod stock_adjust;
mod timers;
mod write_path;
