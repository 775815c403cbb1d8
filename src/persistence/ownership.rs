//! Which replica owns which partition of the orders, decided by PostgreSQL: one
//! session-level advisory lock per partition, held by the owner's dedicated session, which
//! the server releases when that session ends — the process died (its socket closed), or it
//! was silent longer than the lease (`idle_session_timeout`: paused, cut off). Every replica
//! also holds a shared "member" lock, so each can count the live replicas and its rank among
//! them, and so its fair share ([`fair_share`]): replicas above their share release
//! partitions, replicas below acquire free ones.
//!
//! Acquiring a partition bumps its epoch in the `partitions` table; every write of an order
//! is fenced by it (the group commit checks it in the same statement), so a replica that
//! lost a partition without noticing yet (paused past its lease) cannot commit for it.
//!
//! With one process owning everything (SQLite, or no broker to route replies by
//! partition) there is nothing to decide: [`Ownership::single`].

use crate::domain::partition::{fair_share, partition_of};
use crate::pause::Backoff;
use sea_orm::sqlx::{
    self, ConnectOptions, Connection, postgres::PgConnectOptions, postgres::PgConnection,
};
use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Advisory-lock key spaces (the first of the two keys): the shared lock every live
/// replica holds, and one exclusive lock per partition.
const MEMBERS_KEY: i32 = 0x4F4F_5301;
/// Held while a replica sets up the database at start-up (see [`StartupLock`]).
const STARTUP_KEY: i32 = 0x4F4F_5300;
const PARTITION_KEY: i32 = 0x4F4F_5302;

/// How long a released partition's work may take to stop before its lock is released
/// anyway (its writes are fenced from then on).
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Pauses between attempts to (re)connect the ownership session.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));

#[derive(Debug, Clone)]
pub struct OwnershipSettings {
    pub replica_id: String,
    /// The name the participants' replies to this replica are routed by.
    pub reply_to: String,
    /// Where the other replicas forward this one's requests.
    pub advertise_url: String,
    pub partitions: u16,
    /// Silence after which the server ends this replica's session, releasing its locks.
    pub lease: Duration,
}

impl OwnershipSettings {
    /// Each round of the ownership loop: a third of the lease, so that two missed rounds
    /// still leave the session alive.
    fn tick(&self) -> Duration {
        (self.lease / 3).max(Duration::from_millis(50))
    }
}

/// What the replica must do about a partition.
#[derive(Debug)]
pub enum Change {
    /// Owned from now on, under `epoch`: serve it (its replies, its orders' actors) and resume
    /// its orders.
    Acquired { partition: u16, epoch: i64 },
    /// To be handed over: stop serving it, then answer `done`; its lock is released after.
    Release {
        partition: u16,
        done: oneshot::Sender<()>,
    },
    /// No longer owned (the session ended): stop serving it at once.
    Lost { partition: u16 },
}

/// A partition's owner as the `partitions` table last said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub replica_id: String,
    pub url: String,
}

/// Cheap, cloneable view of this replica's partitions.
#[derive(Clone)]
pub struct Ownership {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: one process owns everything.
    settings: Option<OwnershipSettings>,
    /// The epoch of each partition this replica serves now.
    served: RwLock<Vec<Option<i64>>>,
    /// Each partition's owner as last read.
    owners: RwLock<Vec<Option<Owner>>>,
    members: AtomicUsize,
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ownership")
            .field("replica_id", &self.replica_id())
            .field("owned", &self.owned())
            .finish()
    }
}

impl Ownership {
    /// One process owns every order: no partitions, no fence.
    pub fn single() -> Ownership {
        Ownership {
            inner: Arc::new(Inner {
                settings: None,
                served: RwLock::new(Vec::new()),
                owners: RwLock::new(Vec::new()),
                members: AtomicUsize::new(1),
            }),
        }
    }

    fn partitioned(settings: OwnershipSettings) -> Ownership {
        let count = usize::from(settings.partitions);
        Ownership {
            inner: Arc::new(Inner {
                settings: Some(settings),
                served: RwLock::new(vec![None; count]),
                owners: RwLock::new(vec![None; count]),
                members: AtomicUsize::new(0),
            }),
        }
    }

    pub fn is_partitioned(&self) -> bool {
        self.inner.settings.is_some()
    }

