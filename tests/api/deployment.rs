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
    let stages = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .count();
    assert!(stages >= 2, "build and runtime stages");
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

/// A machine that runs the test suite has PostgreSQL on 5432 and RabbitMQ on 5672: `up` must
/// not try to bind them. Only the API, the broker's management UI and (profile `replicas`)
/// the load balancer in front of the replicas are published.
#[test]
fn compose_publishes_only_the_api_and_the_management_ui() {
    let doc = compose();
    let services = doc["services"].as_mapping().expect("services");
    let mut published = Vec::new();
    for (name, service) in services {
        for port in service["ports"].as_sequence().into_iter().flatten() {
            let spec = port.as_str().expect("ports in short syntax");
            let container = spec.rsplit(':').next().unwrap_or_default().to_owned();
            published.push((name.as_str().unwrap_or_default().to_owned(), container));
        }
    }
    published.sort();
    assert_eq!(
        published,
        [
            ("order-lb".to_owned(), "80".to_owned()),
            ("order-service".to_owned(), "8080".to_owned()),
            ("rabbitmq".to_owned(), "15672".to_owned())
        ]
    );
}

/// Profile `replicas`: three replicas of the service, each with its own identity and the
/// address the others reach it at, behind nginx, whose proxy timeout outlasts the longest
/// long poll (60 s) and which moves to the next replica on a connect error.
#[test]
fn compose_runs_three_replicas_behind_a_load_balancer() {
    let doc = compose();
    let services = &doc["services"];
    let replicas = Value::Sequence(vec![Value::from("replicas")]);
    for n in 1..=3 {
        let name = format!("order-service-{n}");
        let service = &services[name.as_str()];
        assert_eq!(service["profiles"], replicas, "{name}");
        assert_eq!(service["image"].as_str(), Some("order-service:latest"));
        assert!(
            service["ports"].is_null(),
            "{name} is reached through order-lb"
        );
        assert!(service["healthcheck"]["test"].is_sequence(), "{name}");
        let env = &service["environment"];
        assert_eq!(env["REPLICA_ID"].as_str(), Some(name.as_str()));
        assert_eq!(
            env["ADVERTISE_URL"].as_str(),
            Some(format!("http://{name}:8080").as_str())
        );
        for key in ["DATABASE_URL", "AMQP_URL", "LISTEN_ADDR", "ADMIN_TOKEN"] {
            assert_eq!(
                env[key], services["order-service"]["environment"][key],
                "{name} {key} as the single service's"
            );
        }
        for dependency in ["postgres", "rabbitmq"] {
            assert_eq!(
                service["depends_on"][dependency]["condition"].as_str(),
                Some("service_healthy"),
                "{name} waits for {dependency}"
            );
        }
    }
    let lb = &services["order-lb"];
    assert_eq!(lb["profiles"], replicas);
    assert!(
        lb["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("nginx:")),
        "an nginx image"
    );
    let conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/nginx/replicas.conf"
    ))
    .expect("deploy/nginx/replicas.conf");
    for n in 1..=3 {
        assert!(
            conf.contains(&format!("server order-service-{n}:8080")),
            "replica {n} in the upstream"
        );
    }
    assert!(conf.contains("proxy_next_upstream error"), "{conf}");
    let read_timeout = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("proxy_read_timeout "))
        .and_then(|v| v.trim_end_matches(';').strip_suffix('s'))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("proxy_read_timeout in seconds");
    assert!(read_timeout > 60, "proxy_read_timeout {read_timeout}s");
    assert!(
        lb["volumes"][0]
            .as_str()
            .is_some_and(|v| v.starts_with("./deploy/nginx/replicas.conf:")),
        "the config is mounted"
    );
}

/// `order-service:latest` exists nowhere but here: every service that names it builds it
/// and never pulls it from a registry.
#[test]
fn compose_builds_the_service_image_and_never_pulls_it() {
    let doc = compose();
    for (name, service) in doc["services"].as_mapping().expect("services") {
        if service["image"].as_str() == Some("order-service:latest") {
            assert_eq!(
                service["build"].as_str(),
                Some("."),
                "{name:?} builds the image"
            );
            assert_eq!(
                service["pull_policy"].as_str(),
                Some("build"),
                "{name:?} never pulls it"
            );
        }
    }
}

/// The database URLs say which TLS mode they use (the compose postgres serves none).
#[test]
fn compose_database_urls_say_their_sslmode() {
    let doc = compose();
    for name in ["order-service", "participants"] {
        let url = doc["services"][name]["environment"]["DATABASE_URL"]
            .as_str()
            .expect("DATABASE_URL");
        assert!(url.contains("sslmode="), "{name}: {url}");
    }
}

/// A source change rebuilds only the workspace: the dependencies are cooked from the
/// recipe (cargo-chef) in a layer before the sources are copied.
#[test]
fn the_image_caches_its_dependencies_in_a_layer_of_their_own() {
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"))
        .expect("Dockerfile");
    let build_stage = dockerfile
        .split("FROM ")
        .find(|stage| stage.contains("AS build"))
        .expect("a build stage");
    let cook = build_stage
        .find("cargo chef cook")
        .expect("cargo chef cook in the build stage");
    let sources = build_stage
        .find("COPY src src")
        .expect("the sources are copied");
    let build = build_stage
        .find("cargo build --release")
        .expect("the release build");
    assert!(
        cook < sources && sources < build,
        "cook, then copy the sources, then build"
    );
    assert!(
        dockerfile.contains("cargo chef prepare"),
        "a planner stage writes the recipe"
    );
}
