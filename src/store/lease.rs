//! The relays' bucket leases: instead of every instance's relay visiting all 256 buckets four
//! times a second, each relay visits the buckets it holds a lease on, so that Redis's idle work
//! does not grow with the number of instances. The leases of all relays are one hash
//! (`<prefix>:relay-leases`, see `lua/lease.lua`): each round a relay says it is alive, keeps its
//! leases up to its share (the buckets over the live relays), takes free or lapsed ones up to
//! it, and frees those over it, so that a newcomer gets its share and the buckets of a relay that
//! died are taken over once its leases lapse. Leases only spread the work: two relays visiting
//! one bucket is safe (the tick is atomic and the outbox a consumer group), as it has always been.

use std::time::Duration;

use super::{
    script::{Arg, Constants, Layout, LuaScript, Source},
    Bucket, Store, StoreError,
};

static LEASE: Source = Source {
    name: "lease.lua",
    text: include_str!("lua/lease.lua"),
    pieces: &[],
    layout: Layout {
        command_script: false,
        keys: &["leases_key"],
        args: &[
            Arg::Text("owner"),
            Arg::Number("ttl"),
            Arg::Number("buckets"),
            Arg::Number("release"),
        ],
        rest: None,
    },
};

/// The lease script of one store.
#[derive(Debug)]
pub(super) struct LeaseScripts {
    pub lease: LuaScript,
}

impl LeaseScripts {
    pub fn new(constants: &Constants) -> Self {
        Self {
            lease: LuaScript::assemble(&LEASE, constants),
        }
    }
}

impl Store {
    /// One lease round for the relay `owner`, whose leases last `ttl`: the buckets it holds now.
    pub async fn lease_buckets(
        &self,
        owner: &str,
        ttl: Duration,
    ) -> Result<Vec<Bucket>, StoreError> {
        let held: Vec<u16> = self.lease_round(owner, ttl, false).await?;
        held.into_iter()
            .map(|n| {
                Bucket::new(n).ok_or_else(|| StoreError::Corrupt(format!("leased bucket {n}")))
            })
            .collect()
    }

    /// Frees all of `owner`'s leases (at shutdown), so that others take them at once.
    pub async fn release_buckets(&self, owner: &str) -> Result<(), StoreError> {
        self.lease_round::<Vec<u16>>(owner, Duration::from_secs(1), true)
            .await
            .map(drop)
    }

    async fn lease_round<T: redis::FromRedisValue>(
        &self,
        owner: &str,
        ttl: Duration,
        release: bool,
    ) -> Result<T, StoreError> {
        self.leases
            .lease
            .call()
            .key("leases_key", self.keys.relay_leases())
            .arg("owner", owner)
            .arg("ttl", ttl.as_millis() as u64)
            .arg("buckets", super::bucket::BUCKETS)
            .arg("release", u8::from(release))
            .invoke(&self.connection)
            .await
    }
}