    pub fn replica_id(&self) -> Option<&str> {
        self.inner.settings.as_ref().map(|s| s.replica_id.as_str())
    }

    /// Where the replies to this replica's commands go (`None` when not partitioned: to
    /// the shared reply queue).
    pub fn reply_to(&self) -> Option<&str> {
        self.inner.settings.as_ref().map(|s| s.reply_to.as_str())
    }

    /// The number of partitions (0 when not partitioned).
    pub fn partitions(&self) -> u16 {
        self.inner.settings.as_ref().map_or(0, |s| s.partitions)
    }

    /// The order's partition, when orders are partitioned.
    pub fn partition_of(&self, id: Uuid) -> Option<u16> {
        self.inner
            .settings
            .as_ref()
            .map(|s| partition_of(id, s.partitions))
    }

    /// Whether this replica serves the order now (always, when not partitioned).
    pub fn serves(&self, id: Uuid) -> bool {
        self.partition_of(id)
            .is_none_or(|p| self.epoch(p).is_some())
    }

    /// The epoch under which this replica serves `partition`, if it does.
    pub fn epoch(&self, partition: u16) -> Option<i64> {
        let served = self.inner.served.read().ok()?;
        served.get(usize::from(partition)).copied().flatten()
    }

    /// What a write batch may touch: every partition served now with its epoch (`None`
    /// when not partitioned).
    pub fn fence(&self) -> Option<crate::persistence::orders::Fence> {
        let partitions = self.inner.settings.as_ref()?.partitions;
        let served = self.inner.served.read().ok()?;
        Some(crate::persistence::orders::Fence {
            partitions,
            held: (0u16..)
                .zip(served.iter())
                .filter_map(|(p, e)| e.map(|e| (p, e)))
                .collect(),
        })
    }

    /// Whether this replica serves any partition now (always, when not partitioned).
    pub fn owns_any(&self) -> bool {
        self.inner.settings.is_none()
            || self
                .inner
                .served
                .read()
                .is_ok_and(|served| served.iter().any(Option::is_some))
    }

    /// The partitions served now, in order.
    pub fn owned(&self) -> Vec<u16> {
        let Ok(served) = self.inner.served.read() else {
            return Vec::new();
        };
        (0u16..)
            .zip(served.iter())
            .filter_map(|(p, e)| e.map(|_| p))
            .collect()
    }

    /// The partition's owner as last read from the table (this replica included).
    pub fn owner(&self, partition: u16) -> Option<Owner> {
        let owners = self.inner.owners.read().ok()?;
        owners.get(usize::from(partition)).cloned().flatten()
    }

    /// Live replicas as last counted (1 when not partitioned).
    pub fn members(&self) -> usize {
        self.inner.members.load(Ordering::Relaxed)
    }

    fn serve(&self, partition: u16, epoch: Option<i64>) {
        if let Ok(mut served) = self.inner.served.write()
            && let Some(slot) = served.get_mut(usize::from(partition))
        {
            *slot = epoch;
        }
    }
}

/// Replicas starting together on one PostgreSQL take turns to create the schemas, migrate
/// and seed (concurrent `CREATE SCHEMA`/`CREATE TABLE` of the same names fail): a
/// session-level advisory lock, held from [`StartupLock::acquire`] to
/// [`StartupLock::release`]. Nothing on SQLite (one process).
pub struct StartupLock(Option<PgConnection>);

impl StartupLock {
    pub async fn acquire(database_url: &str) -> anyhow::Result<StartupLock> {
        if crate::persistence::is_sqlite(database_url) {
            return Ok(StartupLock(None));
        }
        // Waiting for the lock is the point: not a slow statement to warn about.
        let options = PgConnectOptions::from_str(database_url)?
            .application_name("order-service start-up")
            .disable_statement_logging();
        let mut conn = PgConnection::connect_with(&options).await?;
        sqlx::query("SELECT pg_advisory_lock($1, 0)")
            .bind(STARTUP_KEY)
            .execute(&mut conn)
            .await?;
        Ok(StartupLock(Some(conn)))
    }

    /// Releases the lock (closing the session releases it too, as does a crash).
    pub async fn release(self) {
        if let Some(conn) = self.0 {
            let _ = conn.close().await;
        }
    }
}

