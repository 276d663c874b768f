//! Invalid configuration stops start-up with the key and the reason.

use crate::common::*;
use std::process::Command;

/// Runs `fluxgate check --offline` and returns (success, stderr).
fn check(config: &std::path::Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["check", "--offline", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

fn receiver(s: &Setup, name: &str, ty: &str, secret: &str, resources: &str) -> String {
    format!(
        "name = \"{name}\"\nnamespace = \"flux-system\"\ntype = \"{ty}\"\nsecret_file = \"{}\"\nresources = {resources}",
        s.secret(name, secret).display()
    )
}

const APP: &str = "[{ kind = \"GitRepository\", name = \"app\" }]";

fn fails_with(s: Setup, expected: &[&str]) {
    s.offline_kubeconfig();
    let cfg = s.write_config(8443, 9102);
    let (ok, out) = check(&cfg, &[]);
    assert!(!ok, "should fail: {out}");
    for e in expected {
        assert!(out.contains(e), "expected {e:?} in:\n{out}");
    }
}

#[test]
fn a_good_configuration_passes_and_prints_the_path() {
    let s = Setup::new();
    let r = receiver(&s, "receiver-secret", "github", "test-token", APP)
        .replace("flux-system", "my-namespace");
    let s = s.receiver(&r);
    s.offline_kubeconfig();
    let (ok, out) = check(&s.write_config(8443, 9102), &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("/hook/106120121d366c2f67e93200f6c1dbe938235eb588daa5e8c0516d3a77ac1dee"),
        "{out}"
    );
}

#[test]
fn missing_file() {
    let (ok, out) = check(std::path::Path::new("/nonexistent/fluxgate.toml"), &[]);
    assert!(!ok);
    assert!(
        out.contains("--config: cannot read /nonexistent/fluxgate.toml"),
        "{out}"
    );
}

#[test]
fn bad_toml() {
    let s = Setup::new();
    let p = s.path("fluxgate.toml");
    std::fs::write(&p, "[server\nlisten = ").unwrap();
    let (ok, out) = check(&p, &[]);
    assert!(!ok);
    assert!(
        out.contains(&p.display().to_string()) && out.contains("line 1"),
        "{out}"
    );
}

#[test]
fn unknown_receiver_type() {
    let s = Setup::new();
    let r = receiver(&s, "r", "githib", "t", APP);
    fails_with(s.receiver(&r), &["receivers[0].type: unknown receiver type \"githib\"; supported types are generic, generic-hmac, generic-oidc, github, gitlab, bitbucket, harbor, dockerhub, quay, gcr, nexus, acr, cdevents"]);
}

#[test]
fn empty_secret() {
    let s = Setup::new();
    let r = receiver(&s, "r", "github", "\n", APP);
    fails_with(
        s.receiver(&r),
        &["receivers[0].secret_file: the secret is empty"],
    );
}

#[test]
fn unreadable_or_unset_secret() {
    let s = Setup::new();
    let r = format!("name = \"r\"\nnamespace = \"flux-system\"\ntype = \"gitlab\"\nsecret_env = \"FLUXGATE_TEST_UNSET_VAR\"\nresources = {APP}");
    fails_with(
        s.receiver(&r),
        &["receivers[0].secret_env: environment variable FLUXGATE_TEST_UNSET_VAR is not set"],
    );
}

#[test]
fn resource_with_no_name() {
    let s = Setup::new();
    let r = receiver(&s, "r", "github", "t", "[{ kind = \"GitRepository\" }]");
    fails_with(s.receiver(&r), &["receivers[0].resources[0].name: missing"]);
}

#[test]
fn wildcard_without_labels_and_kind_without_default_api_version() {
    let s = Setup::new();
    let r = receiver(
        &s,
        "r",
        "github",
        "t",
        "[{ kind = \"GitRepository\", name = \"*\" }, { kind = \"HelmRelease\", name = \"x\" }]",
    );
    fails_with(
        s.receiver(&r),
        &[
            "receivers[0].resources[0].matchLabels: name \"*\" needs matchLabels",
            "receivers[0].resources[1].apiVersion: Flux has no default apiVersion for HelmRelease; set apiVersion = \"helm.toolkit.fluxcd.io/v2\"",
        ],
    );
}

#[test]
fn bad_certificate() {
    let s = Setup::new();
    std::fs::write(s.path("tls.crt"), "not a certificate").unwrap();
    let r = receiver(&s, "r", "github", "t", APP);
    fails_with(
        s.receiver(&r),
        &["server.tls_cert:", "holds no PEM certificate"],
    );
}

#[test]
fn key_that_does_not_match_the_certificate() {
    let s = Setup::new();
    let other = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
    std::fs::write(s.path("tls.key"), other.key_pair.serialize_pem()).unwrap();
    let r = receiver(&s, "r", "github", "t", APP);
    fails_with(
        s.receiver(&r),
        &["server.tls_key:", "does not match the certificate"],
    );
}

#[test]
fn duplicate_receivers() {
    let s = Setup::new();
    let a = receiver(&s, "same", "github", "t1", APP);
    let b = receiver(&s, "same", "gitlab", "t2", APP);
    fails_with(s.receiver(&a).receiver(&b), &["receivers[1]: duplicate receiver flux-system/same: receivers[0] has the same namespace and name"]);
}

#[test]
fn unknown_keys_are_refused_with_their_name() {
    let s = Setup::new().server("listen_port = 8443");
    let r = receiver(&s, "r", "github", "t", APP);
    fails_with(s.receiver(&r), &["unknown field `listen_port`"]);
}

#[test]
fn several_problems_are_reported_together() {
    let s = Setup::new();
    let r = receiver(&s, "r", "nope", "\n", "[{ kind = \"GitRepository\" }]");
    fails_with(
        s.receiver(&r),
        &[
            "receivers[0].type:",
            "receivers[0].secret_file:",
            "receivers[0].resources[0].name:",
        ],
    );
}

#[test]
fn the_tarpit_is_bounded() {
    let s = Setup::new().section("[limits]\ntarpit_connections = 100000\ntarpit_for = \"soon\"");
    let r = receiver(&s, "r", "github", "t", APP);
    fails_with(
        s.receiver(&r),
        &[
            "limits.tarpit_connections: at most 65536",
            "limits.tarpit_for: \"soon\" is not a duration",
        ],
    );
}

#[test]
fn environment_overrides_are_validated_too() {
    let s = Setup::new();
    let r = receiver(&s, "r", "github", "t", APP);
    let s = s.receiver(&r);
    s.offline_kubeconfig();
    let cfg = s.write_config(8443, 9102);
    let (ok, out) = check(&cfg, &[("FLUXGATE__SERVER__LISTEN", "not-an-address")]);
    assert!(!ok);
    assert!(
        out.contains("server.listen: \"not-an-address\" is not an address"),
        "{out}"
    );
    let (ok, out) = check(&cfg, &[("FLUXGATE__SERVER__MAX_BODY_BYTES", "1024")]);
    assert!(ok, "{out}");
}

#[test]
fn hook_path_prints_the_flux_test_vector() {
    let s = Setup::new();
    let token = s.secret("t", "test-token\n");
    let out = Command::new(BIN)
        .args(["hook-path", "--token-file"])
        .arg(&token)
        .args(["--name", "receiver-secret", "--namespace", "my-namespace"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "/hook/106120121d366c2f67e93200f6c1dbe938235eb588daa5e8c0516d3a77ac1dee\n"
    );
}

#[test]
fn hook_path_keeps_the_bytes_with_trim_secret_false() {
    let s = Setup::new();
    let token = s.secret("t", "test-token\n");
    let path = |extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["hook-path", "--token-file"])
            .arg(&token)
            .args(["--name", "receiver-secret", "--namespace", "my-namespace"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let flux =
        fluxgate::hook_path::flux_hook_path(b"test-token\n", "receiver-secret", "my-namespace");
    assert_eq!(path(&["--trim-secret", "false"]), format!("{flux}\n"));
    assert_ne!(
        path(&[]),
        format!("{flux}\n"),
        "trimmed by default, as secret_file"
    );
}

#[test]
fn check_elides_the_path_of_a_type_whose_path_is_its_credential() {
    let s = Setup::new();
    let open = receiver(&s, "open", "dockerhub", "t1", APP);
    let signed = receiver(&s, "signed", "github", "t2", APP);
    let s = s.receiver(&open).receiver(&signed);
    s.offline_kubeconfig();
    let (ok, out) = check(&s.write_config(8443, 9102), &[]);
    assert!(ok, "{out}");
    let full = fluxgate::hook_path::flux_hook_path(b"t1", "open", "flux-system");
    assert!(!out.contains(&full), "{out}");
    assert!(
        out.contains(&format!(
            "ok: receiver flux-system/open (dockerhub): {}… (the path is this type's credential",
            &full[..18]
        )),
        "{out}"
    );
    // A signed type's path is no credential alone: printed whole, to paste into the provider.
    assert_eq!(
        printed_path(&out, "flux-system/signed"),
        fluxgate::hook_path::flux_hook_path(b"t2", "signed", "flux-system")
    );
}

/// Mode `mode` on `p`.
fn chmod(p: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
}

#[tokio::test]
async fn loose_permissions_fail_check_while_serve_warns_and_serves() {
    let s = Setup::new();
    let r = receiver(&s, "r", "generic", "t", APP);
    chmod(&s.path("r.secret"), 0o644);
    chmod(&s.path("tls.key"), 0o644);
    // A second token in a directory others may write to, so they could swap it.
    let shared = s.path("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("token"), "u").unwrap();
    chmod(&shared.join("token"), 0o600);
    chmod(&shared, 0o777);
    let r2 = format!(
        "name = \"r2\"\nnamespace = \"flux-system\"\ntype = \"generic\"\nsecret_file = \"{}\"\nresources = {APP}",
        shared.join("token").display()
    );
    let s = s.receiver(&r).receiver(&r2);
    s.offline_kubeconfig();
    chmod(&s.path("kubeconfig"), 0o644);
    let cfg = s.write_config(8443, 9102);
    let (ok, out) = check(&cfg, &[]);
    assert!(!ok, "loose permissions are problems for check: {out}");
    for key in [
        "receivers[0].secret_file",
        "server.tls_key",
        "kubernetes.kubeconfig",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("problem: {key}: ")) && l.contains("mode 0644")),
            "{key}: {out}"
        );
    }
    let dir_problem = format!(
        "problem: receivers[1].secret_file: the directory {} is writable by others than its owner (mode 0777)",
        shared.display()
    );
    assert!(out.contains(&dir_problem), "{out}");
    assert!(out.contains("4 problem(s)"), "{out}");
    assert!(!out.contains("warning: server.tls_key"), "not twice: {out}");

    // serve warns and serves all the same.
    let gw = s.start();
    let (status, body) = gw.post(&hook("t", "r", "flux-system"), &[], "{}").await;
    assert_eq!(status, 200, "{body}");
    let logs = gw.logs();
    assert!(
        logs.contains("server.tls_key: ") && logs.contains("mode 0644"),
        "{logs}"
    );
    assert!(logs.contains(&dir_problem["problem: ".len()..]), "{logs}");

    // Fixed, the check passes.
    for f in ["r.secret", "tls.key", "kubeconfig"] {
        chmod(&gw.setup.path(f), 0o600);
    }
    chmod(&shared, 0o755);
    let (ok, out) = check(&cfg, &[]);
    assert!(ok, "{out}");
}

#[test]
fn a_receiver_with_no_resources_draws_a_warning_as_flux_accepts_it() {
    let s = Setup::new();
    let r = receiver(&s, "r", "github", "t", "[]");
    let s = s.receiver(&r);
    s.offline_kubeconfig();
    let (ok, out) = check(&s.write_config(8443, 9102), &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: receivers[0].resources: none; deliveries are verified and answered 200 with nothing reconciled, as in Flux"),
        "{out}"
    );
    assert!(out.contains("-> 0 target(s)"), "{out}");
}

/// The `ok: receiver …` line of `check` for `label`: its path.
fn printed_path(out: &str, label: &str) -> String {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("ok: receiver {label} (")))
        .unwrap_or_else(|| panic!("no receiver line for {label} in:\n{out}"));
    let (_, rest) = line.split_once("): ").unwrap();
    rest.split_once(" -> ").unwrap().0.to_string()
}

