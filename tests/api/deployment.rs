//! The container set-up users start with: `docker-compose.yml` wires PostgreSQL, RabbitMQ
//! (with its management UI) and the service with health checks, and the service waits for
//! both to be healthy; the Dockerfile builds a small non-root image with a health check.
//! (`.ci/run` also runs `docker compose config` where a compose client is installed.)

use serde_yaml::Value;

fn compose() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"))
        .expect("docker-compose.yml exists");
    serde_yaml::from_str(&text).expect("docker-compose.yml is YAML")
}

#[test]
fn compose_runs_postgres_rabbitmq_and_the_service_with_health_checks() {
    let doc = compose();
    let services = &doc["services"];
    assert!(
        services["postgres"]["image"]
            .as_str()
            .expect("postgres image")
            .starts_with("postgres:15")
    );
    let rabbit = services["rabbitmq"]["image"]
        .as_str()
        .expect("rabbitmq image");
    assert!(
        rabbit.starts_with("rabbitmq:3.1") && rabbit.ends_with("-management"),
        "{rabbit}"
    );
    for name in ["postgres", "rabbitmq", "order-service", "participants"] {
        assert!(
            services[name]["healthcheck"]["test"].is_sequence(),
            "{name} has a health check"
        );
    }
    for name in ["order-service", "participants"] {
        for dependency in ["postgres", "rabbitmq"] {
            assert_eq!(
                services[name]["depends_on"][dependency]["condition"].as_str(),
                Some("service_healthy"),
                "{name} waits for {dependency}"
            );
        }
    }
    let env = &services["order-service"]["environment"];
    assert!(
        env["DATABASE_URL"]
            .as_str()
            .expect("DATABASE_URL")
            .starts_with("postgres://")
    );
    assert!(
        env["AMQP_URL"]
            .as_str()
            .expect("AMQP_URL")
            .starts_with("amqp://")
    );
    assert_eq!(env["LOG_FORMAT"].as_str(), Some("json"));
    assert_eq!(
        services["participants"]["command"][0].as_str(),
        Some("participants")
    );
}

#[test]
fn the_image_is_multi_stage_non_root_and_health_checked() {
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"))
        .expect("Dockerfile");
    assert_eq!(
        dockerfile
            .lines()
            .filter(|l| l.starts_with("FROM "))
            .count(),
        2,
        "build and runtime stages"
    );
    assert!(dockerfile.contains("--locked"), "builds with the lock file");
    assert!(
        dockerfile
            .lines()
            .any(|l| l.starts_with("USER ") && !l.contains("root")),
        "runs as a non-root user"
    );
    assert!(dockerfile.contains("HEALTHCHECK"));
    assert!(
        dockerfile.contains("FROM debian:bookworm-slim"),
        "small runtime image"
    );
}
