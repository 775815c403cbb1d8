//! Order Orchestration Service: takes orders over HTTP and drives each through a saga
//! across Inventory, Payment and Shipping, compensating when a step fails.
//!
//! The layers, inward (the rules are a test, `tests/architecture.rs`):
//!
//! 1. [`domain`]: the pure state machine `(saga, event) -> (saga', effects)`, request
//!    validation and the read views. No I/O.
//! 2. [`orchestrator`]: the use cases behind one entry point, `Orchestrator`: place an
//!    order (idempotently), apply a participant's reply, override, pay, resend or time out
//!    a step, resume after a restart. One actor per order owns its saga; `wire` maps
//!    effects to messages and replies to events.
//! 3. Adapters, which never import one another's internals nor anything above them:
//!    - [`http`]: the axum API; handlers turn requests into orchestrator calls.
//!    - [`messaging`]: the bus (RabbitMQ or in-process), topology, wire schema, outbox
//!      relay and consumers.
//!    - [`persistence`]: the SeaORM stores; a transition and the messages it causes are
//!      committed together.
//!    - [`participants`]: Inventory, Payment and Shipping with their own stores and runtime.
//! 4. [`app`] assembles all of it from the [`config`]; `main.rs` runs it.
//!
//! Beside them: [`telemetry`] (logs and traces), [`metrics`], [`invariants`] (the money
//! and stock checks), [`batching`] (the rule every batcher follows), [`tuning`] (batch
//! sizes and concurrency), [`faults`] (fault injection for tests and drills), [`pause`]
//! (backoff, and sleeping unless shutting down).

pub mod app;
pub mod batching;
pub mod config;
pub mod domain;
pub mod faults;
pub mod http;
pub mod invariants;
pub mod messaging;
pub mod metrics;
pub mod orchestrator;
pub mod participants;
pub mod pause;
pub mod persistence;
pub mod telemetry;
pub mod tuning;
