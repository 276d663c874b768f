//! `fluxgate import` against the stand-in API: a Receiver and its Secret (a token ending in a
//! line break, as `kubectl create secret --from-file` makes it) become a `[[receivers]]` table
//! and a token file that give exactly Flux's path, the status's `webhookPath`; the written
//! configuration passes `fluxgate check --offline` and serves that path; neither the token nor
//! a path-only receiver's full path reaches the command's output.

use crate::common::*;
use kube_standin::{Config as ApiConfig, Rule, StandIn};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};

const NS: &str = "flux-system";
const ADMIN_TOKEN: &str = "import-admin-token";
const ADMIN_USER: &str = "import-admin";
/// As `kubectl create secret generic webhook-token --from-file=token=token.txt` stores it.
const TOKEN: &[u8] = b"import-token-0f3c9a7d\n";

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn receiver(name: &str, kind: &str, secret: &str, status_path: Option<&str>) -> Value {
    let mut r = json!({
        "apiVersion": "notification.toolkit.fluxcd.io/v1", "kind": "Receiver",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "type": kind,
            "events": ["push", "ping"],
            "secretRef": {"name": secret},
            "resourceFilter": "true",
            "resources": [
                {"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository", "name": "app"},
                {"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
                 "name": "*", "matchLabels": {"app": "web"}},
            ],
        },
    });
    if let Some(p) = status_path {
        r["status"] = json!({"webhookPath": p});
    }
    r
}

fn secret(name: &str, token: &[u8]) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": NS},
           "type": "Opaque", "data": {"token": b64(token)}})
}

/// A cluster holding `objects`, readable by an admin only.
fn cluster(objects: Vec<Value>) -> StandIn {
    let mut cfg = ApiConfig::new()
        .user(ADMIN_TOKEN, ADMIN_USER)
        .allow(ADMIN_USER, Rule::new(&["*"], &["*"], &["*"]));
    for o in objects {
        cfg = cfg.object(o);
    }
    StandIn::start(cfg).unwrap()
}

