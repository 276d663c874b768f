//! Watches: a chunked stream of `{"type": ..., "object": ...}` lines, with
//! the apiserver's rules for where a watch starts (synthetic ADDED events
//! for `resourceVersion` "" / "0", replay after a given resourceVersion, 410
//! Expired when history no longer reaches back), selector transitions
//! reported as ADDED/DELETED, bookmarks and `sendInitialEvents`.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use crate::api::{Reply, ReplyBody, Request};
use crate::kinds::KindInfo;
use crate::list::{validate_list_options, Selectors};
use crate::negotiate::{self, Output};
use crate::requestinfo::parse_go_bool;
use crate::state::{lock, State};
use crate::status::{go_quote, ApiError, ApiResult};
use crate::store::{Event, EventKind};
use crate::table;

/// A response body fed from a channel; dropping it (client gone, server
/// going down) closes the channel and stops the producer.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// Everything needed to turn store events into this watch's lines.
struct Filter {
    kind: KindInfo,
    namespace: String,
    name: String,
    selectors: Selectors,
    output: Output,
    include_object: Option<String>,
}

impl Filter {
    fn line(&self, type_: &str, object: &Value) -> Bytes {
        let object = match self.output {
            Output::Table => table::render(
                &self.kind,
                std::slice::from_ref(object),
                self.include_object.as_deref(),
                None,
            )
            .unwrap_or_else(|_| object.clone()),
            Output::PartialObjectMetadata | Output::PartialObjectMetadataList => json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
            }),
            Output::Json => object.clone(),
        };
        let mut out =
            serde_json::to_vec(&json!({"type": type_, "object": object})).unwrap_or_default();
        out.push(b'\n');
        Bytes::from(out)
    }

    fn convert(&self, ev: &Event) -> Option<Bytes> {
        let k = &ev.key;
        if k.group != self.kind.group
            || k.resource != self.kind.plural
            || (!self.namespace.is_empty() && k.namespace != self.namespace)
            || (!self.name.is_empty() && k.name != self.name)
        {
            return None;
        }
        let now = self.selectors.matches(&ev.object);
        match ev.kind {
            EventKind::Added => now.then(|| self.line("ADDED", &ev.object)),
            EventKind::Deleted => now.then(|| self.line("DELETED", &ev.object)),
            EventKind::Modified => {
                let before = ev.prev.as_ref().is_some_and(|p| self.selectors.matches(p));
                match (before, now) {
                    (true, true) => Some(self.line("MODIFIED", &ev.object)),
                    (false, true) => Some(self.line("ADDED", &ev.object)),
                    (true, false) => {
                        // Left the selection: DELETED with the previous state
                        // at the event's resourceVersion.
                        let mut prev = ev.prev.clone().unwrap_or(Value::Null);
                        crate::store::set_resource_version(&mut prev, ev.rv);
                        Some(self.line("DELETED", &prev))
                    }
                    (false, false) => None,
                }
            }
        }
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({
            "kind": self.kind.kind,
            "apiVersion": self.kind.api_version(),
            "metadata": meta,
        });
        let mut out =
            serde_json::to_vec(&json!({"type": "BOOKMARK", "object": obj})).unwrap_or_default();
        out.push(b'\n');
        Bytes::from(out)
    }
}

fn error_line(e: &ApiError) -> Bytes {
    let status: Value = serde_json::from_slice(&e.body()).unwrap_or(Value::Null);
    let mut out =
        serde_json::to_vec(&json!({"type": "ERROR", "object": status})).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

fn bool_param(req: &Request, key: &str) -> ApiResult<Option<bool>> {
    match req.query(key) {
        None | Some("") => Ok(None),
        Some(v) => parse_go_bool(v).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!(
                "strconv.ParseBool: parsing {}: invalid syntax",
                go_quote(v)
            ))
        }),
    }
}

