//! Postgres access shared by every service: the connection pool, the embedded migrations (one
//! Postgres schema per service), the transactional outbox and inbox tables. Per-test databases
//! are in tally-testkit.

pub mod outbox;
pub mod projection;
pub mod text_enum;

/// A hash of the migrations folder (build.rs): names the per-test template database, so a
/// changed migration builds a new one.
pub const MIGRATIONS_HASH: &str = env!("TALLY_MIGRATIONS_HASH");

use diesel_async::{
    AsyncPgConnection,
    pooled_connection::{AsyncDieselConnectionManager, deadpool},
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

pub use diesel_async::AsyncPgConnection as PgConn;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

pub type Pool = deadpool::Pool<AsyncPgConnection>;
pub type PooledConn = deadpool::Object<AsyncPgConnection>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] diesel::result::Error),
    #[error("database pool: {0}")]
    Pool(String),
    #[error("migration failed: {0}")]
    Migration(String),
}

impl From<deadpool::PoolError> for StoreError {
    fn from(e: deadpool::PoolError) -> Self {
        Self::Pool(e.to_string())
    }
}

/// A pool of at most `max` connections to `url`.
pub fn pool(url: &str, max: usize) -> Result<Pool, StoreError> {
    let mgr = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
    deadpool::Pool::builder(mgr)
        .max_size(max)
        .build()
        .map_err(|e| StoreError::Pool(e.to_string()))
}

/// Applies every pending migration. Runs on a blocking thread, so it works on any runtime flavour.
pub async fn migrate(url: &str) -> Result<Vec<String>, StoreError> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        use diesel::Connection;
        use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(applied.iter().map(|v| v.to_string()).collect())
    })
    .await
    .map_err(|e| StoreError::Migration(e.to_string()))?
}

/// True when the database answers.
pub async fn ping(pool: &Pool) -> bool {
    use diesel_async::RunQueryDsl;
    match pool.get().await {
        Ok(mut c) => diesel::sql_query("SELECT 1").execute(&mut c).await.is_ok(),
        Err(_) => false,
    }
}
