//! The documents that restate the saga, checked against `saga::apply` (the code is the truth):
//!
//! - the transition tables (docs/design.md, and the rustdoc of src/domain/saga.rs), row by
//!   row in both directions: every row is what `apply` does for every saga reachable from a
//!   new order that fits the row, and every event `apply` accepts in a reachable saga has a
//!   row;
//! - the saga diagram (README.md, docs/design.md), line by line: each arrow is a transition
//!   `apply` makes, with the commands it names;
//! - the list of statuses beside the diagram, with the terminal ones marked.
//!
//! A table row reads `| From | Event (conditions) | To | Step states after | Effects |`.
//! Events are written in words (`stock reserved`) or as the variant (`` `StockReserved` ``);
//! commands as their wire type (`stock.reserve`) or variant (`ReserveStock`). Conditions, in
//! the parentheses or after a comma: `payment mode auto|manual`, the step of a timeout
//! (`payment`), a step state (`` payment `CHARGING` ``), `another undo pending`,
//! `nothing else pending`. Step states not listed are unchanged. A row or line this test
//! cannot read fails it, so the vocabulary stays small.

use order_service::domain::saga::{
    self, Command, Effect, Event, OrderStatus, PaymentMode, PaymentOutcome, PaymentState,
    ReservationState, Saga, ShipmentState, Step,
};
use order_service::messaging::messages::{CommandBody, ReplyBody};
use std::collections::{HashSet, VecDeque};
use std::path::Path;

const REASON: &str = "a reason";
const MODES: [PaymentMode; 2] = [PaymentMode::Auto, PaymentMode::Manual];

#[test]
fn the_transition_table_in_docs_design_md_is_what_apply_does() {
    let doc = read("docs/design.md");
    check_table("docs/design.md", &doc);
}

#[test]
fn the_transition_table_in_the_rustdoc_of_saga_rs_is_what_apply_does() {
    let source = read("src/domain/saga.rs");
    let doc: String = source
        .lines()
        .filter_map(|line| line.strip_prefix("//!"))
        .map(|line| format!("{}\n", line.strip_prefix(' ').unwrap_or(line)))
        .collect();
    check_table("src/domain/saga.rs", &doc);
}

#[test]
fn the_saga_diagram_and_statuses_in_the_readme_are_what_apply_does() {
    let doc = read("README.md");
    check_diagram("README.md", &doc);
    check_statuses("README.md", &doc);
}