pub(crate) fn serve(
    state: &State,
    req: &Request,
    kind: &KindInfo,
    namespace: &str,
    name: &str,
) -> ApiResult<Reply> {
    let output = negotiate::choose_output(req.header("accept"), false).ok_or_else(|| {
        ApiError::not_acceptable(&["application/json", "application/json;stream=watch"])
    })?;
    validate_list_options(req, true)?;
    let selectors = Selectors::from_request(req, kind)?;
    let bookmarks = bool_param(req, "allowWatchBookmarks")?.unwrap_or(false);
    let send_initial = bool_param(req, "sendInitialEvents")?;
    let timeout = match req.query("timeoutSeconds") {
        None | Some("") => Duration::from_secs(1800),
        Some(v) => match v.parse::<u64>() {
            Ok(0) => Duration::from_secs(1800),
            Ok(n) => Duration::from_secs(n),
            Err(_) => {
                return Err(ApiError::bad_request(format!(
                    "strconv.ParseInt: parsing {}: invalid syntax",
                    go_quote(v)
                )))
            }
        },
    };
    let rv_param = req.query("resourceVersion").unwrap_or("");
    let filter = Filter {
        kind: kind.clone(),
        namespace: namespace.to_string(),
        name: name.to_string(),
        selectors,
        output,
        include_object: req.query("includeObject").map(str::to_string),
    };

    let mut initial: Vec<Bytes> = Vec::new();
    let mut live = true;
    let (rx, current_rv) = {
        let store = lock(&state.store);
        let current = store.current_rv();
        let synthetic = match send_initial {
            Some(b) => b,
            None => rv_param.is_empty() || rv_param == "0",
        };
        if synthetic {
            let ns = (!namespace.is_empty()).then_some(namespace);
            for (k, obj) in store.list(kind.group, kind.plural, ns) {
                if (name.is_empty() || k.name == name) && filter.selectors.matches(obj) {
                    initial.push(filter.line("ADDED", obj));
                }
            }
            if send_initial == Some(true) && bookmarks {
                initial.push(filter.bookmark(current, true));
            }
        } else if !rv_param.is_empty() {
            let from = rv_param.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("invalid resource version: {rv_param}"))
            })?;
            match store.events_since(from) {
                Ok(evs) => initial.extend(evs.iter().filter_map(|e| filter.convert(e))),
                Err(oldest) => {
                    initial.push(error_line(&ApiError::expired(&format!(
                        "too old resource version: {from} ({})",
                        oldest.saturating_sub(1)
                    ))));
                    live = false;
                }
            }
        }
        (store.subscribe(), current)
    };

    let (tx, body_rx) = mpsc::channel::<Bytes>(64);
    let ended = state.watch_epoch.subscribe();
    tokio::spawn(produce(
        filter, initial, rx, live, bookmarks, timeout, current_rv, tx, ended,
    ));
    Ok(Reply {
        status: 200,
        content_type: "application/json",
        headers: Vec::new(),
        body: ReplyBody::Stream(ChannelBody { rx: body_rx }.boxed()),
    })
}

#[allow(clippy::too_many_arguments)]
async fn produce(
    filter: Filter,
    initial: Vec<Bytes>,
    mut rx: broadcast::Receiver<Event>,
    live: bool,
    bookmarks: bool,
    timeout: Duration,
    mut last_rv: u64,
    tx: mpsc::Sender<Bytes>,
    mut ended: tokio::sync::watch::Receiver<u64>,
) {
    for line in initial {
        if tx.send(line).await.is_err() {
            return;
        }
    }
    if !live {
        return;
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            _ = ended.changed() => return,
            _ = tx.closed() => return,
            _ = tick.tick(), if bookmarks => {
                if tx.send(filter.bookmark(last_rv, false)).await.is_err() {
                    return;
                }
            }
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    last_rv = ev.rv;
                    if let Some(line) = filter.convert(&ev) {
                        if tx.send(line).await.is_err() {
                            return;
                        }
                    }
                }
                // A watcher that fell behind is closed, as the apiserver
                // closes slow watchers; the client re-lists.
                Err(_) => return,
            }
        }
    }
}
