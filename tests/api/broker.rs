//! Test helper: a throwaway RabbitMQ virtual host per test.
//!
//! Every test gets its own vhost, so tests run in parallel against one broker without
//! seeing each other's queues, and a test never inherits messages left behind by another
//! run. The vhost is created and deleted with `rabbitmqctl`, which needs the broker running
//! locally on 127.0.0.1:5672 with the default `guest` user.

#![allow(dead_code)] // Not every test binary module uses every helper.

use std::process::Command;

/// A fresh vhost `test-<uuid>` on the local broker, deleted on drop.
#[derive(Debug)]
pub struct TestVhost {
    pub name: String,
    /// `amqp://guest:guest@127.0.0.1:5672/<percent-encoded vhost>`
    pub amqp_url: String,
}

impl TestVhost {
    /// Creates the vhost and grants `guest` full permissions on it.
    ///
    /// Panics with instructions when RabbitMQ (or `rabbitmqctl`) is not available.
    pub fn create() -> TestVhost {
        let name = format!("test-{}", uuid::Uuid::new_v4());
        rabbitmqctl(&["add_vhost", &name]);
        // Constructed before granting permissions so that Drop cleans up if that fails.
        let vhost = TestVhost {
            amqp_url: format!(
                "amqp://guest:guest@127.0.0.1:5672/{}",
                percent_encode(&name)
            ),
            name,
        };
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &vhost.name,
            "guest",
            ".*",
            ".*",
            ".*",
        ]);
        vhost
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        // Best effort: a leftover vhost costs nothing but clutter, and panicking in drop
        // (possibly while already unwinding) would hide the real failure.
        let outcome = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .output();
        match outcome {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "warning: could not delete vhost {}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(error) => eprintln!("warning: could not delete vhost {}: {error}", self.name),
        }
    }
}

fn rabbitmqctl(args: &[&str]) {
    const HOW: &str = "RabbitMQ must run on 127.0.0.1:5672 (user guest/guest) with \
                       `rabbitmqctl` on the PATH for these tests; start it with \
                       `rabbitmq-server -detached`";
    let output = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run `rabbitmqctl {}`: {error}. {HOW}",
                args.join(" ")
            )
        });
    assert!(
        output.status.success(),
        "`rabbitmqctl {}` failed ({}): {} {}. {HOW}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim(),
        String::from_utf8_lossy(&output.stdout).trim(),
    );
}

/// Percent-encodes a URL path segment (everything but RFC 3986 unreserved characters), as
/// the AMQP URI scheme requires for the vhost.
fn percent_encode(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[test]
fn percent_encode_escapes_reserved_characters() {
    assert_eq!(percent_encode("test-abc_1.2~"), "test-abc_1.2~");
    assert_eq!(percent_encode("/"), "%2F");
    assert_eq!(percent_encode("a b/c%"), "a%20b%2Fc%25");
}
