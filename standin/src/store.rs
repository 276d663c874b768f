//! The object store: objects by (group, resource, namespace, name), one
//! global resourceVersion counter like etcd's revision, and a bounded event
//! history so watches can resume from a resourceVersion.

use std::collections::{BTreeMap, VecDeque};

use serde_json::Value;
use tokio::sync::broadcast;

/// How many past events a watch can resume from before it gets 410 Expired.
const HISTORY: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ObjKey {
    pub group: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

impl ObjKey {
    pub fn new(group: &str, resource: &str, namespace: &str, name: &str) -> Self {
        ObjKey {
            group: group.to_string(),
            resource: resource.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub rv: u64,
    pub key: ObjKey,
    pub kind: EventKind,
    /// The object after the change (for Deleted: its last state).
    pub object: Value,
    /// The object before the change; lets a selector watch turn "stopped
    /// matching" into DELETED, as the apiserver's watch cache does.
    pub prev: Option<Value>,
}

pub(crate) struct Store {
    objects: BTreeMap<ObjKey, Value>,
    rv: u64,
    history: VecDeque<Event>,
    tx: broadcast::Sender<Event>,
}

impl Store {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(1024);
        Store {
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            tx,
        }
    }

    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, key: &ObjKey) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Stores `obj` under a fresh resourceVersion and returns the stored copy.
    pub fn write(&mut self, key: ObjKey, mut obj: Value) -> Value {
        self.rv += 1;
        set_resource_version(&mut obj, self.rv);
        let prev = self.objects.insert(key.clone(), obj.clone());
        let kind = if prev.is_some() {
            EventKind::Modified
        } else {
            EventKind::Added
        };
        self.emit(Event {
            rv: self.rv,
            key,
            kind,
            object: obj.clone(),
            prev,
        });
        obj
    }

    /// Removes an object; the returned last state carries the deletion's
    /// resourceVersion, as etcd-backed deletes do.
    pub fn remove(&mut self, key: &ObjKey) -> Option<Value> {
        let obj = self.objects.get(key)?.clone();
        self.remove_as(key, obj)
    }

    /// Removes an object, reporting `last` as its final state.
    pub fn remove_as(&mut self, key: &ObjKey, mut obj: Value) -> Option<Value> {
        self.objects.remove(key)?;
        self.rv += 1;
        set_resource_version(&mut obj, self.rv);
        self.emit(Event {
            rv: self.rv,
            key: key.clone(),
            kind: EventKind::Deleted,
            object: obj.clone(),
            prev: None,
        });
        Some(obj)
    }

    fn emit(&mut self, ev: Event) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(ev.clone());
        // No receivers is the normal case.
        let _ = self.tx.send(ev);
    }

    /// All objects of one resource, optionally in one namespace, ordered by
    /// namespace then name.
    pub fn list<'a>(
        &'a self,
        group: &'a str,
        resource: &'a str,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a ObjKey, &'a Value)> + 'a {
        let start = ObjKey::new(group, resource, namespace.unwrap_or(""), "");
        self.objects
            .range(start..)
            .take_while(move |(k, _)| k.group == group && k.resource == resource)
            .filter(move |(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
    }

    /// Keys of every object in a namespace (for namespace deletion).
    pub fn keys_in_namespace(&self, namespace: &str) -> Vec<ObjKey> {
        self.objects
            .keys()
            .filter(|k| k.namespace == namespace)
            .cloned()
            .collect()
    }

    /// Live event feed; subscribe while holding the store lock so nothing
    /// falls between a snapshot and the feed.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Drops the event history (an etcd compaction up to the current revision).
    pub fn compact(&mut self) {
        self.history.clear();
    }

    /// Events after `rv`, or `Err(oldest_available)` when history no longer
    /// reaches back that far.
    pub fn events_since(&self, rv: u64) -> Result<Vec<Event>, u64> {
        if rv >= self.rv {
            return Ok(Vec::new());
        }
        match self.history.front() {
            Some(first) if first.rv <= rv + 1 => {
                Ok(self.history.iter().filter(|e| e.rv > rv).cloned().collect())
            }
            Some(first) => Err(first.rv),
            None => Err(self.rv),
        }
    }
}

pub(crate) fn set_resource_version(obj: &mut Value, rv: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".to_string(), Value::String(rv.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_increase_and_history_resumes() {
        let mut s = Store::new();
        let k = ObjKey::new("g", "r", "ns", "a");
        let v1 = s.write(k.clone(), json!({"metadata": {"name": "a"}}));
        let v2 = s.write(k.clone(), json!({"metadata": {"name": "a"}, "x": 1}));
        assert_eq!(v1["metadata"]["resourceVersion"], "1");
        assert_eq!(v2["metadata"]["resourceVersion"], "2");
        let evs = s.events_since(1).unwrap();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].kind, EventKind::Modified);
        let gone = s.remove(&k).unwrap();
        assert_eq!(gone["metadata"]["resourceVersion"], "3");
        assert_eq!(s.list("g", "r", None).count(), 0);
    }
}
