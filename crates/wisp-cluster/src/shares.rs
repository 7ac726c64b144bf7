//! Cluster-wide quotas: each node holds a share of a quota, and a node's
//! share grows only while the shares of every live node fit in the quota.
//!
//! A quota's entry in the `wisp_quotas` bucket maps node ids to their
//! shares. A node changes only its own, compare and set on the entry, so two
//! nodes growing theirs at once cannot together go over. The share of a node
//! no longer listed as a member, and not written for [`MEMBER_TIMEOUT`], does
//! not count, and the next write drops it.

use std::collections::{BTreeMap, HashSet};

use async_nats::jetstream::kv;
use futures_util::TryStreamExt as _;

use serde::{Deserialize, Serialize};

use crate::{Cluster, ClusterError, MEMBER_TIMEOUT, jetstream_error, now_millis};

/// How many times a write that lost a race to another node's is tried again.
const ATTEMPTS: usize = 32;

/// A node's share of one quota.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Held {
    share: u64,
    /// When the node wrote it, in milliseconds since the epoch.
    at: u64,
}

/// The shares of one quota, by node id.
type Shares = BTreeMap<String, Held>;

impl Cluster {
    /// Sets node `me`'s share of `quota` (a key such as `team-a.concurrency`)
    /// to `share`. With a `max`, only if the live nodes' shares then fit in
    /// it: `false`, and the share left as it was, when they would not.
    /// Without one, always: what a node already holds (a call it took over,
    /// a trigger's event) it keeps, and a share given back always fits.
    pub async fn set_share(
        &self,
        quota: &str,
        me: &str,
        share: u64,
        max: Option<u64>,
    ) -> Result<bool, ClusterError> {
        let live: HashSet<String> = self
            .members()
            .await?
            .into_iter()
            .map(|member| member.id)
            .collect();
        let failed = |error: &dyn std::fmt::Display| {
            jetstream_error(format!("write the quota share {quota}"))(error)
        };
        for _ in 0..ATTEMPTS {
            let entry = self
                .quotas
                .entry(quota)
                .await
                .map_err(|error| failed(&error))?;
            let (mut shares, revision) = match entry {
                Some(entry) if entry.operation == kv::Operation::Put => (
                    serde_json::from_slice::<Shares>(&entry.value).unwrap_or_default(),
                    Some(entry.revision),
                ),
                Some(entry) => (Shares::new(), Some(entry.revision)),
                None => (Shares::new(), None),
            };
            if shares.get(me).map_or(0, |held| held.share) == share {
                return Ok(true);
            }
            let now = now_millis();
            // A node that just joined may not be listed yet: its fresh share counts.
            shares.retain(|node, held| {
                node != me
                    && held.share > 0
                    && (live.contains(node)
                        || now.saturating_sub(held.at) <= MEMBER_TIMEOUT.as_millis() as u64)
            });
            let others: u64 = shares.values().map(|held| held.share).sum();
            if let Some(max) = max
                && others.saturating_add(share) > max
            {
                return Ok(false);
            }
            if share > 0 {
                shares.insert(me.to_owned(), Held { share, at: now });
            }
            let value = serde_json::to_vec(&shares)
                .expect("shares serialize")
                .into();
            let lost_race = match revision {
                Some(revision) => match self.quotas.update(quota, value, revision).await {
                    Ok(_) => return Ok(true),
                    Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => true,
                    Err(error) => return Err(failed(&error)),
                },
                None => match self.quotas.create(quota, value).await {
                    Ok(_) => return Ok(true),
                    Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => true,
                    Err(error) => return Err(failed(&error)),
                },
            };
            debug_assert!(lost_race);
        }
        Err(ClusterError::Conflict(format!("quota share {quota}")))
    }

    /// Gives back every share node `me` holds: what a node does at start,
    /// when what it held before is no longer running.
    pub async fn clear_shares(&self, me: &str) -> Result<(), ClusterError> {
        let keys: Vec<String> = match self.quotas.keys().await {
            Ok(keys) => keys
                .try_collect()
                .await
                .map_err(|error| jetstream_error("list the quota shares")(&error))?,
            Err(error) => return Err(jetstream_error("list the quota shares")(&error)),
        };
        for key in keys {
            self.set_share(&key, me, 0, None).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Member, tests::connected};

    fn member(id: &str) -> Member {
        Member {
            id: id.to_owned(),
            version: "test".to_owned(),
            address: format!("http://{id}"),
            active: 0,
            functions: 0,
            last_seen: crate::now_millis(),
        }
    }

    #[tokio::test]
    async fn live_nodes_shares_fit_in_the_quota_and_a_dead_nodes_do_not_count() {
        let nats = wisp_testing::NatsCluster::start(1);
        let cluster = connected(&nats).await;
        for id in ["a", "b"] {
            cluster.heartbeat(&member(id)).await.unwrap();
        }
        let quota = "team-a.concurrency";
        assert!(cluster.set_share(quota, "a", 3, Some(4)).await.unwrap());
        assert!(cluster.set_share(quota, "b", 1, Some(4)).await.unwrap());
        assert!(
            !cluster.set_share(quota, "b", 2, Some(4)).await.unwrap(),
            "3 + 2 is over 4"
        );
        // Growing past the quota is allowed without one (what is held is held).
        assert!(cluster.set_share(quota, "b", 2, None).await.unwrap());
        assert!(cluster.set_share(quota, "a", 1, Some(4)).await.unwrap());
        assert!(!cluster.set_share(quota, "a", 3, Some(4)).await.unwrap());
        // A node not listed yet counts while its share is fresh...
        assert!(cluster.set_share(quota, "c", 1, Some(4)).await.unwrap());
        assert!(
            !cluster.set_share(quota, "a", 2, Some(4)).await.unwrap(),
            "2 of b, 1 of c and 2 of a are over 4"
        );
        // ...and once `b` has left and `c`'s share is stale, neither counts.
        cluster.leave("b").await.unwrap();
        tokio::time::sleep(crate::MEMBER_TIMEOUT + std::time::Duration::from_millis(600)).await;
        assert!(cluster.set_share(quota, "a", 4, Some(4)).await.unwrap());
        // A node starting again gives back what it held.
        cluster.clear_shares("a").await.unwrap();
        cluster.heartbeat(&member("b")).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        assert!(cluster.set_share(quota, "b", 4, Some(4)).await.unwrap());
    }
}