#[test]
fn the_saga_diagram_and_statuses_in_docs_design_md_are_what_apply_does() {
    let doc = read("docs/design.md");
    check_diagram("docs/design.md", &doc);
    check_statuses("docs/design.md", &doc);
}

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn fail_on(file: &str, what: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{file}: the {what} disagrees with src/domain/saga.rs (the code is the truth):\n  {}",
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------
// What the state machine does

/// One event of each kind and payload the state machine distinguishes.
fn all_events() -> Vec<Event> {
    let mut events = vec![
        Event::StockReserved,
        Event::StockRejected {
            reason: REASON.into(),
        },
        Event::PaymentCharged,
        Event::PaymentDeclined {
            reason: REASON.into(),
        },
        Event::ShipmentScheduled,
        Event::ShipmentFailed {
            reason: REASON.into(),
        },
        Event::StockReleased,
        Event::PaymentRefunded,
        Event::ShipmentCancelled,
    ];
    for step in [Step::Reservation, Step::Payment, Step::Shipment] {
        events.push(Event::StepTimedOut { step });
    }
    for forced in [
        None,
        Some(PaymentOutcome::Approve),
        Some(PaymentOutcome::Decline),
    ] {
        events.push(Event::PaymentSubmitted { forced });
    }
    for target in OrderStatus::ALL {
        events.push(Event::AdminOverride {
            target,
            reason: REASON.into(),
        });
    }
    events
}

/// Fails to compile when an event, step or mode is added, so `all_events` and `MODES`
/// cannot silently miss it.
#[allow(dead_code)]
fn every_variant_is_listed(event: &Event, step: Step, mode: PaymentMode) {
    match event {
        Event::StockReserved
        | Event::StockRejected { .. }
        | Event::PaymentCharged
        | Event::PaymentDeclined { .. }
        | Event::ShipmentScheduled
        | Event::ShipmentFailed { .. }
        | Event::StockReleased
        | Event::PaymentRefunded
        | Event::ShipmentCancelled
        | Event::StepTimedOut { .. }
        | Event::PaymentSubmitted { .. }
        | Event::AdminOverride { .. } => {}
    }
    match step {
        Step::Reservation | Step::Payment | Step::Shipment => {}
    }
    match mode {
        PaymentMode::Auto | PaymentMode::Manual => {}
    }
}

type StepStates = (ReservationState, PaymentState, ShipmentState);

fn steps_of(saga: &Saga) -> StepStates {
    (saga.reservation, saga.payment, saga.shipment)
}

/// Every saga a new order can reach, one per status and step states (the failure reason
/// does not change what `apply` accepts).
fn reachable_sagas() -> Vec<Saga> {
    let (first, _) = saga::start();
    let mut seen = HashSet::from([(first.status, steps_of(&first))]);
    let mut found = vec![first.clone()];
    let mut queue = VecDeque::from([first]);
    while let Some(current) = queue.pop_front() {
        for event in all_events() {
            for mode in MODES {
                if let Ok(t) = saga::apply(&current, &event, mode)
                    && seen.insert((t.saga.status, steps_of(&t.saga)))
                {
                    found.push(t.saga.clone());
                    queue.push_back(t.saga);
                }
            }
        }
    }
    found
}

fn command_wire_type(command: Command) -> &'static str {
    let body = match command {
        Command::ReserveStock => CommandBody::ReserveStock { items: Vec::new() },
        Command::ReleaseStock => CommandBody::ReleaseStock {},
        Command::ChargePayment { forced } => CommandBody::ChargePayment {
            amount_cents: 0,
            currency: String::new(),
            forced,
        },
        Command::RefundPayment => CommandBody::RefundPayment {},
        Command::ScheduleShipment => CommandBody::ScheduleShipment { items: Vec::new() },
        Command::CancelShipment => CommandBody::CancelShipment {},
    };
    body.kind()
}

/// Whether the documents' name for a command (wire type or variant) is this command.
fn names_command(name: &str, command: Command) -> bool {
    let variant = format!("{command:?}");
    let variant = variant.split([' ', '{']).next().unwrap_or_default();
    name == command_wire_type(command) || name == variant
}

fn effect_matches(documented: &DocEffect, actual: &Effect) -> bool {
    match (documented, actual) {
        (DocEffect::Publish(name), Effect::Publish(event)) => name == event.routing_key(),
        (DocEffect::Send(name), Effect::Send(command)) => names_command(name, *command),
        _ => false,
    }
}

fn describe(effects: &[Effect]) -> String {
    if effects.is_empty() {
        return "none".into();
    }
    let names: Vec<String> = effects
        .iter()
        .map(|effect| match effect {
            Effect::Publish(event) => format!("publish {}", event.routing_key()),
            Effect::Send(command) => format!("send {}", command_wire_type(*command)),
        })
        .collect();
    names.join(", ")
}

fn describe_saga(saga: &Saga) -> String {
    format!(
        "{} (reservation {}, payment {}, shipment {})",
        saga.status,
        saga.reservation.as_str(),
        saga.payment.as_str(),
        saga.shipment.as_str()
    )
}

// ---------------------------------------------------------------------------------------
// The transition table

