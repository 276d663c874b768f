//! The Receiver objects known from the cluster and the receivers built from them. A receiver
//! is built again only when its object's spec, its Secret or the defaults change, so an
//! unchanged one keeps its verifier (and whatever that caches) across events.

use super::object::{convert, ReceiverObject, SecretData};
use super::secrets::{SecretKey, SecretState};
use crate::config::{Receiver, ReceiverDefaults, ALL_NAMESPACES};
use crate::fleet::ClusterId;
use crate::guard::ranges::RangeSets;
use crate::metrics;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Ids of cluster receivers count from here; the file's count from 0 by position. An id is kept
/// for as long as its object exists (the same uid), so rate limits and replays follow it.
pub const FIRST_ID: u32 = 1 << 31;

/// A Receiver by namespace and name.
type Key = (String, String);

/// What a receiver was built from.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    generation: String,
    /// The Secret's resourceVersion, or why it is unreadable.
    secret: Option<Result<String, String>>,
    inputs: u64,
}

struct Entry {
    object: ReceiverObject,
    id: u32,
    built: Option<(Stamp, Result<Arc<Receiver>, String>)>,
}

impl Entry {
    fn secret_key(&self) -> Option<SecretKey> {
        let o = &self.object;
        let name = o.secret_name().filter(|_| o.uses_secret())?;
        Some((o.namespace.clone(), name.to_string()))
    }

    fn served(&self) -> bool {
        matches!(self.built, Some((_, Ok(_))))
    }
}

/// The cluster a set follows, and what its receivers say of it.
#[derive(Clone)]
pub struct Home {
    pub id: ClusterId,
    pub name: Arc<str>,
    /// Whether answers list what happened per cluster (a fleet, or a cluster not `default`).
    pub per_cluster: bool,
    /// The ids of every cluster's receivers come from one counter, so they stay distinct
    /// when the receivers of several clusters are served together.
    pub ids: Arc<AtomicU32>,
}

impl Default for Home {
    fn default() -> Self {
        Home {
            id: 0,
            name: crate::fleet::DEFAULT.into(),
            per_cluster: false,
            ids: Arc::new(AtomicU32::new(FIRST_ID)),
        }
    }
}

pub struct ClusterSet {
    entries: BTreeMap<Key, Entry>,
    home: Home,
    defaults: ReceiverDefaults,
    sets: RangeSets,
    /// Bumped when the defaults or range sets change, which rebuilds every receiver.
    inputs: u64,
    /// Receivers that lost their path to another cluster receiver, warned about once.
    collisions: HashSet<String>,
}

impl ClusterSet {
    pub fn new(defaults: ReceiverDefaults, sets: RangeSets) -> Self {
        Self::of(Home::default(), defaults, sets)
    }

    /// The Receivers of one cluster of the fleet; its receivers' targets reach that cluster.
    pub fn of(home: Home, defaults: ReceiverDefaults, sets: RangeSets) -> Self {
        ClusterSet {
            entries: BTreeMap::new(),
            home,
            defaults,
            sets,
            inputs: 0,
            collisions: HashSet::new(),
        }
    }

    /// New defaults or range sets, after a reload of the configuration file.
    pub fn set_inputs(&mut self, defaults: ReceiverDefaults, sets: RangeSets) {
        let same_sets = sets.len() == self.sets.len()
            && sets
                .iter()
                .all(|(k, v)| self.sets.get(k).is_some_and(|o| Arc::ptr_eq(o, v)));
        if defaults != self.defaults || !same_sets {
            self.defaults = defaults;
            self.sets = sets;
            self.inputs += 1;
        }
    }

    /// The Receivers of `scope` are now exactly `objects`. Returns the Secrets they name, to
    /// read: after a (re)list, what was known may be stale.
    pub fn listed(&mut self, scope: &str, objects: Vec<ReceiverObject>) -> BTreeSet<SecretKey> {
        let keys: HashSet<Key> = objects
            .iter()
            .map(|o| (o.namespace.clone(), o.name.clone()))
            .collect();
        let gone: Vec<Key> = self
            .entries
            .keys()
            .filter(|(ns, _)| scope == ALL_NAMESPACES || ns == scope)
            .filter(|k| !keys.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.remove(&key);
        }
        for o in objects {
            self.applied(o);
        }
        self.entries
            .iter()
            .filter(|((ns, _), _)| scope == ALL_NAMESPACES || ns == scope)
            .filter_map(|(_, e)| e.secret_key())
            .collect()
    }

    /// A Receiver was created or changed. Returns its Secret when it is to be read: the object
    /// is new or its spec changed, as Flux reads the Secret at each reconcile.
    pub fn applied(&mut self, object: ReceiverObject) -> Option<SecretKey> {
        let key = (object.namespace.clone(), object.name.clone());
        match self.entries.get_mut(&key) {
            Some(e) if e.object.uid == object.uid => {
                let changed = e.object.generation != object.generation;
                e.object = object;
                if changed {
                    e.secret_key()
                } else {
                    None
                }
            }
            _ => {
                // Wraps only after 2^31 Receivers were created in one process's life.
                let id = self.home.ids.fetch_add(1, Ordering::Relaxed) | FIRST_ID;
                let e = Entry {
                    object,
                    id,
                    built: None,
                };
                let secret = e.secret_key();
                self.entries.insert(key, e);
                secret
            }
        }
    }

