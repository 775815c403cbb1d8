//! SeaORM entities for the four per-service stores of the order orchestration
//! service. The Orders store holds [`orders`], [`order_items`],
//! [`order_transitions`] and [`idempotency_keys`]; the Inventory store holds
//! [`stock`] and [`reservations`]; the Payment store holds [`payments`]; the
//! Shipping store holds [`shipments`]. Every store additionally has its own
//! [`outbox`] table, so that entity is shared by all four. Table names are
//! unqualified: in PostgreSQL each store is selected via `search_path`, in
//! SQLite each store is its own database file. Statuses are plain TEXT, UUIDs
//! are `Uuid`, timestamps are `DateTimeUtc` and money is `i64` cents.

pub mod idempotency_keys;
pub mod order_items;
pub mod order_transitions;
pub mod orders;
pub mod outbox;
pub mod payments;
pub mod reservations;
pub mod shipments;
pub mod stock;