#[derive(Debug)]
enum Condition {
    Mode(PaymentMode),
    TimedOut(Step),
    State(StepState),
    /// `another undo pending` (true) or `nothing else pending` (false).
    OthersPending(bool),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum StepState {
    Reservation(ReservationState),
    Payment(PaymentState),
    Shipment(ShipmentState),
}

#[derive(Debug)]
enum DocEffect {
    Publish(String),
    Send(String),
}

#[derive(Debug)]
struct Row {
    text: String,
    /// `None`: the new order row.
    from: Option<OrderStatus>,
    events: Vec<Event>,
    conditions: Vec<Condition>,
    to: OrderStatus,
    steps_after: Vec<StepState>,
    effects: Vec<DocEffect>,
}

const TABLE_HEADER: &str =
    "| From | Event (condition) | To | Step states after | Effects, in order |";

fn check_table(file: &str, doc: &str) {
    let rows = match parse_table(doc) {
        Ok(rows) => rows,
        Err(problem) => panic!("{file}: the transition table: {problem}"),
    };
    let sagas = reachable_sagas();
    let mut problems = Vec::new();

    // Every row is what `apply` does, for every reachable saga the row describes.
    for row in &rows {
        let Some(from) = row.from else {
            problems.extend(check_new_order_row(row));
            continue;
        };
        let mut cases = 0;
        for before in sagas.iter().filter(|s| s.status == from) {
            for event in &row.events {
                for mode in MODES {
                    if !row.holds(before, event, mode) {
                        continue;
                    }
                    cases += 1;
                    if let Some(problem) = check_case(row, before, event, mode) {
                        problems.push(problem);
                    }
                }
            }
        }
        if cases == 0 {
            problems.push(format!(
                "row `{}`: no saga a new order can reach fits it",
                row.text
            ));
        }
    }

    // Every event `apply` accepts has a row.
    for before in &sagas {
        for event in all_events() {
            for mode in MODES {
                let Ok(t) = saga::apply(before, &event, mode) else {
                    continue;
                };
                let documented = rows.iter().any(|row| {
                    row.from == Some(before.status)
                        && row.events.contains(&event)
                        && row.holds(before, &event, mode)
                });
                if !documented {
                    problems.push(format!(
                        "no row for {event:?} (payment mode {mode:?}) in {}, which apply takes \
                         to {} with effects: {}",
                        describe_saga(before),
                        describe_saga(&t.saga),
                        describe(&t.effects)
                    ));
                }
            }
        }
    }
    fail_on(file, "transition table", problems);
}

fn check_new_order_row(row: &Row) -> Vec<String> {
    let (saga, effects) = saga::start();
    let mut problems = Vec::new();
    if row.to != saga.status {
        problems.push(format!(
            "row `{}`: a new order is {}, not {}",
            row.text, saga.status, row.to
        ));
    }
    let listed = [
        StepState::Reservation(saga.reservation),
        StepState::Payment(saga.payment),
        StepState::Shipment(saga.shipment),
    ];
    if !listed.iter().all(|state| row.steps_after.contains(state))
        || row.steps_after.len() != listed.len()
    {
        problems.push(format!(
            "row `{}`: a new order's step states are {}",
            row.text,
            describe_saga(&saga)
        ));
    }
    if !effects_match(&row.effects, &effects) {
        problems.push(format!(
            "row `{}`: creating an order's effects are {}",
            row.text,
            describe(&effects)
        ));
    }
    problems
}

fn effects_match(documented: &[DocEffect], actual: &[Effect]) -> bool {
    documented.len() == actual.len()
        && documented
            .iter()
            .zip(actual)
            .all(|(doc, effect)| effect_matches(doc, effect))
}

/// One reachable saga and event a row describes: what `apply` does must be the row.
fn check_case(row: &Row, before: &Saga, event: &Event, mode: PaymentMode) -> Option<String> {
    let case = format!(
        "row `{}` for {event:?} (payment mode {mode:?}) in {}",
        row.text,
        describe_saga(before)
    );
    let t = match saga::apply(before, event, mode) {
        Ok(t) => t,
        Err(refusal) => return Some(format!("{case}: apply refuses it ({refusal})")),
    };
    let mut expected = before.clone();
    expected.status = row.to;
    for state in &row.steps_after {
        match *state {
            StepState::Reservation(s) => expected.reservation = s,
            StepState::Payment(s) => expected.payment = s,
            StepState::Shipment(s) => expected.shipment = s,
        }
    }
    if (expected.status, steps_of(&expected)) != (t.saga.status, steps_of(&t.saga)) {
        return Some(format!(
            "{case}: apply goes to {}, the row says {}",
            describe_saga(&t.saga),
            describe_saga(&expected)
        ));
    }
    if !effects_match(&row.effects, &t.effects) {
        return Some(format!(
            "{case}: apply's effects are {}, the row says {:?}",
            describe(&t.effects),
            row.effects
        ));
    }
    None
}

impl Row {
    /// Whether this row describes `event` in `before` under `mode` (status and event aside).
    fn holds(&self, before: &Saga, event: &Event, mode: PaymentMode) -> bool {
        self.conditions.iter().all(|condition| match condition {
            Condition::Mode(m) => *m == mode,
            Condition::TimedOut(step) => *event == Event::StepTimedOut { step: *step },
            Condition::State(StepState::Reservation(s)) => before.reservation == *s,
            Condition::State(StepState::Payment(s)) => before.payment == *s,
            Condition::State(StepState::Shipment(s)) => before.shipment == *s,
            Condition::OthersPending(others) => (steps_in_flight(before) > 1) == *others,
        })
    }
}

/// Steps whose answer the saga awaits: the undo ones, and the forward ones.
fn steps_in_flight(saga: &Saga) -> usize {
    [
        saga.reservation == ReservationState::Releasing,
        matches!(
            saga.payment,
            PaymentState::Refunding | PaymentState::Charging
        ),
        matches!(
            saga.shipment,
            ShipmentState::Cancelling | ShipmentState::Scheduling
        ),
    ]
    .into_iter()
    .filter(|in_flight| *in_flight)
    .count()
}

fn parse_table(doc: &str) -> Result<Vec<Row>, String> {
    let mut lines = doc.lines().skip_while(|line| line.trim() != TABLE_HEADER);
    if lines.next().is_none() {
        return Err(format!("no table with the header `{TABLE_HEADER}`"));
    }
    let rows: Vec<Row> = lines
        .skip(1) // |---|---|
        .take_while(|line| line.trim_start().starts_with('|'))
        .map(parse_row)
        .collect::<Result<_, _>>()?;
    if rows.is_empty() {
        return Err("the table has no rows".into());
    }
    Ok(rows)
}

fn parse_row(line: &str) -> Result<Row, String> {
    let cells: Vec<&str> = line
        .trim()
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect();
    let [from, event, to, steps, effects] = cells[..] else {
        return Err(format!("row `{line}`: expected five cells"));
    };
    let context = |problem: String| format!("row `{line}`: {problem}");
    let from = match from {
        "*(new order)*" => None,
        status => Some(parse_status(status).map_err(context)?),
    };
    let (events, conditions) = parse_event_cell(event).map_err(context)?;
    if from.is_none() != (events.is_empty()) {
        return Err(context(
            "only the new order row has the event `created`".into(),
        ));
    }
    Ok(Row {
        text: line.trim().to_owned(),
        from,
        events,
        conditions,
        to: parse_status(to).map_err(context)?,
        steps_after: parse_steps(steps).map_err(context)?,
        effects: parse_effects(effects).map_err(context)?,
    })
}

/// `` `PENDING` `` -> the status.
fn parse_status(cell: &str) -> Result<OrderStatus, String> {
    let name = cell.trim().trim_matches('`');
    OrderStatus::parse(name).ok_or_else(|| format!("`{cell}` is not a status"))
}

/// `StockReserved` -> `stock reserved`; other text unchanged.
fn words_of_variant(token: &str) -> String {
    if !token.chars().any(|c| c.is_ascii_lowercase()) {
        return format!("`{token}`");
    }
    let mut words = String::new();
    for (i, c) in token.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            words.push(' ');
        }
        words.push(c.to_ascii_lowercase());
    }
    words
}

