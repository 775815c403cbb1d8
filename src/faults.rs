//! Fault injection for tests and chaos drills, off by default: the order actor panicking
//! when it handles an event (`FAULT_ACTOR_PANIC`), and the participants dropping command
//! types (`FAULT_DROP_COMMANDS`). Parsed once from the configuration into one [`Faults`]
//! that the actors and the participants only ask; the names it accepts are the saga's event
//! names and the wire's command types, so they cannot drift from what the service sends.

use crate::config::{Config, ConfigError};
use crate::domain::saga::Event;
use crate::messaging::messages::CommandBody;
use dashmap::{DashMap, DashSet};
use uuid::Uuid;

/// Not a saga event but a point the actor can panic at too: after the new order's write
/// has committed, before the actor answers.
pub const ORDER_CREATED: &str = "order_created";

/// Every fault configured, and what the once-per-order rule remembers.
#[derive(Debug, Default)]
pub struct Faults {
    actor_panic: Option<ActorPanic>,
    /// Orders that already panicked once ([`PanicMode::OncePerOrder`]); outlives actors.
    panicked: DashSet<Uuid>,
    /// Panics so far per order ([`PanicMode::First`]).
    panics: DashMap<Uuid, u32>,
    dropped_commands: Vec<&'static str>,
}

/// When the order actor panics on purpose.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PanicMode {
    OncePerOrder,
    /// The first N times per order, then never again: a crash loop that parks the order
    /// (N > the supervisor's restart bound) and lets it go on once resumed.
    First(u32),
    Always,
    Probability(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct ActorPanic {
    event: &'static str,
    mode: PanicMode,
}

impl Faults {
    /// `FAULT_ACTOR_PANIC` and `FAULT_DROP_COMMANDS`, checked against the names that exist.
    pub fn from_config(config: &Config) -> Result<Faults, ConfigError> {
        let actor_panic = config
            .fault_actor_panic
            .as_deref()
            .map(parse_actor_panic)
            .transpose()
            .map_err(|problem| ConfigError {
                option: "FAULT_ACTOR_PANIC",
                problem,
            })?;
        let dropped_commands = config
            .fault_drop_commands
            .iter()
            .map(|command| {
                known(&CommandBody::KINDS, command).ok_or_else(|| ConfigError {
                    option: "FAULT_DROP_COMMANDS",
                    problem: format!(
                        "unknown command type {command:?}; one of {}",
                        CommandBody::KINDS.join(", ")
                    ),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Faults {
            actor_panic,
            panicked: DashSet::new(),
            panics: DashMap::new(),
            dropped_commands,
        })
    }

    /// Whether the order actor is to panic now, handling `event` (an [`Event::name`] or
    /// [`ORDER_CREATED`]) for `order_id`.
    pub fn should_panic(&self, order_id: Uuid, event: &str) -> bool {
        match self.actor_panic {
            Some(rule) if rule.event == event => match rule.mode {
                PanicMode::Always => true,
                PanicMode::OncePerOrder => self.panicked.insert(order_id),
                PanicMode::First(n) => {
                    let mut count = self.panics.entry(order_id).or_insert(0);
                    *count += 1;
                    *count <= n
                }
                PanicMode::Probability(p) => rand::random::<f64>() < p,
            },
            _ => false,
        }
    }

    /// Whether a participant is to ack a command of this type (its routing key) without
    /// effect or reply.
    pub fn drops(&self, routing_key: &str) -> bool {
        self.dropped_commands.contains(&routing_key)
    }

    /// Whether any command type is dropped at all.
    pub fn drops_commands(&self) -> bool {
        !self.dropped_commands.is_empty()
    }
}

/// The events the actor can panic at.
fn panic_events() -> impl Iterator<Item = &'static str> {
    std::iter::once(ORDER_CREATED).chain(Event::NAMES)
}

/// `EVENT` (once per order), `EVENT:always`, `EVENT:first=N` (the first N times per order)
/// or `EVENT:<probability>`.
fn parse_actor_panic(spec: &str) -> Result<ActorPanic, String> {
    let (event, mode) = match spec.split_once(':') {
        None => (spec, PanicMode::OncePerOrder),
        Some((event, "always")) => (event, PanicMode::Always),
        Some((event, first)) if first.starts_with("first=") => {
            match first["first=".len()..].parse::<u32>() {
                Ok(n) if n > 0 => (event, PanicMode::First(n)),
                _ => {
                    return Err(format!(
                        "{first:?}: N in first=N must be a whole number above 0"
                    ));
                }
            }
        }
        Some((event, p)) => match p.parse::<f64>() {
            Ok(p) if (0.0..=1.0).contains(&p) => (event, PanicMode::Probability(p)),
            _ => {
                return Err(format!(
                    "{p:?} is neither `always` nor a probability 0.0-1.0"
                ));
            }
        },
    };
    let Some(event) = panic_events().find(|known| *known == event) else {
        let all: Vec<_> = panic_events().collect();
        return Err(format!(
            "unknown event {event:?}; one of {}",
            all.join(", ")
        ));
    };
    Ok(ActorPanic { event, mode })
}

fn known(names: &[&'static str], name: &str) -> Option<&'static str> {
    names.iter().copied().find(|known| *known == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(actor_panic: Option<&str>, drop: &[&str]) -> Result<Faults, String> {
        let mut config = Config::default_for("sqlite::memory:", None);
        config.fault_actor_panic = actor_panic.map(str::to_owned);
        config.fault_drop_commands = drop.iter().map(|c| (*c).to_owned()).collect();
        Faults::from_config(&config).map_err(|e| e.to_string())
    }

    #[test]
    fn none_configured_injects_nothing() {
        let none = faults(None, &[]).expect("valid");
        assert!(!none.should_panic(Uuid::now_v7(), ORDER_CREATED));
        assert!(!none.drops("payment.charge"));
        assert!(!none.drops_commands());
    }

    #[test]
    fn an_event_alone_panics_once_per_order_and_always_every_time() {
        let once = faults(Some("payment_charged"), &[]).expect("valid");
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(!once.should_panic(a, "stock_reserved"));
        assert!(once.should_panic(a, "payment_charged"));
        assert!(!once.should_panic(a, "payment_charged"));
        assert!(once.should_panic(b, "payment_charged"));
        let always = faults(Some("order_created:always"), &[]).expect("valid");
        assert!(always.should_panic(a, ORDER_CREATED));
        assert!(always.should_panic(a, ORDER_CREATED));
        let first = faults(Some("payment_charged:first=2"), &[]).expect("valid");
        let hits: Vec<bool> = (0..4)
            .map(|_| first.should_panic(a, "payment_charged"))
            .collect();
        assert_eq!(hits, [true, true, false, false]);
        assert!(
            first.should_panic(b, "payment_charged"),
            "counted per order"
        );
        let never = faults(Some("stock_rejected:0"), &[]).expect("valid");
        assert!(!never.should_panic(a, "stock_rejected"));
    }

    #[test]
    fn every_saga_event_and_command_type_can_be_named() {
        for event in Event::NAMES {
            faults(Some(event), &[]).expect(event);
        }
        let dropping = faults(None, &CommandBody::KINDS).expect("every command type");
        for kind in CommandBody::KINDS {
            assert!(dropping.drops(kind), "{kind}");
        }
        assert!(
            !dropping.drops("stock.reserved"),
            "a reply is not a command"
        );
    }

    #[test]
    fn unknown_names_and_modes_are_refused_with_the_known_ones() {
        let error = faults(Some("teleported"), &[]).expect_err("unknown event");
        assert!(
            error.starts_with("invalid FAULT_ACTOR_PANIC: unknown event \"teleported\"; one of order_created, stock_reserved,"),
            "{error}"
        );
        let error = faults(Some("stock_reserved:2"), &[]).expect_err("not a probability");
        assert_eq!(
            error,
            "invalid FAULT_ACTOR_PANIC: \"2\" is neither `always` nor a probability 0.0-1.0"
        );
        let error = faults(None, &["payment.charge", "stock.teleport"]).expect_err("unknown");
        assert_eq!(
            error,
            "invalid FAULT_DROP_COMMANDS: unknown command type \"stock.teleport\"; one of \
             stock.reserve, stock.release, payment.charge, payment.refund, shipping.schedule, \
             shipping.cancel"
        );
    }
}
