//! The status page at `/` on the admin listener: receivers, the cluster, the certificate and
//! the recent deliveries, updated live from `/deliveries/stream`. One self-contained page:
//! its style and script are inline under a per-answer nonce, with a Content-Security-Policy
//! that allows nothing else (`default-src 'none'`), so no data shown can run as code. The
//! server escapes what it writes as HTML; the script writes data with `textContent` only.
//! No hook path is shown whole: for path-only types it is the credential.

use crate::config::Receiver;
use crate::history::Record;
use html_escape::encode_text as esc;
use std::fmt::Write;
use std::sync::Arc;

/// What the page shows, gathered by the admin listener.
pub struct View<'a> {
    pub receivers: &'a [Arc<Receiver>],
    /// Newest first.
    pub records: &'a [Arc<Record>],
    pub unrouted: u64,
    pub cert_not_after: Option<i64>,
    pub clusters: Vec<ClusterView>,
}

/// One cluster of the fleet, as its metrics show it.
pub struct ClusterView {
    pub name: String,
    pub api_up: bool,
    pub queue_depth: i64,
    pub queue_oldest_seconds: f64,
}

fn allow_list(r: &Receiver) -> String {
    let Some(a) = &r.allow else {
        return "any address".into();
    };
    let mut parts: Vec<String> = a.nets.networks().iter().map(|n| n.to_string()).collect();
    parts.extend(a.sets.iter().map(|s| format!("ranges.{}", s.name)));
    parts.join(", ")
}

fn when(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The page, and the nonce its Content-Security-Policy must name.
pub fn render(v: &View) -> (String, String) {
    let nonce = {
        use rand::Rng;
        let bytes: [u8; 16] = rand::rng().random();
        hex::encode(bytes)
    };
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fluxgate</title>
<style nonce="{nonce}">{STYLE}</style></head>
<body><header><h1>fluxgate</h1><span id="live" class="muted">connecting…</span></header>
<main>
<section><h2>Gateway</h2><dl class="facts">"#
    );
    let _ = write!(
        h,
        "<dt>Certificate expires</dt><dd>{}</dd><dt>Requests to unknown paths</dt><dd>{}</dd></dl></section>",
        esc(&v.cert_not_after.map_or_else(|| "unknown".into(), when)),
        v.unrouted,
    );
    h.push_str("<section><h2>Clusters</h2><div class=\"scroll\"><table><thead><tr><th>Cluster</th><th>Kubernetes API</th><th>Queue depth</th><th>Oldest job</th></tr></thead><tbody>");
    for c in &v.clusters {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{:.0} s</td></tr>",
            esc(&c.name),
            if c.api_up { "ok" } else { "bad" },
            if c.api_up { "reachable" } else { "not reached" },
            c.queue_depth,
            c.queue_oldest_seconds,
        );
    }
    h.push_str("</tbody></table></div></section>");
    h.push_str("<section><h2>Receivers</h2><div class=\"scroll\"><table><thead><tr><th>Name</th><th>Type</th><th>Path</th><th>Allowed from</th><th>Last delivery</th><th>Count</th></tr></thead><tbody>");
    for r in v.receivers {
        let mine = v.records.iter().filter(|d| d.receiver == r.label);
        let count = mine.clone().count();
        let refused = mine.clone().filter(|d| d.status >= 400).count();
        let last = mine.clone().next().map_or_else(
            || "none yet".to_string(),
            |d| format!("{} {}", d.time, d.outcome),
        );
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{count} ({refused} refused)</td></tr>",
            esc(&r.label),
            esc(r.kind.as_str()),
            esc(&crate::hook_path::elide(&r.path)),
            esc(&allow_list(r)),
            esc(&last),
        );
    }
    h.push_str("</tbody></table></div></section>");
    h.push_str(
        r#"<section><h2>Recent deliveries</h2>
<div class="filters"><label>Receiver <select id="f-receiver"><option value="">all</option>"#,
    );
    for r in v.receivers {
        let _ = write!(h, "<option>{}</option>", esc(&r.label));
    }
    h.push_str(r#"</select></label> <label>Outcome <input id="f-outcome" placeholder="e.g. relayed"></label></div>
<div class="scroll"><table id="deliveries"><thead><tr><th>Time</th><th>Receiver</th><th>Client</th><th>Delivery</th><th>Event</th><th>Status</th><th>Outcome</th><th>Targets</th></tr></thead><tbody>"#);
    for d in v.records {
        row(&mut h, d);
    }
    let _ = writeln!(
        h,
        "</tbody></table></div></section></main><script nonce=\"{nonce}\">{SCRIPT}</script></body></html>"
    );
    (h, nonce)
}