/// The event cell: what happens, then its conditions in parentheses or after commas.
/// Returns the events it may mean (empty for `created`) and the conditions.
fn parse_event_cell(cell: &str) -> Result<(Vec<Event>, Vec<Condition>), String> {
    let split = cell.find(['(', ',']).unwrap_or(cell.len());
    let (head, rest) = cell.split_at(split);
    // Variant names in backticks read as words; statuses keep their backticks.
    let head: Vec<String> = head
        .split_whitespace()
        .map(
            |word| match word.strip_prefix('`').and_then(|w| w.strip_suffix('`')) {
                Some(token) => words_of_variant(token),
                None => word.to_owned(),
            },
        )
        .collect();
    let head = head.join(" ");
    let events = match head.as_str() {
        "created" => Vec::new(),
        "stock reserved" => vec![Event::StockReserved],
        "stock rejected" => vec![Event::StockRejected {
            reason: REASON.into(),
        }],
        "payment charged" => vec![Event::PaymentCharged],
        "payment declined" => vec![Event::PaymentDeclined {
            reason: REASON.into(),
        }],
        "shipment scheduled" => vec![Event::ShipmentScheduled],
        "shipment failed" => vec![Event::ShipmentFailed {
            reason: REASON.into(),
        }],
        "stock released" => vec![Event::StockReleased],
        "payment refunded" => vec![Event::PaymentRefunded],
        "shipment cancelled" => vec![Event::ShipmentCancelled],
        "step timed out" => all_events()
            .into_iter()
            .filter(|e| matches!(e, Event::StepTimedOut { .. }))
            .collect(),
        "payment submitted" => all_events()
            .into_iter()
            .filter(|e| matches!(e, Event::PaymentSubmitted { .. }))
            .collect(),
        other => match other.strip_prefix("admin override to ") {
            Some(target) => vec![Event::AdminOverride {
                target: parse_status(target)?,
                reason: REASON.into(),
            }],
            None => return Err(format!("unknown event `{other}`")),
        },
    };
    let conditions = rest
        .split(['(', ')', ',', ';'])
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(parse_condition)
        .collect::<Result<_, _>>()?;
    Ok((events, conditions))
}