/// Starts deciding ownership for `settings` on the database at `database_url`: sets up the
/// `partitions` rows (failing if the database was set up with another partition count),
/// takes a first share, then runs the loop in the background. It hands every partition over
/// and leaves at `handover` when other replicas are there to take them, else at `shutdown`
/// (a lone replica keeps serving while it drains). The changes come on the returned channel;
/// the returned task ends once everything was handed over.
pub async fn start(
    database_url: &str,
    settings: OwnershipSettings,
    handover: CancellationToken,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    Ownership,
    mpsc::UnboundedReceiver<Change>,
    tokio::task::JoinHandle<()>,
)> {
    let options = connect_options(database_url, &settings)?;
    let mut conn = PgConnection::connect_with(&options).await?;
    prepare_table(&mut conn, settings.partitions).await?;
    let ownership = Ownership::partitioned(settings.clone());
    let (changes, receiver) = mpsc::unbounded_channel();
    let mut engine = Engine {
        settings,
        ownership: ownership.clone(),
        options,
        changes,
        releasing: Vec::new(),
    };
    // The first share is taken before the replica serves: a lone replica starts owning
    // everything, as one process always did.
    let pid = engine.join(&mut conn).await?;
    engine.round(&mut conn, pid).await?;
    let task = tokio::spawn(engine.run(Some((conn, pid)), Stops { handover, shutdown }));
    Ok((ownership, receiver, task))
}

fn connect_options(
    database_url: &str,
    settings: &OwnershipSettings,
) -> anyhow::Result<PgConnectOptions> {
    let lease_ms = settings.lease.as_millis().to_string();
    Ok(PgConnectOptions::from_str(database_url)?
        .application_name(&format!("order-service ownership {}", settings.replica_id))
        // The server ends the session (and so releases its locks) after this much silence.
        .options([("idle_session_timeout", lease_ms.as_str())])
        // A slow round is handled (and logged) by the loop itself.
        .disable_statement_logging())
}

/// One row per partition, created once; the count is fixed for the life of the database.
async fn prepare_table(conn: &mut PgConnection, partitions: u16) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO partitions (partition, epoch) SELECT g, 0 FROM generate_series(0, $1 - 1) g
         ON CONFLICT (partition) DO NOTHING",
    )
    .bind(i32::from(partitions))
    .execute(&mut *conn)
    .await?;
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM partitions")
        .fetch_one(&mut *conn)
        .await?;
    if count != i64::from(partitions) {
        anyhow::bail!(
            "PARTITIONS={partitions}, but this database was set up with {count} partitions; \
             the count is fixed for the life of a database (set PARTITIONS={count})"
        );
    }
    Ok(())
}

/// When the engine hands everything over (see [`start`]).
struct Stops {
    handover: CancellationToken,
    shutdown: CancellationToken,
}

struct Engine {
    settings: OwnershipSettings,
    ownership: Ownership,
    options: PgConnectOptions,
    changes: mpsc::UnboundedSender<Change>,
    /// Partitions being handed over: their lock is released once their work has stopped.
    releasing: Vec<(u16, oneshot::Receiver<()>, Instant)>,
}

/// The lock holders seen in one round.
struct Locks {
    members: Vec<i32>,
    taken: BTreeSet<u16>,
}

impl Engine {
    fn settings(&self) -> &OwnershipSettings {
        &self.settings
    }

    async fn run(mut self, mut first: Option<(PgConnection, i32)>, stops: Stops) {
        let shutdown = &stops.shutdown;
        let mut backoff = RECONNECT;
        while !shutdown.is_cancelled() {
            let joined = match first.take() {
                Some(joined) => Ok(joined),
                None => self.connect_and_join().await,
            };
            let (mut conn, pid) = match joined {
                Ok(joined) => joined,
                Err(error) => {
                    let pause = backoff.next_pause();
                    tracing::warn!(%error, ?pause, "ownership session: cannot connect; retrying");
                    if !crate::pause::sleep_or_shutdown(shutdown, pause).await {
                        return;
                    }
                    continue;
                }
            };
            match self.session(&mut conn, pid, &stops).await {
                Ok(()) => {
                    // Shut down: everything was handed over; leave.
                    let _ = conn.close().await;
                    return;
                }
                Err(error) => {
                    tracing::error!(%error, owned = ?self.ownership.owned(),
                        "ownership session lost: no longer serving any partition");
                    self.lose_all();
                    backoff.reset();
                }
            }
            if !crate::pause::sleep_or_shutdown(shutdown, backoff.next_pause()).await {
                return;
            }
        }
    }