    pub fn deleted(&mut self, object: &ReceiverObject) {
        self.remove(&(object.namespace.clone(), object.name.clone()));
    }

    fn remove(&mut self, key: &Key) {
        if let Some(e) = self.entries.remove(key) {
            if e.served() {
                tracing::info!(receiver = %e.object.label(), cluster = %self.home.name, "Receiver deleted, no longer served in this cluster");
            }
        }
    }

    /// Every Secret a Receiver names.
    pub fn wanted(&self) -> BTreeSet<SecretKey> {
        self.entries
            .values()
            .filter_map(Entry::secret_key)
            .collect()
    }

    /// Builds what changed, logs what is now served or not and why, and returns the receivers
    /// to serve, in namespace/name order. `secrets` gives what is known of a Secret.
    pub fn receivers<'s>(
        &mut self,
        secrets: impl Fn(&SecretKey) -> Option<&'s SecretState>,
    ) -> Vec<Arc<Receiver>> {
        let mut served = Vec::new();
        let mut paths: HashMap<String, String> = HashMap::new();
        let mut collisions = HashSet::new();
        let (mut suspended, mut skipped) = (0i64, 0i64);
        for e in self.entries.values_mut() {
            let state = e.secret_key().map(|k| secrets(&k));
            let secret: Option<Result<&SecretData, &str>> = state.map(|s| match s {
                Some(SecretState::Found(d)) => Ok(&**d),
                Some(SecretState::Unreadable(why)) => Err(why.as_str()),
                None => Err("not read yet"),
            });
            let stamp = Stamp {
                generation: e.object.generation.clone(),
                secret: secret.map(|s| s.map(|d| d.version.clone()).map_err(str::to_string)),
                inputs: self.inputs,
            };
            if e.built.as_ref().is_none_or(|(s, _)| *s != stamp) {
                let outcome = build(e, secret, &self.defaults, &mut self.sets, &self.home);
                e.built = Some((stamp, outcome));
            }
            let Some((_, Ok(r))) = &e.built else {
                skipped += 1;
                continue;
            };
            if let Some(first) = paths.get(&r.path) {
                if !self.collisions.contains(&r.label) {
                    tracing::warn!(receiver = %r.label, "Receiver {} is not served: Receiver {first} has the same hook path (the same token, and name + namespace that concatenate alike)", r.label);
                }
                collisions.insert(r.label.clone());
                skipped += 1;
                continue;
            }
            paths.insert(r.path.clone(), r.label.clone());
            suspended += i64::from(r.suspended);
            served.push(r.clone());
        }
        self.collisions = collisions;
        let g = &metrics::get().cluster_receivers;
        let name = &*self.home.name;
        g.with_label_values(&[name, "served"])
            .set(served.len() as i64 - suspended);
        g.with_label_values(&[name, "suspended"]).set(suspended);
        g.with_label_values(&[name, "skipped"]).set(skipped);
        served
    }
}

