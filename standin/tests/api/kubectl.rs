//! The real kubectl against the stand-in. Skipped (with a note) where no
//! kubectl is installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::*;

fn find_kubectl() -> Option<PathBuf> {
    let fixed = Path::new("/usr/bin/kubectl");
    if fixed.is_file() {
        return Some(fixed.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
}

struct Kubectl {
    bin: PathBuf,
    home: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Kubectl {
    /// A kubectl with its own HOME and discovery cache, so nothing leaks
    /// between tests or from the machine's own kubeconfig.
    fn new(api: &StandIn, token: &str) -> Option<Kubectl> {
        let Some(bin) = find_kubectl() else {
            eprintln!("note: kubectl not found; skipping the kubectl test");
            return None;
        };
        let home = tempfile::tempdir().unwrap();
        let kubeconfig = home.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig, token).unwrap();
        Some(Kubectl {
            bin,
            home,
            kubeconfig,
        })
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env_clear()
            .env("HOME", self.home.path())
            .env("KUBECACHEDIR", self.home.path().join("cache"))
            .env("PATH", "/usr/bin:/bin")
            .output()
            .expect("kubectl runs")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn names(list: &Value) -> Vec<&str> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect()
}

#[test]
fn kubectl_reads_patches_and_asks_against_the_stand_in() {
    let api = StandIn::start(config()).unwrap();
    let Some(k) = Kubectl::new(&api, TOKEN) else {
        return;
    };

    let raw = k.ok(&[
        "get",
        "--raw",
        "/apis/source.toolkit.fluxcd.io/v1/namespaces/flux-system/gitrepositories/app",
    ]);
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["metadata"]["name"], "app");
    assert_eq!(v["spec"]["url"], "https://example.com/app.git");

    let all: Value = serde_json::from_str(&k.ok(&[
        "-n",
        "flux-system",
        "get",
        "gitrepositories.source.toolkit.fluxcd.io",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(names(&all), ["api", "app", "db", "plain"]);

    let web: Value = serde_json::from_str(&k.ok(&[
        "-n",
        "flux-system",
        "get",
        "gitrepositories.source.toolkit.fluxcd.io",
        "-l",
        "app=web",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(names(&web), ["app"]);

    // The short name from discovery resolves too.
    let one: Value =
        serde_json::from_str(&k.ok(&["-n", "flux-system", "get", "gitrepo", "db", "-o", "json"]))
            .unwrap();
    assert_eq!(one["metadata"]["name"], "db");

    api.clear_requests();
    let out = k.ok(&[
        "-n",
        "flux-system",
        "annotate",
        "gitrepositories.source.toolkit.fluxcd.io",
        "app",
        "reconcile.fluxcd.io/requestedAt=now",
        "--overwrite",
    ]);
    assert_eq!(
        out.trim(),
        "gitrepository.source.toolkit.fluxcd.io/app annotated"
    );
    let obj = api
        .object(
            "source.toolkit.fluxcd.io/v1",
            "GitRepository",
            "flux-system",
            "app",
        )
        .unwrap();
    assert_eq!(
        obj["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"],
        "now"
    );
    assert_eq!(obj["metadata"]["annotations"]["keep"], "me");
    let patch = api
        .requests()
        .into_iter()
        .find(|r| r.method == "PATCH")
        .expect("kubectl sent a PATCH");
    assert_eq!(
        patch.header("content-type"),
        Some("application/merge-patch+json")
    );
    assert_eq!(patch.status, 200);

    let yes = k.run(&[
        "auth",
        "can-i",
        "patch",
        "gitrepositories.source.toolkit.fluxcd.io",
        "-n",
        "flux-system",
    ]);
    assert!(
        yes.status.success(),
        "{}",
        String::from_utf8_lossy(&yes.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&yes.stdout).trim(), "yes");
    let no = k.run(&[
        "auth",
        "can-i",
        "patch",
        "gitrepositories.source.toolkit.fluxcd.io",
        "-n",
        "apps",
    ]);
    assert_eq!(no.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&no.stdout).trim(), "no");

    // Errors reach kubectl as the apiserver's Status messages.
    let denied = k.run(&[
        "-n",
        "apps",
        "get",
        "gitrepositories.source.toolkit.fluxcd.io",
    ]);
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains(
            "Error from server (Forbidden): gitrepositories.source.toolkit.fluxcd.io is forbidden: User \"system:serviceaccount:flux-system:fluxgate\" cannot list resource \"gitrepositories\" in API group \"source.toolkit.fluxcd.io\" in the namespace \"apps\""
        ),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let missing = k.run(&[
        "-n",
        "flux-system",
        "get",
        "gitrepositories.source.toolkit.fluxcd.io",
        "nope",
    ]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains(
        "Error from server (NotFound): gitrepositories.source.toolkit.fluxcd.io \"nope\" not found"
    ));
}

#[test]
fn kubectl_human_output_and_whoami() {
    let api = StandIn::start(config()).unwrap();
    let Some(k) = Kubectl::new(&api, ADMIN_TOKEN) else {
        return;
    };
    let table = k.ok(&["-n", "flux-system", "get", "gitrepositories"]);
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("NAME"), "{table}");
    assert!(
        header.contains("URL") && header.contains("READY"),
        "{table}"
    );
    assert!(table.contains("https://example.com/app.git"), "{table}");

    let who = k.ok(&["auth", "whoami", "-o", "json"]);
    let v: Value = serde_json::from_str(&who).unwrap();
    assert_eq!(v["status"]["userInfo"]["username"], ADMIN);

    let cm = k.ok(&[
        "-n",
        "flux-system",
        "get",
        "configmap",
        "settings",
        "-o",
        "jsonpath={.data.a}",
    ]);
    assert_eq!(cm, "1");
    k.ok(&[
        "-n",
        "flux-system",
        "label",
        "configmap",
        "settings",
        "team=flux",
    ]);
    let obj = api
        .object("v1", "ConfigMap", "flux-system", "settings")
        .unwrap();
    assert_eq!(obj["metadata"]["labels"]["team"], "flux");

    // Typed creates arrive as protobuf.
    k.ok(&["create", "namespace", "team-a"]);
    k.ok(&[
        "-n",
        "team-a",
        "create",
        "secret",
        "generic",
        "hook",
        "--from-literal=token=foo",
    ]);
    let secret = api.object("v1", "Secret", "team-a", "hook").unwrap();
    assert_eq!(secret["data"]["token"], "Zm9v");
    assert_eq!(secret["type"], "Opaque");
    k.ok(&["delete", "namespace", "team-a"]);
    assert!(api.object("v1", "Secret", "team-a", "hook").is_none());
}

/// What ACME storage for replicas uses, as kubectl makes and shows it: a TLS Secret from
/// `kubectl create secret tls`, and a Lease listed with its holder.
#[test]
fn kubectl_creates_a_tls_secret_and_shows_a_lease() {
    let api = StandIn::start(config()).unwrap();
    let Some(k) = Kubectl::new(&api, ADMIN_TOKEN) else {
        return;
    };
    let cert = rcgen::generate_simple_self_signed(vec!["hooks.example.com".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&crt, cert.cert.pem()).unwrap();
    std::fs::write(&key, cert.key_pair.serialize_pem()).unwrap();
    k.ok(&[
        "-n",
        "flux-system",
        "create",
        "secret",
        "tls",
        "fluxgate-tls",
        "--cert",
        crt.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_str(&k.ok(&[
        "-n",
        "flux-system",
        "get",
        "secret",
        "fluxgate-tls",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(v["type"], "kubernetes.io/tls");
    let mut keys: Vec<&str> = v["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(|s| s.as_str())
        .collect();
    keys.sort();
    assert_eq!(keys, ["tls.crt", "tls.key"]);

    let lease = dir.path().join("lease.json");
    std::fs::write(
        &lease,
        serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "fluxgate-acme", "namespace": "flux-system"},
            "spec": {"holderIdentity": "replica-a", "leaseDurationSeconds": 30}
        })
        .to_string(),
    )
    .unwrap();
    // The stand-in serves no OpenAPI document for client-side validation.
    k.ok(&["create", "--validate=false", "-f", lease.to_str().unwrap()]);
    let table = k.ok(&["-n", "flux-system", "get", "lease"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "HOLDER", "AGE"], "{table}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..2], ["fluxgate-acme", "replica-a"], "{table}");
}
