//! Domain: the pure order state machine and the validated values it works on. No I/O.

pub mod integral;
pub mod order;
pub mod partition;
pub mod saga;
pub mod text;
pub mod timeline;
pub mod view;
