//! `fluxgate import`: a Flux `Receiver` and its Secret, read from a cluster with an admin's
//! kubeconfig, written as a `[[receivers]]` table and a token file holding the Secret's bytes
//! exactly, so the hook path stays the one Flux shows. The conversion is cluster mode's
//! (`cluster::object`), so both read a Receiver the same way.

use crate::cluster::object::{self, ReceiverObject, SecretData};
use crate::config::ReceiverDefaults;
use crate::guard::ranges::RangeSets;
use crate::hook_path::elide;
use crate::relay::kube::{load_config, ApiError};
use crate::secret::Secret;
use clap::Args;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ImportOptions {
    /// The Receiver's name.
    pub name: String,
    /// Its namespace.
    #[arg(long, short = 'n', default_value = "flux-system")]
    pub namespace: String,
    /// A kubeconfig allowed to get the Receiver and its Secret (default: $KUBECONFIG, then
    /// ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Where to write the token, byte for byte, mode 0600 (needed unless the type is
    /// generic-oidc, which has no Secret).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The `secret_file` written in the table, when fluxgate reads the token elsewhere than
    /// where it is written (e.g. /run/credentials/fluxgate.service/webhook-token under systemd).
    #[arg(long)]
    pub secret_path: Option<PathBuf>,
    /// Append the table to this file (say the configuration) instead of printing it.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

/// What reading the cluster gave.
pub struct Found {
    pub receiver: ReceiverObject,
    /// `status.webhookPath`, which Flux sets once the Receiver is ready.
    pub webhook_path: Option<String>,
    pub secret: Option<SecretData>,
}

/// What import writes and says.
#[derive(Debug)]
pub struct Plan {
    /// The `[[receivers]]` table, ending with a line break.
    pub table: String,
    pub token: Option<Secret>,
    /// Lines for standard error: the path (elided where it is the credential), warnings.
    pub notes: Vec<String>,
}

pub fn run(opts: &ImportOptions) -> Result<(), String> {
    if let Some(p) = &opts.token_file {
        if p.is_dir() {
            return Err(format!("--token-file {}: is a directory", p.display()));
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let found = rt.block_on(read(opts))?;
    let secret_file = match (&opts.secret_path, &opts.token_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(p)) => Some(std::path::absolute(p).map_err(|e| format!("--token-file: {e}"))?),
        (None, None) => None,
    };
    let plan = plan(&found, secret_file.as_deref())?;
    if let Some(token) = &plan.token {
        let Some(path) = &opts.token_file else {
            return Err(format!(
                "Receiver {}/{} authenticates with a token: give --token-file to write it (it is never printed)",
                opts.namespace, opts.name
            ));
        };
        write_token(path, token.expose())?;
        eprintln!("wrote the token to {} (mode 0600)", path.display());
    }
    match &opts.output {
        Some(out) => {
            append_table(out, &found.receiver, &plan.table)?;
            eprintln!("appended the [[receivers]] table to {}", out.display());
        }
        None => print!("{}", plan.table),
    }
    for n in &plan.notes {
        eprintln!("{n}");
    }
    Ok(())
}

/// The default kubeconfig, as kubectl finds it.
fn kubeconfig_path(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .as_ref()
        .and_then(|v| std::env::split_paths(v).find(|p| !p.as_os_str().is_empty()))
    {
        return Ok(first);
    }
    std::env::var_os("HOME")
        .map(|h| Path::new(&h).join(".kube").join("config"))
        .ok_or_else(|| "no --kubeconfig, KUBECONFIG or HOME".to_string())
}

async fn read(opts: &ImportOptions) -> Result<Found, String> {
    let path = kubeconfig_path(opts.kubeconfig.as_deref())?;
    let config = load_config(&path, opts.context.as_deref(), Duration::from_secs(10))
        .await
        .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    let gvk = GroupVersionKind::gvk(object::GROUP, object::VERSION, object::KIND);
    let ar = ApiResource::from_gvk_with_plural(&gvk, object::PLURAL);
    let label = format!("{}/{}", opts.namespace, opts.name);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &opts.namespace, &ar);
    let o = api
        .get(&opts.name)
        .await
        .map_err(|e| refused(&format!("Receiver {label}"), ApiError::from(e)))?;
    let webhook_path = o.data["status"]["webhookPath"]
        .as_str()
        .filter(|p| !p.is_empty())
        .map(str::to_string);
    let receiver = ReceiverObject::from_dynamic(o)
        .ok_or_else(|| format!("Receiver {label} has no name or namespace"))?;
    let secret = match receiver.secret_name() {
        Some(name) => {
            let api: Api<k8s_openapi::api::core::v1::Secret> =
                Api::namespaced(client, &opts.namespace);
            let s = api.get(name).await.map_err(|e| {
                refused(
                    &format!("Secret {}/{name}", opts.namespace),
                    ApiError::from(e),
                )
            })?;
            Some(crate::cluster::secrets::secret_data(s))
        }
        None => None,
    };
    Ok(Found {
        receiver,
        webhook_path,
        secret,
    })
}

fn refused(what: &str, e: ApiError) -> String {
    match e.code() {
        Some(404) => format!("{what} not found"),
        _ => format!("cannot read {what}: {e}"),
    }
}

/// Converts, checks the path against the Receiver's status, and words the table. Nothing is
/// written when this fails.
pub fn plan(found: &Found, secret_file: Option<&Path>) -> Result<Plan, String> {
    let obj = &found.receiver;
    let label = obj.label();
    let problems = |skips: Vec<object::Skip>| {
        let lines: Vec<String> = skips.iter().map(|s| format!("  {s}")).collect();
        format!("Receiver {label} cannot be imported:\n{}", lines.join("\n"))
    };
    let (receiver, warnings) = object::convert(
        obj,
        found.secret.as_ref().map(Ok),
        &ReceiverDefaults::default(),
        0,
        &mut RangeSets::new(),
    )
    .map_err(problems)?;
    let fields = object::receiver_fields(obj, found.secret.as_ref()).map_err(problems)?;
    let token = found.secret.as_ref().and_then(|s| s.token.clone());
    let token = token.filter(|_| receiver.kind.uses_secret());
    let shown = if receiver.kind.path_is_credential() {
        elide(&receiver.path)
    } else {
        receiver.path.clone()
    };
    let mut notes = Vec::new();
    match &found.webhook_path {
        Some(p) if p.as_bytes() == receiver.path.as_bytes() => notes.push(format!(
            "receiver {label} ({}): path {shown}, the same as the Receiver's status.webhookPath",
            receiver.kind
        )),
        Some(p) => {
            let theirs = if receiver.kind.path_is_credential() {
                elide(p)
            } else {
                p.clone()
            };
            return Err(format!(
                "receiver {label}: the path from the Secret's token is {shown}, but the Receiver's status.webhookPath is {theirs}: the Secret changed since Flux last reconciled the Receiver; nothing written"
            ));
        }
        None => notes.push(format!(
            "receiver {label} ({}): path {shown} (the Receiver has no status.webhookPath to compare with: is it ready?)",
            receiver.kind
        )),
    }
    if obj.suspended() {
        notes.push(format!(
            "warning: Receiver {label} is suspended (spec.suspend), so Flux ignores its deliveries; fluxgate has no such setting and will relay them once this table is loaded"
        ));
    }
    notes.extend(warnings.into_iter().map(|w| format!("warning: {w}")));
    let table = table(&fields, token.as_ref(), secret_file)?;
    Ok(Plan {
        table,
        token,
        notes,
    })
}

/// The table, keys in the order a person writes them. `trim_secret = false` when the token
/// ends with a line break, so fluxgate keeps the bytes Flux hashes and signs with.
fn table(
    fields: &serde_json::Map<String, Value>,
    token: Option<&Secret>,
    secret_file: Option<&Path>,
) -> Result<String, String> {
    let mut out = String::from("[[receivers]]\n");
    let mut line = |key: &str, v: &Value| -> Result<(), String> {
        let toml = |v: &Value| toml::Value::try_from(v).map_err(|e| format!("{key}: {e}"));
        match v {
            // A list of tables (resources, oidc_providers): one entry per line, to read and edit.
            Value::Array(items) if items.iter().any(Value::is_object) => {
                out.push_str(&format!("{key} = [\n"));
                for item in items {
                    out.push_str(&format!("  {},\n", toml(item)?));
                }
                out.push_str("]\n");
            }
            _ => out.push_str(&format!("{key} = {}\n", toml(v)?)),
        }
        Ok(())
    };
    for key in ["name", "namespace", "type", "events"] {
        if let Some(v) = fields.get(key) {
            line(key, v)?;
        }
    }
    if let Some(t) = token {
        let Some(file) = secret_file else {
            return Err("give --token-file for the token".into());
        };
        let file = file
            .to_str()
            .ok_or_else(|| format!("{}: not UTF-8", file.display()))?;
        line("secret_file", &Value::String(file.into()))?;
        if t.expose().ends_with(b"\n") || t.expose().ends_with(b"\r") {
            line("trim_secret", &Value::Bool(false))?;
        }
    }
    for key in [
        "email",
        "audience",
        "resource_filter",
        "resources",
        "oidc_providers",
    ] {
        match fields.get(key) {
            Some(Value::Array(a)) if a.is_empty() && key == "oidc_providers" => {}
            Some(v) => line(key, v)?,
            None => {}
        }
    }
    Ok(out)
}

/// The token, exactly, in a file only its owner reads: written to a new file beside it
/// (created exclusively, mode 0600) and renamed over the path, so a reader never sees half a
/// token and an existing file is replaced at once.
fn write_token(path: &Path, bytes: &[u8]) -> Result<(), String> {
    crate::secret::write_owner_only(path, bytes)
        .map_err(|e| format!("--token-file {}: {e}", path.display()))
}

/// Appends the table to a TOML file, refusing one that already has this receiver (its path
/// would be served twice) or that is not TOML.
fn append_table(out: &Path, obj: &ReceiverObject, table: &str) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("--output {}: {e}", out.display());
    let existing = match std::fs::read(out) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(fail(e)),
    };
    let text = std::str::from_utf8(&existing)
        .map_err(|_| format!("--output {}: not UTF-8 text", out.display()))?;
    // Only the structure is reported: the file may hold secrets.
    let doc: toml::Table = text.parse().map_err(|_| {
        format!(
            "--output {}: not a valid TOML file; nothing appended",
            out.display()
        )
    })?;
    let taken = doc
        .get("receivers")
        .and_then(toml::Value::as_array)
        .is_some_and(|rs| {
            rs.iter().any(|r| {
                r.get("name").and_then(toml::Value::as_str) == Some(obj.name.as_str())
                    && r.get("namespace").and_then(toml::Value::as_str)
                        == Some(obj.namespace.as_str())
            })
        });
    if taken {
        return Err(format!(
            "--output {}: already has a receiver {}; nothing appended",
            out.display(),
            obj.label()
        ));
    }
    let mut chunk = String::new();
    if !existing.is_empty() {
        if !existing.ends_with(b"\n") {
            chunk.push('\n');
        }
        chunk.push('\n');
    }
    chunk.push_str(table);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(out)
        .map_err(fail)?;
    // One write: the table lands whole after whatever is there.
    f.write_all(chunk.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hook_path::flux_hook_path;
    use serde_json::json;

    fn found(kind: &str, token: &[u8], status: Option<&str>, extra: Value) -> Found {
        let mut spec = json!({
            "type": kind,
            "events": ["push"],
            "secretRef": {"name": "webhook-token"},
            "resources": [
                {"kind": "GitRepository", "name": "app"},
                {"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
                 "name": "*", "namespace": "apps", "matchLabels": {"app": "web"},
                 "filter": "res.metadata.name != 'skip'"},
            ],
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let o: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "notification.toolkit.fluxcd.io/v1", "kind": "Receiver",
            "metadata": {"name": "hooks", "namespace": "flux-system", "uid": "u", "generation": 1},
            "spec": spec,
        }))
        .unwrap();
        Found {
            receiver: ReceiverObject::from_dynamic(o).unwrap(),
            webhook_path: status.map(str::to_string),
            secret: Some(SecretData {
                token: Some(Secret::new(token.to_vec())),
                email: Some(b"sa@example.iam.gserviceaccount.com".to_vec()),
                audience: Some(b"https://hooks.example.com".to_vec()),
                version: "1".into(),
            }),
        }
    }

    #[test]
    fn a_token_ending_in_a_newline_keeps_flux_path_and_the_table_says_so() {
        let token = b"s3cr3t-token\n";
        let flux = flux_hook_path(token, "hooks", "flux-system");
        let f = found("github", token, Some(&flux), json!({}));
        let p = plan(&f, Some(Path::new("/etc/fluxgate/webhook-token"))).unwrap();
        assert!(p.table.contains("trim_secret = false\n"), "{}", p.table);
        assert!(p
            .table
            .contains("secret_file = \"/etc/fluxgate/webhook-token\"\n"));
        assert!(
            p.table.contains("matchLabels = { app = \"web\" }"),
            "{}",
            p.table
        );
        assert!(
            p.notes[0].contains(&flux) && p.notes[0].contains("the same"),
            "{:?}",
            p.notes
        );
        assert_eq!(p.token.unwrap().expose(), token);
        assert!(!p.table.contains("s3cr3t"));
        let t: toml::Table = p.table.parse().unwrap();
        assert_eq!(t["receivers"][0]["type"].as_str(), Some("github"));
    }

    #[test]
    fn a_path_that_differs_from_the_status_writes_nothing() {
        let f = found(
            "github",
            b"new-token",
            Some("/hook/0123456789abcdef"),
            json!({}),
        );
        let e = plan(&f, Some(Path::new("/t"))).unwrap_err();
        assert!(
            e.contains("status.webhookPath") && e.contains("nothing written"),
            "{e}"
        );
    }

    #[test]
    fn a_path_only_receiver_path_is_shown_elide() {
        let token = b"generic-token";
        let flux = flux_hook_path(token, "hooks", "flux-system");
        let f = found("generic", token, Some(&flux), json!({"suspend": true}));
        let p = plan(&f, Some(Path::new("/t"))).unwrap();
        let all = p.notes.join("\n");
        assert!(!all.contains(&flux), "{all}");
        assert!(all.contains(&flux[..18]), "{all}");
        assert!(all.contains("suspended"), "{all}");
        assert!(!p.table.contains("trim_secret"), "{}", p.table);
    }

    #[test]
    fn gcr_email_and_audience_come_from_the_secret() {
        let f = found("gcr", b"t", None, json!({}));
        let p = plan(&f, Some(Path::new("/t"))).unwrap();
        assert!(
            p.table
                .contains("email = \"sa@example.iam.gserviceaccount.com\"\n"),
            "{}",
            p.table
        );
        assert!(p
            .table
            .contains("audience = \"https://hooks.example.com\"\n"));
        assert!(p.notes[0].contains("no status.webhookPath"));
    }

    #[test]
    fn generic_oidc_needs_no_token_and_keeps_its_providers() {
        let o: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "notification.toolkit.fluxcd.io/v1", "kind": "Receiver",
            "metadata": {"name": "actions", "namespace": "flux-system", "generation": 1},
            "spec": {"type": "generic-oidc",
                     "resources": [{"kind": "GitRepository", "name": "app"}],
                     "oidcProviders": [{
                         "issuerURL": "https://token.actions.githubusercontent.com",
                         "audience": "flux",
                         "validations": [{"expression": "claims.repository == 'org/app'",
                                          "message": "wrong repository"}]}]},
        }))
        .unwrap();
        let f = Found {
            receiver: ReceiverObject::from_dynamic(o).unwrap(),
            webhook_path: None,
            secret: None,
        };
        let p = plan(&f, None).unwrap();
        assert!(p.token.is_none());
        assert!(!p.table.contains("secret_file"), "{}", p.table);
        let t: toml::Table = p.table.parse().unwrap();
        let provider = &t["receivers"][0]["oidc_providers"][0];
        assert_eq!(
            provider["issuerURL"].as_str(),
            Some("https://token.actions.githubusercontent.com")
        );
        assert_eq!(provider["audience"].as_str(), Some("flux"));
    }

    #[test]
    fn the_token_file_is_private_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        write_token(&p, b"one\n").unwrap();
        write_token(&p, b"two\r\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two\r\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn appending_keeps_the_file_valid_and_refuses_a_second_copy() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("fluxgate.toml");
        std::fs::write(&out, "[relay]\nwait = \"2s\"").unwrap();
        let f = found("github", b"t", None, json!({}));
        let p = plan(&f, Some(Path::new("/t"))).unwrap();
        append_table(&out, &f.receiver, &p.table).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        let t: toml::Table = text.parse().unwrap();
        assert_eq!(t["relay"]["wait"].as_str(), Some("2s"));
        assert_eq!(t["receivers"].as_array().unwrap().len(), 1);
        let e = append_table(&out, &f.receiver, &p.table).unwrap_err();
        assert!(
            e.contains("already has a receiver flux-system/hooks"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
    }
}
