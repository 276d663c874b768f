//! One path for the same Receiver in many clusters. A Receiver deployed to several clusters
//! (the same name, namespace and token, hence the same path) is served once, and a delivery
//! to it reconciles in every cluster that has it, each cluster's targets from its own object.
//! The first cluster (in fleet order) that serves it decides verification (type, events,
//! Secret); a differing spec elsewhere is logged. A suspended Receiver takes its cluster out
//! of the deliveries; the path answers 503 only when it is suspended everywhere.

use crate::config::Receiver;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

#[derive(Default)]
pub struct Joiner {
    /// The receiver last built for a path, with the parts it was built from, so that an
    /// unchanged join keeps its receiver (and what its verifier caches).
    joined: HashMap<String, (Vec<Arc<Receiver>>, Arc<Receiver>)>,
    /// Paths whose Receivers differ between clusters, warned about once.
    differing: HashSet<String>,
}

impl Joiner {
    /// `clusters`: each watched cluster's receivers, in fleet order, with its name. Returns
    /// one receiver per path, in namespace/name order.
    pub fn join(&mut self, clusters: &[(&str, Vec<Arc<Receiver>>)]) -> Vec<Arc<Receiver>> {
        let mut by_path: BTreeMap<&str, Vec<(&str, &Arc<Receiver>)>> = BTreeMap::new();
        for (name, receivers) in clusters {
            for r in receivers {
                by_path.entry(&r.path).or_default().push((name, r));
            }
        }
        let mut joined = HashMap::new();
        let mut differing = HashSet::new();
        let mut out = Vec::with_capacity(by_path.len());
        for (path, parts) in by_path {
            let (first_cluster, first) = parts[0];
            let differ: Vec<&str> = parts[1..]
                .iter()
                .filter(|(_, r)| {
                    r.label != first.label || r.kind != first.kind || r.events != first.events
                })
                .map(|(c, _)| *c)
                .collect();
            if !differ.is_empty() {
                if !self.differing.contains(path) {
                    tracing::warn!(receiver = %first.label, "Receiver {} differs in cluster(s) {} from cluster {first_cluster} (type, events, or name and namespace with the same path): cluster {first_cluster}'s verifies deliveries, each cluster reconciles its own resources", first.label, differ.join(", "));
                }
                differing.insert(path.to_string());
            }
            let active: Vec<Arc<Receiver>> = parts
                .iter()
                .filter(|(_, r)| !r.suspended)
                .map(|(_, r)| Arc::clone(r))
                .collect();
            let served = match active.as_slice() {
                [] => first.clone(),
                [one] => one.clone(),
                many => match self.joined.remove(path) {
                    Some((was, r))
                        if was.len() == many.len()
                            && was.iter().zip(many).all(|(a, b)| Arc::ptr_eq(a, b)) =>
                    {
                        r
                    }
                    _ => match Receiver::joined(many) {
                        Some(r) => Arc::new(r),
                        None => continue,
                    },
                },
            };
            if active.len() > 1 {
                joined.insert(path.to_string(), (active, served.clone()));
            }
            out.push(served);
        }
        self.joined = joined;
        self.differing = differing;
        out.sort_by(|a, b| a.label.cmp(&b.label));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::object::{ReceiverObject, SecretData};
    use crate::cluster::secrets::SecretState;
    use crate::cluster::set::{ClusterSet, Home};
    use crate::config::ReceiverDefaults;
    use crate::guard::ranges::RangeSets;
    use crate::secret::Secret;
    use serde_json::{json, Value};

    fn object(uid: &str, spec: Value) -> ReceiverObject {
        let o = serde_json::from_value(json!({
            "metadata": {"name": "r", "namespace": "ns", "uid": uid, "generation": 1},
            "spec": spec,
        }))
        .unwrap();
        ReceiverObject::from_dynamic(o).unwrap()
    }

    fn spec(kind: &str, resource: &str) -> Value {
        json!({"type": kind, "secretRef": {"name": "s"},
               "resources": [{"kind": "GitRepository", "name": resource}]})
    }

    /// The receivers cluster `id` serves with this one Receiver object.
    fn served(id: usize, home: &Home, spec: Value) -> Vec<Arc<Receiver>> {
        let home = Home { id, ..home.clone() };
        let mut set = ClusterSet::of(home, ReceiverDefaults::default(), RangeSets::new());
        set.applied(object(&format!("u{id}"), spec));
        let secret = SecretState::Found(Arc::new(SecretData {
            token: Some(Secret::new(b"t".to_vec())),
            email: None,
            audience: None,
            version: "1".into(),
        }));
        set.receivers(|_| Some(&secret))
    }

    #[test]
    fn one_path_reconciles_in_each_cluster_with_its_own_targets() {
        let home = Home {
            per_cluster: true,
            ..Home::default()
        };
        let a = served(0, &home, spec("generic", "a"));
        let b = served(2, &home, spec("generic", "b"));
        let mut j = Joiner::default();
        let joined = j.join(&[("x", a.clone()), ("y", b.clone())]);
        assert_eq!(joined.len(), 1);
        let r = &joined[0];
        assert_eq!(r.path, a[0].path);
        assert_eq!(
            r.id, a[0].id,
            "the first cluster's id: rate limits and replays"
        );
        assert_ne!(a[0].id, b[0].id);
        assert_eq!(r.target_names, ["GitRepository ns/a", "GitRepository ns/b"]);
        let reach: Vec<Vec<usize>> = r.reach.iter().map(|c| c.to_vec()).collect();
        assert_eq!(reach, [vec![0], vec![2]]);
        assert!(r.per_cluster);
        // Unchanged parts: the same receiver, and its verifier, again.
        let again = j.join(&[("x", a.clone()), ("y", b.clone())]);
        assert!(Arc::ptr_eq(r, &again[0]));
        // One part left: that cluster's own receiver.
        let alone = j.join(&[("x", Vec::new()), ("y", b.clone())]);
        assert!(Arc::ptr_eq(&alone[0], &b[0]));
    }

    #[test]
    fn the_first_clusters_spec_verifies_and_a_suspended_cluster_is_left_out() {
        let home = Home::default();
        let a = served(0, &home, spec("generic", "a"));
        let b = served(1, &home, spec("generic-hmac", "b"));
        let joined = Joiner::default().join(&[("x", a.clone()), ("y", b)]);
        assert_eq!(joined[0].kind, a[0].kind);
        assert_eq!(joined[0].targets.len(), 2);

        let mut off = spec("generic", "c");
        off["suspend"] = json!(true);
        let c = served(1, &home, off.clone());
        let joined = Joiner::default().join(&[("x", a.clone()), ("y", c.clone())]);
        assert!(Arc::ptr_eq(&joined[0], &a[0]), "only x reconciles");
        let d = served(0, &home, off);
        let joined = Joiner::default().join(&[("x", d), ("y", c)]);
        assert!(joined[0].suspended, "suspended everywhere: 503");
    }
}