    async fn connect_and_join(&mut self) -> anyhow::Result<(PgConnection, i32)> {
        let mut conn = PgConnection::connect_with(&self.options).await?;
        let pid = self.join(&mut conn).await?;
        Ok((conn, pid))
    }

    /// Takes the member lock; returns the session's backend pid (its rank's key).
    async fn join(&mut self, conn: &mut PgConnection) -> anyhow::Result<i32> {
        sqlx::query("SELECT pg_advisory_lock_shared($1, 0)")
            .bind(MEMBERS_KEY)
            .execute(&mut *conn)
            .await?;
        let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await?;
        tracing::info!(
            replica = self.settings().replica_id,
            pid,
            "joined the replicas"
        );
        Ok(pid)
    }

    /// Rebalances every tick until shutdown (`Ok`, after handing everything over) or until
    /// the session fails (`Err`: whatever it held is no longer ours).
    async fn session(
        &mut self,
        conn: &mut PgConnection,
        pid: i32,
        stops: &Stops,
    ) -> anyhow::Result<()> {
        let tick = self.settings().tick();
        // A round that cannot finish within this leaves the lease in doubt: stop serving
        // before another replica could be given our partitions.
        let round_limit = self.settings().lease / 2;
        loop {
            tokio::time::timeout(round_limit, self.round(conn, pid))
                .await
                .map_err(|_| {
                    anyhow::anyhow!("an ownership round took longer than {round_limit:?}")
                })??;
            let others = self.ownership.members() > 1;
            if stops.shutdown.is_cancelled() || (stops.handover.is_cancelled() && others) {
                return self.leave(conn).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stops.shutdown.cancelled() => {}
                _ = stops.handover.cancelled(), if !stops.handover.is_cancelled() => {}
            }
        }
    }

    async fn round(&mut self, conn: &mut PgConnection, pid: i32) -> anyhow::Result<()> {
        self.finish_releases(conn, false).await?;
        let locks = read_locks(conn).await?;
        let members = locks.members.len();
        self.ownership
            .inner
            .members
            .store(members, Ordering::Relaxed);
        let rank = locks.members.iter().position(|&p| p == pid).unwrap_or(0);
        let partitions = self.settings().partitions;
        let target = fair_share(partitions, members, rank);
        let owned = self.ownership.owned();
        let held = owned.len() + self.releasing.len();
        if owned.len() > target {
            // The highest first: any would do, and this keeps the choice stable.
            for &partition in owned.iter().rev().take(owned.len() - target) {
                self.release(partition);
            }
        } else if held < target {
            let start = usize::from(partitions) * rank / members.max(1);
            let free = (0..usize::from(partitions))
                .map(|i| ((start + i) % usize::from(partitions)) as u16)
                .filter(|p| !locks.taken.contains(p));
            let mut wanted = target - held;
            for partition in free {
                if wanted == 0 {
                    break;
                }
                if self.acquire(conn, partition).await? {
                    wanted -= 1;
                }
            }
        }
        self.read_owners(conn).await
    }

    async fn acquire(&mut self, conn: &mut PgConnection, partition: u16) -> anyhow::Result<bool> {
        let (locked,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1, $2)")
            .bind(PARTITION_KEY)
            .bind(i32::from(partition))
            .fetch_one(&mut *conn)
            .await?;
        if !locked {
            return Ok(false);
        }
        let settings = self.settings();
        let (epoch,): (i64,) = sqlx::query_as(
            "UPDATE partitions SET epoch = epoch + 1, owner = $2, owner_url = $3,
                 acquired_at = now()
             WHERE partition = $1 RETURNING epoch",
        )
        .bind(i32::from(partition))
        .bind(&settings.replica_id)
        .bind(&settings.advertise_url)
        .fetch_one(&mut *conn)
        .await?;
        tracing::info!(partition, epoch, "acquired partition");
        metrics::counter!("partition_ownership_changes_total", "change" => "acquired").increment(1);
        self.ownership.serve(partition, Some(epoch));
        let _ = self.changes.send(Change::Acquired { partition, epoch });
        Ok(true)
    }

