//! Order Orchestration Service.
//!
//! A newcomer's map:
//! - [`http`]: the axum API. A request becomes a message to an order actor.
//! - [`actors`]: the `OrderSupervisor` and one `OrderActor` per order; each actor owns its
//!   order's saga and serializes everything that happens to it.
//! - [`domain`]: the pure state machine `(saga, event) -> (saga', effects)` and request
//!   validation. No I/O.
//! - [`persistence`]: SeaORM stores and repositories (orders, idempotency keys, outbox).
//!   A transition and the messages it causes are committed together.
//! - [`messaging`]: the bus (RabbitMQ or in-process), topology, wire schema, outbox relay
//!   and consumers.
//! - [`participants`]: Inventory, Payment and Shipping, each with its own store and queue.
//! - [`config`], [`telemetry`], [`app`] (start-up and shutdown), [`batching`] (the rule
//!   every batcher follows), [`pause`] (backoff, and sleeping unless shutting down).

pub mod actors;
pub mod app;
pub mod batching;
pub mod config;
pub mod domain;
pub mod http;
pub mod invariants;
pub mod messaging;
pub mod metrics;
pub mod participants;
pub mod pause;
pub mod persistence;
pub mod telemetry;
