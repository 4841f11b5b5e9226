//! The memory budget's decision. Whether a load fits, and which idle models to evict so that
//! it does, is [`decide`]: a pure function over a snapshot of one ledger, property-tested.
//! [`Registry::make_room`] takes the snapshot under the registry's lock and applies the
//! decision there, so no request can take a model between the choice and its eviction.

use super::{Eviction, ModelEntry, ModelState, Registry, ServedModel, used_on};
use crate::error::ScoringError;
use crate::memory::mib;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl Registry {
    /// Evicts least recently used idle models on `device` until `needed` more bytes fit its
    /// budget, skipping `loading` itself. Runs under the registry's write lock, so no request
    /// can take an evicted model between the check and the eviction. Returns the evicted
    /// models, to be dropped (their workers joined) after the lock is released.
    pub(super) fn make_room(
        &self,
        models: &mut BTreeMap<String, ModelEntry>,
        device: &str,
        needed: u64,
        loading: (&str, u64),
        eviction: Eviction,
    ) -> Result<Vec<Arc<ServedModel>>, ScoringError> {
        let Some(limit) = self.config.budget.limit(device) else {
            return Ok(Vec::new());
        };
        let used = used_on(models, device) + self.outside_on(device);
        let overloaded = || {
            let in_use = models
                .values()
                .flat_map(|m| m.versions.values())
                .filter(|e| e.state == ModelState::Loading || e.served.is_some())
                .count();
            ScoringError::Overloaded(format!(
                "memory budget full: model '{}' version {} needs about {} on {device}, \
                 {} of {} is held by loaded models ({in_use} of them in use or loading); \
                 retry later or raise --memory-budget",
                loading.0,
                loading.1,
                mib(needed),
                mib(used),
                mib(limit)
            ))
        };
        // Idle: ready, holding memory on this ledger, and referenced by nothing but the
        // registry. Models in use are in the snapshot too, so the decision can be checked
        // never to choose one.
        let residents: Vec<Resident<(String, u64)>> = models
            .iter()
            .flat_map(|(name, m)| m.versions.iter().map(move |(v, e)| (name, *v, e)))
            .filter(|(name, v, _)| (name.as_str(), *v) != loading)
            .filter_map(|(name, v, e)| {
                let served = e.served.as_ref()?;
                Some(Resident {
                    key: (name.clone(), v),
                    bytes: *served.footprint.get(device)?,
                    last_used: served.last_used.load(Ordering::Relaxed),
                    idle: e.state == ModelState::Ready && Arc::strong_count(served) == 1,
                })
            })
            .collect();
        let victims = match decide(limit, used, needed, &residents, eviction) {
            Decision::Fits => return Ok(Vec::new()),
            Decision::Evict(victims) => victims,
            Decision::Refuse => return Err(overloaded()),
        };
        Ok(victims
            .into_iter()
            .map(|(name, version)| {
                let entry = models
                    .get_mut(&name)
                    .and_then(|m| m.versions.get_mut(&version))
                    .expect("listed above");
                let served = entry.served.take().expect("ready entries are served");
                entry.state = ModelState::Registered;
                tracing::info!(model = %name, version, %device, footprint_bytes = ?served.footprint, "evicted (least recently used)");
                // Looked up at each eviction, not kept: a handle taken before the process
                // installs its metrics recorder would count nowhere.
                metrics::counter!("modelpod_model_evictions_total").increment(1);
                served
            })
            .collect())
    }
}

/// A loaded model as the budget sees one ledger.
#[derive(Debug, Clone)]
pub(crate) struct Resident<K> {
    pub key: K,
    /// Bytes it holds on the ledger.
    pub bytes: u64,
    /// When a request last took it (larger is more recent).
    pub last_used: u64,
    /// Ready and held by no request: the only kind that may be evicted.
    pub idle: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision<K> {
    /// `needed` more bytes fit as things are.
    Fits,
    /// They fit once these are evicted, least recently used first.
    Evict(Vec<K>),
    /// They cannot fit, or could only by evicting when eviction is not allowed.
    Refuse,
}

/// Whether `needed` more bytes fit under `limit` with `used` held, and if only by eviction,
/// which idle residents to evict: the least recently used, no more than needed, and only if
/// that suffices (a load that cannot fit costs the others nothing).
pub(crate) fn decide<K: Clone>(
    limit: u64,
    used: u64,
    needed: u64,
    residents: &[Resident<K>],
    eviction: Eviction,
) -> Decision<K> {
    if used.saturating_add(needed) <= limit {
        return Decision::Fits;
    }
    if eviction == Eviction::Never {
        return Decision::Refuse;
    }
    let mut idle: Vec<&Resident<K>> = residents.iter().filter(|r| r.idle).collect();
    idle.sort_by_key(|r| r.last_used);
    let mut held = used;
    let mut victims = Vec::new();
    for resident in idle {
        if held.saturating_add(needed) <= limit {
            break;
        }
        held = held.saturating_sub(resident.bytes);
        victims.push(resident.key.clone());
    }
    if held.saturating_add(needed) > limit {
        return Decision::Refuse;
    }
    Decision::Evict(victims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn residents() -> impl Strategy<Value = Vec<Resident<usize>>> {
        prop::collection::vec((0u64..1_000, 0u64..100, any::<bool>()), 0..12).prop_map(|rows| {
            rows.into_iter()
                .enumerate()
                .map(|(key, (bytes, last_used, idle))| Resident {
                    key,
                    bytes,
                    last_used,
                    idle,
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn the_decision_never_evicts_a_model_in_use_and_never_exceeds_the_budget(
            residents in residents(),
            reserved in 0u64..500,
            limit in 0u64..8_000,
            needed in 0u64..3_000,
            allowed in any::<bool>(),
        ) {
            let used = reserved + residents.iter().map(|r| r.bytes).sum::<u64>();
            let eviction = if allowed { Eviction::Allowed } else { Eviction::Never };
            match decide(limit, used, needed, &residents, eviction) {
                Decision::Fits => prop_assert!(used + needed <= limit),
                Decision::Evict(victims) => {
                    prop_assert!(allowed, "evicted at start-up");
                    prop_assert!(!victims.is_empty());
                    let freed: u64 = victims.iter().map(|&k| residents[k].bytes).sum();
                    prop_assert!(used - freed + needed <= limit, "still over the budget");
                    for &k in &victims {
                        prop_assert!(residents[k].idle, "evicted model {k}, which is in use");
                    }
                    // Least recently used first: nothing kept idle is older than a victim
                    // evicted, and no victim was needless.
                    let newest_victim = victims.iter().map(|&k| residents[k].last_used).max().unwrap();
                    for (k, r) in residents.iter().enumerate() {
                        if r.idle && !victims.contains(&k) {
                            prop_assert!(r.last_used >= newest_victim);
                        }
                    }
                    let last = *victims.last().unwrap();
                    prop_assert!(used - (freed - residents[last].bytes) + needed > limit, "evicted one too many");
                }
                Decision::Refuse => {
                    let idle: u64 = residents.iter().filter(|r| r.idle).map(|r| r.bytes).sum();
                    prop_assert!(used + needed > limit);
                    prop_assert!(!allowed || used - idle + needed > limit, "refused what eviction could fit");
                }
            }
        }
    }
}