fn parse_condition(text: &str) -> Result<Condition, String> {
    Ok(match text {
        "payment mode auto" => Condition::Mode(PaymentMode::Auto),
        "payment mode manual" => Condition::Mode(PaymentMode::Manual),
        "reservation" => Condition::TimedOut(Step::Reservation),
        "payment" => Condition::TimedOut(Step::Payment),
        "shipment" => Condition::TimedOut(Step::Shipment),
        "another undo pending" | "another undo still pending" => Condition::OthersPending(true),
        "nothing else pending" => Condition::OthersPending(false),
        state => Condition::State(
            parse_step_state(state).map_err(|_| format!("unknown condition `{text}`"))?,
        ),
    })
}

/// `` payment `CHARGING` `` -> the step state.
fn parse_step_state(text: &str) -> Result<StepState, String> {
    let unknown = || format!("`{text}` is not a step state");
    let (step, state) = text.trim().split_once(' ').ok_or_else(unknown)?;
    let state = state.trim().trim_matches('`');
    match step {
        "reservation" => ReservationState::parse(state).map(StepState::Reservation),
        "payment" => PaymentState::parse(state).map(StepState::Payment),
        "shipment" => ShipmentState::parse(state).map(StepState::Shipment),
        _ => None,
    }
    .ok_or_else(unknown)
}

fn parse_steps(cell: &str) -> Result<Vec<StepState>, String> {
    if cell == "none" {
        return Ok(Vec::new());
    }
    cell.split(',').map(parse_step_state).collect()
}

/// `publish `order.failed`; send `payment.refund`, `stock.release``: the backticked names,
/// in order; text outside backticks (a note in parentheses) is not read.
fn parse_effects(cell: &str) -> Result<Vec<DocEffect>, String> {
    if cell == "none" {
        return Ok(Vec::new());
    }
    let mut effects = Vec::new();
    for part in cell.split(';').map(str::trim) {
        let (verb, names) = part
            .split_once(' ')
            .ok_or_else(|| format!("effect `{part}` is not `publish …` or `send …`"))?;
        let names = names.split('`').skip(1).step_by(2);
        match verb {
            "publish" => effects.extend(names.map(|n| DocEffect::Publish(n.to_owned()))),
            "send" => effects.extend(names.map(|n| DocEffect::Send(n.to_owned()))),
            _ => return Err(format!("effect `{part}` is not `publish …` or `send …`")),
        }
    }
    Ok(effects)
}