/// Converts one entry, logging the outcome when it differs from the last one.
fn build(
    e: &Entry,
    secret: Option<Result<&SecretData, &str>>,
    defaults: &ReceiverDefaults,
    sets: &mut RangeSets,
    home: &Home,
) -> Result<Arc<Receiver>, String> {
    let label = e.object.label();
    match convert(&e.object, secret, defaults, e.id, sets) {
        Ok((mut r, warnings)) => {
            for w in warnings {
                tracing::warn!(receiver = %label, cluster = %home.name, "Receiver {label}: {w}");
            }
            let here: Arc<[ClusterId]> = Arc::from(vec![home.id]);
            r.reach = r.targets.iter().map(|_| here.clone()).collect();
            r.per_cluster = home.per_cluster;
            tracing::info!(receiver = %label, cluster = %home.name, r#type = %r.kind, targets = r.targets.len(), suspended = r.suspended, "serving Receiver");
            Ok(Arc::new(r))
        }
        Err(skips) => {
            let why = skips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            if !matches!(&e.built, Some((_, Err(before))) if *before == why) {
                tracing::warn!(receiver = %label, cluster = %home.name, "Receiver {label} is not served: {why}");
            }
            Err(why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use serde_json::json;

    fn object(ns: &str, name: &str, uid: &str, generation: i64, secret: &str) -> ReceiverObject {
        let o = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "uid": uid, "generation": generation},
            "spec": {"type": "generic", "secretRef": {"name": secret},
                     "resources": [{"kind": "GitRepository", "name": "app"}]},
        }))
        .unwrap();
        ReceiverObject::from_dynamic(o).unwrap()
    }

    fn found(token: &[u8], version: &str) -> SecretState {
        SecretState::Found(Arc::new(SecretData {
            token: Some(Secret::new(token.to_vec())),
            email: None,
            audience: None,
            version: version.into(),
        }))
    }

    fn key(ns: &str, name: &str) -> SecretKey {
        (ns.to_string(), name.to_string())
    }

    #[test]
    fn ids_are_distinct_and_kept_while_the_object_lives() {
        let mut set = ClusterSet::new(ReceiverDefaults::default(), RangeSets::new());
        let secrets = HashMap::from([(key("ns", "s"), found(b"t", "1"))]);
        assert_eq!(
            set.applied(object("ns", "a", "u1", 1, "s")),
            Some(key("ns", "s"))
        );
        assert_eq!(
            set.applied(object("ns", "b", "u2", 1, "s")),
            Some(key("ns", "s"))
        );
        let first = set.receivers(|k| secrets.get(k));
        let ids: Vec<u32> = first.iter().map(|r| r.id).collect();
        assert_eq!(ids, [FIRST_ID, FIRST_ID + 1]);

        // A status write (same generation) reads nothing and rebuilds nothing.
        assert_eq!(set.applied(object("ns", "a", "u1", 1, "s")), None);
        let again = set.receivers(|k| secrets.get(k));
        assert!(Arc::ptr_eq(&first[0], &again[0]));
        // A spec change reads the Secret again and rebuilds, under the same id.
        assert_eq!(
            set.applied(object("ns", "a", "u1", 2, "s")),
            Some(key("ns", "s"))
        );
        let changed = set.receivers(|k| secrets.get(k));
        assert!(!Arc::ptr_eq(&first[0], &changed[0]));
        assert_eq!(changed[0].id, FIRST_ID);
        // Deleted and created again: another object, another id.
        set.deleted(&object("ns", "a", "u1", 2, "s"));
        set.applied(object("ns", "a", "u3", 1, "s"));
        let ids: Vec<u32> = set
            .receivers(|k| secrets.get(k))
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, [FIRST_ID + 2, FIRST_ID + 1]);
    }

    #[test]
    fn a_new_token_moves_the_path_and_a_lost_secret_removes_it() {
        let mut set = ClusterSet::new(ReceiverDefaults::default(), RangeSets::new());
        set.applied(object("ns", "a", "u1", 1, "s"));
        let mut secrets = HashMap::from([(key("ns", "s"), found(b"old", "1"))]);
        let before = set.receivers(|k| secrets.get(k))[0].path.clone();
        secrets.insert(key("ns", "s"), found(b"new", "2"));
        let after = set.receivers(|k| secrets.get(k))[0].path.clone();
        assert_ne!(before, after);
        assert_eq!(after, crate::hook_path::flux_hook_path(b"new", "a", "ns"));
        secrets.insert(
            key("ns", "s"),
            SecretState::Unreadable("Secret ns/s not found".into()),
        );
        assert!(set.receivers(|k| secrets.get(k)).is_empty());
        secrets.clear();
        assert!(set.receivers(|k| secrets.get(k)).is_empty(), "not read yet");
        assert_eq!(set.wanted(), BTreeSet::from([key("ns", "s")]));
    }

    #[test]
    fn a_list_replaces_its_namespace_only() {
        let mut set = ClusterSet::new(ReceiverDefaults::default(), RangeSets::new());
        set.applied(object("ns", "a", "u1", 1, "s"));
        set.applied(object("ns", "b", "u2", 1, "s"));
        set.applied(object("other", "c", "u3", 1, "s"));
        let read = set.listed("ns", vec![object("ns", "b", "u2", 1, "s2")]);
        assert_eq!(read, BTreeSet::from([key("ns", "s2")]));
        let secrets = HashMap::from([
            (key("ns", "s2"), found(b"t", "1")),
            (key("other", "s"), found(b"t", "1")),
        ]);
        let labels: Vec<String> = set
            .receivers(|k| secrets.get(k))
            .iter()
            .map(|r| r.label.clone())
            .collect();
        assert_eq!(labels, ["ns/b", "other/c"]);
        set.listed(ALL_NAMESPACES, Vec::new());
        assert!(set.receivers(|k| secrets.get(k)).is_empty());
    }

    #[test]
    fn of_two_receivers_with_one_path_the_first_is_served() {
        // Flux concatenates without separators: a + bc and ab + c hash alike.
        let mut set = ClusterSet::new(ReceiverDefaults::default(), RangeSets::new());
        set.applied(object("bc", "a", "u1", 1, "s"));
        set.applied(object("c", "ab", "u2", 1, "s"));
        let secrets = HashMap::from([
            (key("bc", "s"), found(b"t", "1")),
            (key("c", "s"), found(b"t", "1")),
        ]);
        let served = set.receivers(|k| secrets.get(k));
        assert_eq!(served.len(), 1);
        assert_eq!(served[0].label, "bc/a");
    }
}
