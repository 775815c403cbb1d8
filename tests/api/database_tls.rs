//! PostgreSQL over TLS, as every managed PostgreSQL wants it. A statement larger than one
//! TLS record (16 KiB: the group commit's batches are) leaves the socket in two writes; with
//! Nagle's algorithm on, the second waits for the server's delayed ACK (40 ms on Linux) and
//! every order behind that statement waits with it. The service's connections must run with
//! TCP_NODELAY, as libpq's do.

use crate::helpers::provision;
use order_service::persistence::Stores;
use sea_orm::{ConnectionTrait, Statement};
use std::collections::BTreeSet;
use std::os::fd::BorrowedFd;

#[tokio::test]
async fn the_service_s_postgresql_connections_use_tls_without_nagle_delays() {
    let (url, _amqp, _backing) = provision(false).await;
    let database = url.rsplit('/').next().expect("database name").to_owned();
    let stores = Stores::connect(&format!("{url}?sslmode=require"), 2)
        .await
        .expect("connecting with sslmode=require");
    stores.ping().await.expect("every store answers");

    // The server's view: our database's connections, their client ports, whether TLS.
    let rows = stores
        .orders
        .query_all_raw(Statement::from_sql_and_values(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT a.client_port, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = $1 AND a.client_port IS NOT NULL",
            [database.into()],
        ))
        .await
        .expect("reading pg_stat_activity");
    let mut ports = BTreeSet::new();
    for row in &rows {
        let port: i32 = row.try_get("", "client_port").expect("client_port");
        let ssl: bool = row.try_get("", "ssl").expect("ssl");
        assert!(ssl, "connection from port {port} is not TLS");
        ports.insert(u16::try_from(port).expect("a port"));
    }
    assert!(
        ports.len() >= 4,
        "one connection per store at least: {ports:?}"
    );

    // Our side of those connections: every one of them has TCP_NODELAY.
    let mut checked = BTreeSet::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: the pools hold these connections open for the whole test (`stores` lives
        // until the end); the borrow ends within this iteration.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&borrowed);
        let Some(local) = socket.local_addr().ok().and_then(|a| a.as_socket()) else {
            continue;
        };
        if ports.contains(&local.port()) {
            assert!(
                socket.tcp_nodelay().expect("reading TCP_NODELAY"),
                "the connection from port {} runs with Nagle's algorithm",
                local.port()
            );
            checked.insert(local.port());
        }
    }
    assert_eq!(
        checked, ports,
        "every connection of the service was found and checked"
    );
    stores.close().await;
}