// ---------------------------------------------------------------------------------------
// The diagram and the statuses

/// The participants' replies by wire type, and the event each becomes.
fn replies() -> Vec<(&'static str, Event)> {
    let reason = || REASON.to_owned();
    [
        (ReplyBody::StockReserved {}, Event::StockReserved),
        (
            ReplyBody::StockRejected { reason: reason() },
            Event::StockRejected { reason: reason() },
        ),
        (ReplyBody::StockReleased {}, Event::StockReleased),
        (
            ReplyBody::PaymentCharged { amount_cents: 0 },
            Event::PaymentCharged,
        ),
        (
            ReplyBody::PaymentDeclined { reason: reason() },
            Event::PaymentDeclined { reason: reason() },
        ),
        (
            ReplyBody::PaymentRefunded { amount_cents: 0 },
            Event::PaymentRefunded,
        ),
        (
            ReplyBody::ShipmentScheduled {
                tracking_number: String::new(),
            },
            Event::ShipmentScheduled,
        ),
        (
            ReplyBody::ShipmentFailed { reason: reason() },
            Event::ShipmentFailed { reason: reason() },
        ),
        (ReplyBody::ShipmentCancelled {}, Event::ShipmentCancelled),
    ]
    .into_iter()
    .map(|(reply, event)| (reply.kind(), event))
    .collect()
}

/// The first code block after the `## The saga` heading.
fn saga_diagram(doc: &str) -> Option<Vec<&str>> {
    let mut lines = doc
        .lines()
        .skip_while(|line| line.trim() != "## The saga")
        .skip_while(|line| !line.starts_with("```"));
    lines.next()?;
    Some(lines.take_while(|line| !line.starts_with("```")).collect())
}

/// Each arrow of the diagram, `reply -> STATUS[, command a[ + b]][ -> FINAL]`, is a
/// transition `apply` makes from some reachable saga, sending exactly those commands; a
/// `-> FINAL` is where answering those commands leads; `(terminal…)` marks a terminal status.
/// `-> STATUS, command a` without a reply is the new order.
fn check_diagram(file: &str, doc: &str) {
    let Some(diagram) = saga_diagram(doc) else {
        panic!("{file}: no code block after `## The saga`");
    };
    let sagas = reachable_sagas();
    let replies = replies();
    let mut problems = Vec::new();
    let mut arrows = 0;
    for line in diagram.into_iter().filter(|line| line.contains("->")) {
        let parts: Vec<&str> = line.split("->").map(str::trim).collect();
        let parts = match parts.split_first() {
            Some((&"", rest)) => rest,
            _ => &parts[..],
        };
        let (event, claim) = match parts {
            [status, ..] if status.starts_with(|c: char| c.is_ascii_uppercase()) => (None, parts),
            [reply, rest @ ..] if reply.contains('.') && !reply.contains(' ') => {
                match replies.iter().find(|(kind, _)| kind == reply) {
                    Some((_, event)) => (Some(event), rest),
                    None => {
                        problems.push(format!("`{line}`: `{reply}` is not a reply"));
                        continue;
                    }
                }
            }
            // Prose (the synchronous check), not a transition.
            _ => continue,
        };
        arrows += 1;
        if let Err(problem) = check_arrow(&sagas, event, claim) {
            problems.push(format!("`{}`: {problem}", line.trim()));
        }
    }
    if arrows == 0 {
        problems.push("the diagram has no transitions".into());
    }
    fail_on(file, "saga diagram", problems);
}