#[test]
fn check_says_when_dropping_a_line_break_changed_the_path() {
    // A token copied out of a Secret made with --from-file: it ends with a line break.
    let s = Setup::new();
    let r = receiver(&s, "receiver-secret", "github", "test-token\n", APP)
        .replace("flux-system", "my-namespace");
    let trimmed = "/hook/106120121d366c2f67e93200f6c1dbe938235eb588daa5e8c0516d3a77ac1dee";
    let flux =
        fluxgate::hook_path::flux_hook_path(b"test-token\n", "receiver-secret", "my-namespace");
    let s2 = Setup::new();
    let exact = format!(
        "{}\ntrim_secret = false",
        receiver(&s2, "receiver-secret", "github", "test-token\n", APP)
    )
    .replace("flux-system", "my-namespace");
    let s = s.receiver(&r);
    s.offline_kubeconfig();
    let (ok, out) = check(&s.write_config(8443, 9102), &[]);
    assert!(ok, "a warning: {out}");
    assert_eq!(printed_path(&out, "my-namespace/receiver-secret"), trimmed);
    let warning = format!(
        "warning: receivers[0].secret_file: the token ends with a line break, which fluxgate drops, so its path is {}… where Flux, given these bytes in a Secret, shows {}…; if the token comes from a Flux Secret, set trim_secret = false",
        &trimmed[..18],
        &flux[..18]
    );
    assert!(out.contains(&warning), "{warning}\nin:\n{out}");
    // Only a prefix of each path: for some types the path is the only credential.
    assert!(!out.contains(&flux), "{out}");

    // trim_secret = false: Flux's path, and nothing to warn about.
    let s2 = s2.receiver(&exact);
    s2.offline_kubeconfig();
    let (ok, out) = check(&s2.write_config(8443, 9102), &[]);
    assert!(ok, "{out}");
    assert_eq!(printed_path(&out, "my-namespace/receiver-secret"), flux);
    assert!(!out.contains("line break"), "{out}");
}