/// What a target's state reads as in a table cell.
pub fn targets_text(d: &Record) -> String {
    d.targets
        .iter()
        .map(|t| {
            let mut s = format!("{} {}/{}: {}", t.kind, t.namespace, t.name, t.state);
            if let Some(why) = &t.detail {
                let _ = write!(s, " ({why})");
            }
            for (name, by) in t.filtered.iter().zip(&t.filtered_by) {
                let _ = write!(s, ", {name} filtered out by {by}");
            }
            // When it reached that state: a 202 answer's target is settled later.
            if !t.at.is_empty() {
                let _ = write!(s, " at {}", t.at);
            }
            s
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The outcome cell. A delivery answered 202 settles after its answer: the cell says the
/// relay's final result came later, so the 202 beside it does not read as the result.
pub fn outcome_text(d: &Record) -> String {
    let mut s = match &d.reason {
        Some(r) => format!("{}: {r}", d.outcome),
        None => d.outcome.clone(),
    };
    if d.status == 202 && d.outcome != "queued" {
        s.push_str(" (after the 202 answer)");
    }
    s
}

fn row(h: &mut String, d: &Record) {
    let cells = [
        d.time.clone(),
        d.receiver.clone(),
        d.client.clone(),
        d.delivery.clone().unwrap_or_default(),
        d.event.clone().unwrap_or_default(),
        d.status.to_string(),
        outcome_text(d),
        targets_text(d),
    ];
    let _ = write!(
        h,
        "<tr data-id=\"{}\" data-receiver=\"{}\" data-outcome=\"{}\" class=\"{}\">",
        html_escape::encode_double_quoted_attribute(&d.id),
        html_escape::encode_double_quoted_attribute(&d.receiver),
        html_escape::encode_double_quoted_attribute(&d.outcome),
        if d.status >= 400 { "bad" } else { "ok" }
    );
    for c in cells {
        let _ = write!(h, "<td>{}</td>", esc(&c));
    }
    h.push_str("</tr>");
}

const STYLE: &str = "
body{font:15px/1.4 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f8fa}
header{display:flex;gap:1em;align-items:baseline;padding:.6em 1em;background:#24292f;color:#fff}
h1{font-size:1.2em;margin:0}h2{font-size:1.05em;margin:1em 0 .4em}
main{padding:0 1em 2em;max-width:80em}
.muted{color:#adbac7;font-size:.85em}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.3em .5em;border-bottom:1px solid #d0d7de;vertical-align:top;font-size:.9em}
td{word-break:break-word}
tr.bad td:nth-child(7),td.bad{color:#b3261e}
tr.ok td:nth-child(7),td.ok{color:#1a7f37}
tr.hidden{display:none}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em;margin:0}
.facts dd{margin:0}
.filters{margin:.4em 0;display:flex;flex-wrap:wrap;gap:.8em}
code{font-size:.9em}
@media (max-width:40em){th:nth-child(3),td:nth-child(3),th:nth-child(5),td:nth-child(5){display:none}}
";

/// Applies the filters, and adds each record of the live stream (or replaces the row of an
/// updated one) with textContent only.
const SCRIPT: &str = r##"
"use strict";
const body = document.querySelector("#deliveries tbody");
const fr = document.getElementById("f-receiver");
const fo = document.getElementById("f-outcome");
const live = document.getElementById("live");
function visible(tr) {
  const r = fr.value, o = fo.value.trim();
  return (!r || tr.dataset.receiver === r) && (!o || tr.dataset.outcome === o);
}
function applyFilters() {
  for (const tr of body.rows) tr.classList.toggle("hidden", !visible(tr));
}
function targets(d) {
  return (d.targets || []).map(t => t.kind + " " + t.namespace + "/" + t.name + ": " + t.state +
    (t.detail ? " (" + t.detail + ")" : "") +
    (t.filteredBy || []).map((by, i) => ", " + (t.filtered || [])[i] + " filtered out by " + by).join("") +
    (t.at ? " at " + t.at : "")).join("; ");
}
function row(d) {
  const tr = document.createElement("tr");
  tr.dataset.id = d.id; tr.dataset.receiver = d.receiver; tr.dataset.outcome = d.outcome;
  tr.className = d.status >= 400 ? "bad" : "ok";
  const cells = [d.time, d.receiver, d.client, d.delivery || "", d.event || "", String(d.status),
    (d.reason ? d.outcome + ": " + d.reason : d.outcome) +
      (d.status === 202 && d.outcome !== "queued" ? " (after the 202 answer)" : ""), targets(d)];
  for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.appendChild(td); }
  return tr;
}
fr.addEventListener("change", applyFilters);
fo.addEventListener("input", applyFilters);
const es = new EventSource("/deliveries/stream");
es.addEventListener("open", () => { live.textContent = "live"; });
es.addEventListener("error", () => { live.textContent = "reconnecting…"; });
es.addEventListener("delivery", ev => {
  const d = JSON.parse(ev.data);
  const tr = row(d);
  tr.classList.toggle("hidden", !visible(tr));
  const old = body.querySelector('tr[data-id="' + CSS.escape(d.id) + '"]');
  if (old) old.replaceWith(tr); else body.insertBefore(tr, body.firstChild);
  while (body.rows.length > 500) body.deleteRow(-1);
});
"##;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::TargetResult;

    #[test]
    fn paths_are_elided_and_data_escaped() {
        let d = Record {
            id: "1".into(),
            receiver: "ns/<b>".into(),
            outcome: "x\"y".into(),
            ..Record::default()
        };
        let mut h = String::new();
        row(&mut h, &d);
        assert!(h.contains("ns/&lt;b&gt;"), "{h}");
        assert!(h.contains("data-outcome=\"x&quot;y\""), "{h}");
        let later = Record {
            status: 202,
            outcome: "relayed".into(),
            ..Record::default()
        };
        assert_eq!(outcome_text(&later), "relayed (after the 202 answer)");
        let filtered = Record {
            targets: vec![TargetResult {
                state: "filtered".into(),
                filtered: vec!["app".into()],
                filtered_by: vec!["receivers[0].resource_filter = false".into()],
                ..TargetResult::default()
            }],
            ..Record::default()
        };
        assert!(targets_text(&filtered)
            .contains("app filtered out by receivers[0].resource_filter = false"));
    }
}