fn check_arrow(sagas: &[Saga], event: Option<&Event>, claim: &[&str]) -> Result<(), String> {
    let Some((target, finally)) = claim.split_first() else {
        return Err("no status after the arrow".into());
    };
    let (status, rest) = target.split_at(target.find([',', ' ']).unwrap_or(target.len()));
    let status = parse_status(status)?;
    let terminal = rest.contains("(terminal");
    if terminal != status.is_terminal() {
        return Err(format!(
            "{status} is {}terminal",
            if status.is_terminal() { "" } else { "not " }
        ));
    }
    let commands: Vec<&str> = match rest.trim().strip_prefix(',') {
        Some(listed) => {
            let listed = listed.trim();
            let listed = listed
                .strip_prefix("commands ")
                .or_else(|| listed.strip_prefix("command "))
                .unwrap_or(listed);
            listed.split('+').map(str::trim).collect()
        }
        None => Vec::new(),
    };
    let sends = |effects: &[Effect]| -> bool {
        let sent: Vec<Command> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send(c) => Some(*c),
                Effect::Publish(_) => None,
            })
            .collect();
        sent.len() == commands.len()
            && sent
                .iter()
                .zip(&commands)
                .all(|(command, name)| names_command(name, *command))
    };
    let finally = match finally {
        [] => None,
        [status] => Some(parse_status(status)?),
        _ => return Err("more than one final status".into()),
    };

    let Some(event) = event else {
        let (saga, effects) = saga::start();
        return if saga.status == status && sends(&effects) && finally.is_none() {
            Ok(())
        } else {
            Err(format!(
                "a new order is {} with effects {}",
                describe_saga(&saga),
                describe(&effects)
            ))
        };
    };
    let made = sagas.iter().any(|before| {
        MODES
            .into_iter()
            .any(|mode| match saga::apply(before, event, mode) {
                Ok(t) => {
                    t.saga.status == status
                        && sends(&t.effects)
                        && finally.is_none_or(|end| answered(t.saga, &t.effects) == Some(end))
                }
                Err(_) => false,
            })
    });
    if made {
        Ok(())
    } else {
        Err(format!(
            "apply makes no such transition for {event:?} from any reachable saga"
        ))
    }
}

/// Where a compensating saga ends once each undo command it sent is answered.
fn answered(mut saga: Saga, effects: &[Effect]) -> Option<OrderStatus> {
    for effect in effects {
        let answer = match effect {
            Effect::Send(Command::ReleaseStock) => Event::StockReleased,
            Effect::Send(Command::RefundPayment) => Event::PaymentRefunded,
            Effect::Send(Command::CancelShipment) => Event::ShipmentCancelled,
            Effect::Send(_) | Effect::Publish(_) => continue,
        };
        saga = saga::apply(&saga, &answer, PaymentMode::Auto).ok()?.saga;
    }
    Some(saga.status)
}

/// `Statuses: `PENDING`, …, `CONFIRMED` (terminal), …`: every status, once, the terminal
/// ones marked.
fn check_statuses(file: &str, doc: &str) {
    let Some(start) = doc.find("Statuses: ") else {
        panic!("{file}: no `Statuses: ` list");
    };
    let list = &doc[start + "Statuses: ".len()..];
    let list = &list[..list.find(". ").unwrap_or(list.len())];
    let mut problems = Vec::new();
    let mut listed = Vec::new();
    for item in list
        .split(',')
        .map(|item| item.split_whitespace().collect::<Vec<_>>())
    {
        let (name, marks) = item.split_first().map_or(("", &[][..]), |(n, m)| (*n, m));
        let Ok(status) = parse_status(name) else {
            problems.push(format!("`{name}` is not a status"));
            continue;
        };
        let marked = marks.join(" ").contains("(terminal)");
        if marked != status.is_terminal() {
            problems.push(format!(
                "{status} is {}terminal",
                if status.is_terminal() { "" } else { "not " }
            ));
        }
        listed.push(status);
    }
    if listed != OrderStatus::ALL {
        problems.push(format!(
            "the list is {listed:?}; the statuses are {:?}",
            OrderStatus::ALL
        ));
    }
    fail_on(file, "list of statuses", problems);
}