/// The README's "Moving from the in-cluster receiver", run as written against a cluster whose
/// Secret was made with --from-file (its token ends with a line break): the path `check` prints
/// is the Receiver's status.webhookPath.
#[test]
fn the_readmes_migration_steps_keep_fluxs_path() {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    if !Command::new(&kubectl)
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("note: skipped, `{kubectl}` is not installed (set KUBECTL to use another)");
        return;
    }
    use base64::Engine;
    let token = b"0123456789abcdef\n";
    let flux_path = fluxgate::hook_path::flux_hook_path(token, "github-receiver", "flux-system");
    let api = kube_standin::StandIn::start(
        kube_standin::Config::new()
            .user("admin-token", "admin")
            .allow("admin", kube_standin::Rule::new(&["*"], &["*"], &["*"]))
            .object(serde_json::json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "webhook-token", "namespace": "flux-system"},
                "data": {"token": base64::engine::general_purpose::STANDARD.encode(token)}}))
            .object(serde_json::json!({"apiVersion": "notification.toolkit.fluxcd.io/v1",
                "kind": "Receiver",
                "metadata": {"name": "github-receiver", "namespace": "flux-system"},
                "spec": {"type": "github", "events": ["push"], "secretRef": {"name": "webhook-token"},
                         "resources": [{"kind": "GitRepository", "name": "app"}]},
                "status": {"webhookPath": flux_path}})),
    )
    .unwrap();
    let s = Setup::new();
    api.write_kubeconfig(&s.path("admin.kubeconfig"), "admin-token")
        .unwrap();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### Moving from the in-cluster receiver")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    // The commands, as the README has them, with /etc/fluxgate/ moved to the test's directory.
    let dir = s.dir.path().to_path_buf();
    let command = |containing: &str| {
        section
            .split('`')
            .find(|c| c.contains(containing))
            .unwrap_or_else(|| panic!("no `{containing}` command in the README's steps"))
            .replace("/etc/fluxgate/", &format!("{}/", dir.display()))
    };
    let run = |cmd: &str| {
        let out = Command::new("sh")
            .args(["-c", cmd])
            .env("KUBECONFIG", dir.join("admin.kubeconfig"))
            .env("HOME", &dir)
            .env("KUBECACHEDIR", dir.join("cache"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // Step 1, into the credentials folder the setup steps make.
    std::fs::create_dir(dir.join("credentials")).unwrap();
    run(&command("get secret webhook-token"));
    let copied = dir.join("credentials").join("webhook-token");
    assert_eq!(std::fs::read(&copied).unwrap(), token);
    assert_eq!(mode(&copied), 0o600);
    // Step 2: the table with the keys the step names.
    for key in [
        "secret_file = \"/run/credentials/fluxgate.service/webhook-token\"",
        "trim_secret = false",
    ] {
        assert!(section.contains(key), "step 2 names {key}");
    }
    let table = format!(
        "name = \"github-receiver\"\nnamespace = \"flux-system\"\ntype = \"github\"\nevents = [\"push\"]\n\
         secret_file = \"{}\"\ntrim_secret = false\nresources = {APP}",
        copied.display()
    );
    let s = s.receiver(&table);
    s.offline_kubeconfig();
    let (ok, out) = check(&s.write_config(8443, 9102), &[]);
    assert!(ok, "{out}");
    // Step 3.
    let shown = run(&command("jsonpath='{.status.webhookPath}'"));
    assert_eq!(shown, flux_path);
    assert_eq!(printed_path(&out, "flux-system/github-receiver"), shown);
}