fn import(api: &StandIn, dir: &Path, args: &[&str]) -> Output {
    let kubeconfig = dir.join("admin.kubeconfig");
    api.write_kubeconfig(&kubeconfig, ADMIN_TOKEN).unwrap();
    Command::new(BIN)
        .arg("import")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

fn all_output(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn import_keeps_flux_path_from_a_token_ending_in_a_newline() {
    let flux = hook(std::str::from_utf8(TOKEN).unwrap(), "github-receiver", NS);
    let api = cluster(vec![
        receiver("github-receiver", "github", "webhook-token", Some(&flux)),
        secret("webhook-token", TOKEN),
    ]);
    let s = Setup::new();
    s.offline_kubeconfig();
    let config = s.write_config(free_port(), free_port());
    let token_file = s.path("credentials/webhook-token");
    std::fs::create_dir_all(token_file.parent().unwrap()).unwrap();
    let out = import(
        &api,
        s.dir.path(),
        &[
            "github-receiver",
            "--namespace",
            NS,
            "--token-file",
            token_file.to_str().unwrap(),
            "--output",
            config.to_str().unwrap(),
        ],
    );
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    // The bytes as stored, the trailing line break included, in a private file.
    assert_eq!(std::fs::read(&token_file).unwrap(), TOKEN);
    assert_eq!(mode(&token_file) & 0o777, 0o600);
    assert!(
        text.contains(&format!(
            "path {flux}, the same as the Receiver's status.webhookPath"
        )),
        "{text}"
    );
    assert!(!text.contains("import-token"), "{text}");

    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.contains("trim_secret = false\n"), "{written}");
    assert!(
        written.contains("resource_filter = \"true\"\n"),
        "{written}"
    );
    // The configuration loads, and serves Flux's path.
    let run = run_check(&config, &["--offline"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.output());
    let line = run
        .lines_starting("ok: receiver flux-system/github-receiver")
        .pop()
        .unwrap_or_else(|| panic!("{}", run.output()));
    assert!(line.contains(&format!("{flux} -> 2 target(s)")), "{line}");

    // A second import into the same file is refused, and the file is left as it was.
    let again = import(
        &api,
        s.dir.path(),
        &[
            "github-receiver",
            "--token-file",
            token_file.to_str().unwrap(),
            "--output",
            config.to_str().unwrap(),
        ],
    );
    assert!(!again.status.success());
    assert!(
        all_output(&again).contains("already has a receiver"),
        "{}",
        all_output(&again)
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), written);
}

#[test]
fn a_path_only_receiver_is_imported_without_showing_its_path_or_token() {
    let token = b"generic-path-token\n";
    let flux = hook(std::str::from_utf8(token).unwrap(), "generic-receiver", NS);
    let api = cluster(vec![
        receiver("generic-receiver", "generic", "generic-token", Some(&flux)),
        secret("generic-token", token),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("generic-token");
    let out = import(
        &api,
        dir.path(),
        &[
            "generic-receiver",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains(&flux), "{text}");
    assert!(!text.contains(&flux["/hook/".len()..]), "{text}");
    assert!(text.contains(&format!("path {}…", &flux[..18])), "{text}");
    assert!(!text.contains("generic-path-token"), "{text}");
    // The table went to stdout.
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("[[receivers]]\n"), "{table}");
    assert!(table.contains("type = \"generic\"\n"), "{table}");
    assert_eq!(std::fs::read(&token_file).unwrap(), token);
}

#[test]
fn a_secret_changed_since_flux_reconciled_writes_nothing() {
    let api = cluster(vec![
        receiver(
            "github-receiver",
            "github",
            "webhook-token",
            Some(&hook("the-old-token", "github-receiver", NS)),
        ),
        secret("webhook-token", TOKEN),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("t");
    let out = import(
        &api,
        dir.path(),
        &[
            "github-receiver",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let text = all_output(&out);
    assert!(
        text.contains("status.webhookPath") && text.contains("nothing written"),
        "{text}"
    );
    assert!(!token_file.exists());
    assert!(out.stdout.is_empty());

    let missing = import(&api, dir.path(), &["nope", "--token-file", "x"]);
    assert!(!missing.status.success());
    assert!(
        all_output(&missing).contains("Receiver flux-system/nope not found"),
        "{}",
        all_output(&missing)
    );
}

/// The README's `fluxgate import` command, run as written (with /etc/fluxgate/ moved to the
/// test's directory and the systemd credentials folder standing in for the unit's): the
/// configuration it leaves serves the Receiver's path.
#[test]
fn the_readmes_import_command_works_as_written() {
    let flux = hook(std::str::from_utf8(TOKEN).unwrap(), "github-receiver", NS);
    let api = cluster(vec![
        receiver("github-receiver", "github", "webhook-token", Some(&flux)),
        secret("webhook-token", TOKEN),
    ]);
    let s = Setup::new();
    s.offline_kubeconfig();
    let dir = s.dir.path().to_path_buf();
    std::fs::create_dir(dir.join("credentials")).unwrap();
    let config = s.write_config(free_port(), free_port());
    let kube = dir.join(".kube");
    std::fs::create_dir(&kube).unwrap();
    api.write_kubeconfig(&kube.join("config"), ADMIN_TOKEN)
        .unwrap();

    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### Moving from the in-cluster receiver")
        .nth(1)
        .unwrap();
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block in the migration section");
    assert!(block.starts_with("fluxgate import "), "{block}");
    let script = block
        .replacen("fluxgate import", &format!("{BIN} import"), 1)
        .replace("/etc/fluxgate/fluxgate.toml", config.to_str().unwrap())
        .replace("/etc/fluxgate/", &format!("{}/", dir.display()));
    let out = Command::new("sh")
        .args(["-c", &script])
        .env("HOME", &dir)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let text = all_output(&out);
    assert!(out.status.success(), "{script}\n{text}");
    assert_eq!(
        std::fs::read(dir.join("credentials/webhook-token")).unwrap(),
        TOKEN
    );
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        written.contains("secret_file = \"/run/credentials/fluxgate.service/webhook-token\"\n"),
        "{written}"
    );
    // Where the unit would load the credential from, here the file import wrote.
    let here = written.replace(
        "/run/credentials/fluxgate.service/",
        &format!("{}/credentials/", dir.display()),
    );
    std::fs::write(&config, here).unwrap();
    let run = run_check(&config, &["--offline"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.output());
    assert_eq!(
        run.lines_starting(&format!(
            "ok: receiver {NS}/github-receiver (github): {flux} -> "
        ))
        .len(),
        1,
        "{}",
        run.output()
    );
}
