//! Messaging: the bus (RabbitMQ through lapin, or an in-process bus with the same
//! interface), the topology, and the wire schema of commands, replies and events.
pub mod amqp;
pub mod bundle;
pub mod bus;
pub mod dead_letters;
pub mod in_process;
pub mod topology;
pub use bus::*;
pub mod consumer;
pub mod messages;
pub mod relay;
pub mod replies;