    /// Stops serving `partition` (its writes are fenced from now on) and asks for its work
    /// to stop; the lock goes once it has ([`Engine::finish_releases`]).
    fn release(&mut self, partition: u16) {
        tracing::info!(partition, "handing partition over");
        self.ownership.serve(partition, None);
        let (done, stopped) = oneshot::channel();
        let _ = self.changes.send(Change::Release { partition, done });
        self.releasing.push((partition, stopped, Instant::now()));
    }

    /// Releases the locks of the partitions whose work has stopped (or took too long); all
    /// of them when `all`, after waiting for their work.
    async fn finish_releases(&mut self, conn: &mut PgConnection, all: bool) -> anyhow::Result<()> {
        let mut still = Vec::new();
        for (partition, mut stopped, since) in std::mem::take(&mut self.releasing) {
            let done = if all {
                let left = RELEASE_WAIT.saturating_sub(since.elapsed());
                let _ = tokio::time::timeout(left, &mut stopped).await;
                true
            } else {
                !matches!(stopped.try_recv(), Err(oneshot::error::TryRecvError::Empty))
                    || since.elapsed() >= RELEASE_WAIT
            };
            if !done {
                still.push((partition, stopped, since));
                continue;
            }
            sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                .bind(PARTITION_KEY)
                .bind(i32::from(partition))
                .execute(&mut *conn)
                .await?;
            tracing::info!(partition, "released partition");
            metrics::counter!("partition_ownership_changes_total", "change" => "released")
                .increment(1);
        }
        self.releasing = still;
        Ok(())
    }

    /// Hands every partition over and leaves the replicas (shutdown).
    async fn leave(&mut self, conn: &mut PgConnection) -> anyhow::Result<()> {
        for partition in self.ownership.owned() {
            self.release(partition);
        }
        self.finish_releases(conn, true).await?;
        sqlx::query("SELECT pg_advisory_unlock_shared($1, 0)")
            .bind(MEMBERS_KEY)
            .execute(&mut *conn)
            .await?;
        tracing::info!("left the replicas");
        Ok(())
    }

    /// The session is gone, and with it every lock: stop serving everything at once.
    fn lose_all(&mut self) {
        for partition in self.ownership.owned() {
            self.ownership.serve(partition, None);
            metrics::counter!("partition_ownership_changes_total", "change" => "lost").increment(1);
            let _ = self.changes.send(Change::Lost { partition });
        }
        // Their locks went with the session; their work is being stopped.
        self.releasing.clear();
        self.ownership.inner.members.store(0, Ordering::Relaxed);
    }

    async fn read_owners(&mut self, conn: &mut PgConnection) -> anyhow::Result<()> {
        let rows: Vec<(i32, Option<String>, Option<String>)> =
            sqlx::query_as("SELECT partition, owner, owner_url FROM partitions")
                .fetch_all(&mut *conn)
                .await?;
        if let Ok(mut owners) = self.ownership.inner.owners.write() {
            for (partition, replica_id, url) in rows {
                if let (Some(slot), Some(replica_id), Some(url)) = (
                    usize::try_from(partition)
                        .ok()
                        .and_then(|p| owners.get_mut(p)),
                    replica_id,
                    url,
                ) {
                    *slot = Some(Owner { replica_id, url });
                }
            }
        }
        Ok(())
    }
}

/// Who holds the member lock, and which partition locks are taken, in this database.
async fn read_locks(conn: &mut PgConnection) -> anyhow::Result<Locks> {
    let rows: Vec<(i64, i64, i32)> = sqlx::query_as(
        "SELECT classid::int8, objid::int8, pid FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND objsubid = 2
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND classid IN ($1::int8::oid, $2::int8::oid)
         ORDER BY pid",
    )
    .bind(i64::from(MEMBERS_KEY))
    .bind(i64::from(PARTITION_KEY))
    .fetch_all(&mut *conn)
    .await?;
    let mut locks = Locks {
        members: Vec::new(),
        taken: BTreeSet::new(),
    };
    for (space, key, pid) in rows {
        if space == i64::from(MEMBERS_KEY) {
            locks.members.push(pid);
        } else if let Ok(partition) = u16::try_from(key) {
            locks.taken.insert(partition);
        }
    }
    Ok(locks)
}
