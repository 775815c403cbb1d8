//! Integration tests: the whole service, started by `spawn_app()` against the real
//! PostgreSQL and RabbitMQ (one database and one vhost per test), driven over HTTP.
//! One test binary keeps link time down.

mod broker;
mod helpers;
mod messaging;
mod saga;
