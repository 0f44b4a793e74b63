//! The seed sketch's append design, kept only so benchmarks can compare against it: every append is
//! its own transaction that also sends `pg_notify` carrying the whole event. PostgreSQL holds a
//! cluster-wide lock from a notifying transaction's pre-commit through its WAL flush, which
//! serializes such commits; and an event over ~8000 bytes cannot be sent at all.

use tokio_postgres::types::Type;

use super::event::{validate_append, with_ids};
use super::fast_append::{IN_TRANSACTION, try_insert};
use super::{AppendOutcome, ExpectedVersion, NewEvent, Store, StoreError};

/// The channel the seed design notifies on.
pub const SEED_CHANNEL: &str = "flightdeck_seed";

impl Store {
    /// Appends as the seed sketch does: insert and `pg_notify(event JSON)` in one transaction.
    /// For benchmarks; FlightDeck's own path is [`Store::append`] plus coalesced wake-ups.
    pub async fn append_seed_style(
        &self,
        site: &str,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendOutcome, StoreError> {
        validate_append(site, stream, events)?;
        let events = with_ids(events);
        let client = self.pool().get().await?;
        client.batch_execute("BEGIN").await?;
        let inserted = try_insert(&client, None, IN_TRANSACTION, site, stream, expected, &events).await;
        let Ok(Some(out)) = inserted else {
            let _ = client.batch_execute("ROLLBACK").await;
            drop(client);
            return self.append(site, stream, expected, &events).await;
        };
        for (event, stored) in events.iter().zip(&out.events) {
            let payload = serde_json::json!({
                "eventType": event.event_type, "payload": event.data, "position": stored.position,
                "stream": stream, "site": site, "version": stored.version,
            })
            .to_string();
            let sent = client
                .query_typed("SELECT pg_notify($1, $2)", &[(&SEED_CHANNEL, Type::TEXT), (&payload, Type::TEXT)])
                .await;
            if let Err(err) = sent {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(err.into());
            }
        }
        client.batch_execute("COMMIT").await?;
        Ok(out)
    }
}
