//! The cluster side of the install, `deploy/`: the kustomization renders to exactly the
//! least-privilege objects fluxgate needs, and `deploy/kubeconfig.sh` turns the token Secret
//! into a kubeconfig that the real kubectl can use, against the stand-in Kubernetes API with
//! the Role from `deploy/role.yaml`.
//!
//! The parts that need kubectl print a note and pass when it is not installed (`KUBECTL`
//! chooses the binary, as it does for the script).

use crate::common;

use kube_standin::{Config, Rule, StandIn};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const NS: &str = "flux-system";
const SA_USER: &str = "system:serviceaccount:flux-system:fluxgate";
/// Shaped like a service-account JWT (three base64url parts), as the token controller writes.
const SA_TOKEN: &str =
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJzdWIiOiJmbHV4Z2F0ZSJ9.c2lnbmF0dXJl-_x";
const ADMIN_TOKEN: &str = "admin-token-for-deploy-tests";
const ADMIN_USER: &str = "kubernetes-admin";
/// The context name `StandIn::write_kubeconfig` uses.
const ADMIN_CONTEXT: &str = "kube-standin";

/// The Flux kinds the Role grants by default, as (API group, resource).
const DEFAULT_TARGETS: &[(&str, &str)] = &[
    ("source.toolkit.fluxcd.io", "gitrepositories"),
    ("source.toolkit.fluxcd.io", "ocirepositories"),
    ("source.toolkit.fluxcd.io", "helmrepositories"),
    ("source.toolkit.fluxcd.io", "helmcharts"),
    ("source.toolkit.fluxcd.io", "buckets"),
    ("kustomize.toolkit.fluxcd.io", "kustomizations"),
    ("helm.toolkit.fluxcd.io", "helmreleases"),
    ("image.toolkit.fluxcd.io", "imagerepositories"),
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read_deploy(name: &str) -> String {
    std::fs::read_to_string(deploy_dir().join(name))
        .unwrap_or_else(|e| panic!("deploy/{name}: {e}"))
}

/// The kubectl to use, or `None` (with a note) when there is none.
fn kubectl(test: &str) -> Option<String> {
    let bin = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_string());
    match Command::new(&bin).args(["version", "--client"]).output() {
        Ok(o) if o.status.success() => Some(bin),
        _ => {
            eprintln!(
                "note: {test}: skipped, `{bin}` is not installed (set KUBECTL to use another)"
            );
            None
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn describe(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

/// Standard base64 with padding, as Secret `data` holds it.
fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().expect("a list of strings").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Every string anywhere inside `v`.
fn all_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| all_strings(x, out)),
        Value::Object(m) => m.values().for_each(|x| all_strings(x, out)),
        _ => {}
    }
}

fn is_flux_group(g: &str) -> bool {
    g.ends_with(".toolkit.fluxcd.io") || g == "source.extensions.fluxcd.io"
}

// ---------------------------------------------------------------------------------------------
// The manifests

#[test]
fn kustomization_lists_every_manifest_in_flux_system() {
    let k: Value = serde_saphyr::from_str(&read_deploy("kustomization.yaml")).unwrap();
    assert_eq!(k["kind"], "Kustomization");
    assert_eq!(k["namespace"], NS);
    let listed: BTreeSet<String> = str_list(&k["resources"]).into_iter().collect();
    let present: BTreeSet<String> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, present,
        "deploy/*.yaml and the kustomization's resources"
    );
}

#[test]
fn role_documents_the_other_kinds_and_namespaces() {
    let role = read_deploy("role.yaml");
    let parsed: Value = serde_saphyr::from_str(&role).unwrap();
    let parsed = serde_json::to_string(&parsed).unwrap();
    // Commented variants for the kinds not granted by default...
    for kind in [
        "imagepolicies",
        "imageupdateautomations",
        "artifactgenerators",
        "source.extensions.fluxcd.io",
        "externalartifacts",
    ] {
        assert!(
            role.lines()
                .any(|l| l.trim_start().starts_with('#') && l.contains(kind)),
            "role.yaml has no commented variant for {kind}"
        );
        assert!(!parsed.contains(kind), "{kind} must stay commented out");
    }
    // ...and the ClusterRole + per-namespace RoleBinding recipe.
    for needle in [
        "kind: ClusterRole",
        "kind: RoleBinding",
        "ClusterRoleBinding",
    ] {
        assert!(role.contains(needle), "role.yaml does not mention {needle}");
    }
}

#[test]
fn kustomization_renders_least_privilege() {
    let Some(kubectl) = kubectl("kustomization_renders_least_privilege") else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(deploy_dir())
        .env("HOME", home.path())
        .env("KUBECACHEDIR", home.path().join("cache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/: {}",
        describe(&out)
    );
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text(&out.stdout)).unwrap();

    let kinds: BTreeSet<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(docs.len(), 4, "{docs:#?}");
    assert_eq!(
        kinds,
        BTreeSet::from(["ServiceAccount", "Role", "RoleBinding", "Secret"])
    );
    for d in &docs {
        assert_eq!(d["metadata"]["namespace"], NS, "{d}");
    }
    let doc = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap();

    let sa = doc("ServiceAccount");
    assert_eq!(sa["apiVersion"], "v1");
    assert_eq!(sa["metadata"]["name"], "fluxgate");
    assert_eq!(sa["automountServiceAccountToken"], false);

    let role = doc("Role");
    assert_eq!(role["apiVersion"], "rbac.authorization.k8s.io/v1");
    assert_eq!(role["metadata"]["name"], "fluxgate");
    let rules = role["rules"].as_array().unwrap();
    assert!(!rules.is_empty());
    let mut strings = Vec::new();
    all_strings(&role["rules"], &mut strings);
    assert!(
        strings.iter().all(|s| !s.contains('*')),
        "a wildcard in the Role: {strings:?}"
    );
    let mut granted = BTreeSet::new();
    for rule in rules {
        let keys: BTreeSet<&str> = rule
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["apiGroups", "resources", "verbs"]),
            "only plain rules (no resourceNames, no nonResourceURLs): {rule}"
        );
        let verbs: BTreeSet<String> = str_list(&rule["verbs"]).into_iter().collect();
        assert_eq!(
            verbs,
            BTreeSet::from(["get".to_string(), "list".into(), "patch".into()]),
            "{rule}"
        );
        for g in str_list(&rule["apiGroups"]) {
            assert!(is_flux_group(&g), "not a Flux API group: {g:?}");
            for r in str_list(&rule["resources"]) {
                assert!(!r.contains("secret"), "the Role touches {r}");
                assert!(!r.contains('/'), "no subresources needed: {r}");
                granted.insert((g.clone(), r));
            }
        }
    }
    let expected: BTreeSet<(String, String)> = DEFAULT_TARGETS
        .iter()
        .map(|(g, r)| (g.to_string(), r.to_string()))
        .collect();
    assert_eq!(granted, expected, "the Flux kinds the Role grants");

    let binding = doc("RoleBinding");
    assert_eq!(binding["metadata"]["name"], "fluxgate");
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "fluxgate"})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "fluxgate", "namespace": NS}])
    );

    let secret = doc("Secret");
    assert_eq!(secret["metadata"]["name"], "fluxgate-token");
    assert_eq!(secret["type"], "kubernetes.io/service-account-token");
    assert_eq!(
        secret["metadata"]["annotations"]["kubernetes.io/service-account.name"],
        "fluxgate"
    );
    assert!(secret.get("data").is_none() && secret.get("stringData").is_none());

    // kubectl applies in this order: the account must exist before its token Secret, or the
    // token controller deletes the Secret.
    let pos = |kind: &str| docs.iter().position(|d| d["kind"] == kind).unwrap();
    assert!(pos("ServiceAccount") < pos("Secret"));
}

// ---------------------------------------------------------------------------------------------
// deploy/cluster-mode: the optional component for serving Receiver objects

/// The switch in deploy/kustomization.yaml, as shipped (commented out) and as the comment
/// above it says to turn it on.
const COMPONENT_OFF: &str = "# components:\n#   - cluster-mode\n";
const COMPONENT_ON: &str = "components:\n  - cluster-mode\n";

#[test]
fn cluster_mode_component_lists_its_manifests_and_is_off_by_default() {
    let k: Value = serde_saphyr::from_str(&read_deploy("cluster-mode/kustomization.yaml")).unwrap();
    assert_eq!(k["kind"], "Component");
    let listed: BTreeSet<String> = str_list(&k["resources"]).into_iter().collect();
    let present: BTreeSet<String> = std::fs::read_dir(deploy_dir().join("cluster-mode"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
    assert!(read_deploy("kustomization.yaml").contains(COMPONENT_OFF));
}

/// deploy/ copied with the cluster-mode switch turned on, rendered by `kubectl kustomize`.
fn render_with_cluster_mode(kubectl: &str) -> Vec<Value> {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("deploy");
    std::fs::create_dir_all(copy.join("cluster-mode")).unwrap();
    for dir in ["", "cluster-mode"] {
        for e in std::fs::read_dir(deploy_dir().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                std::fs::copy(&p, copy.join(dir).join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    let k = read_deploy("kustomization.yaml").replace(COMPONENT_OFF, COMPONENT_ON);
    std::fs::write(copy.join("kustomization.yaml"), k).unwrap();
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(&copy)
        .env("HOME", tmp.path())
        .env("KUBECACHEDIR", tmp.path().join("cache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        describe(&out)
    );
    serde_saphyr::from_multiple(&text(&out.stdout)).unwrap()
}

#[test]
fn cluster_mode_renders_least_privilege() {
    let Some(kubectl) = kubectl("cluster_mode_renders_least_privilege") else {
        return;
    };
    let docs = render_with_cluster_mode(&kubectl);
    assert_eq!(docs.len(), 6, "{docs:#?}");
    for d in &docs {
        assert_eq!(d["metadata"]["namespace"], NS, "{d}");
        assert_eq!(
            d["metadata"]["labels"]["app.kubernetes.io/name"], "fluxgate",
            "{d}"
        );
    }
    let named = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    // The default Role is unchanged by the component.
    let base: Value = serde_saphyr::from_str(&read_deploy("role.yaml")).unwrap();
    assert_eq!(named("Role", "fluxgate")["rules"], base["rules"]);

    let role = named("Role", "fluxgate-receivers");
    let mut strings = Vec::new();
    all_strings(&role["rules"], &mut strings);
    assert!(strings.iter().all(|s| !s.contains('*')), "{strings:?}");
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert_eq!(
        rules[0],
        json!({"apiGroups": ["notification.toolkit.fluxcd.io"], "resources": ["receivers"],
               "verbs": ["get", "list", "watch"]})
    );
    let secrets = &rules[1];
    assert_eq!(secrets["apiGroups"], json!([""]));
    assert_eq!(secrets["resources"], json!(["secrets"]));
    // Only get, and only on named Secrets: resourceNames cannot grant list or watch anyway.
    assert_eq!(secrets["verbs"], json!(["get"]));
    assert!(!str_list(&secrets["resourceNames"]).is_empty(), "{secrets}");

    let binding = named("RoleBinding", "fluxgate-receivers");
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "fluxgate-receivers"})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "fluxgate", "namespace": NS}])
    );
}

#[test]
fn cluster_mode_role_grants_what_fluxgate_reads_and_no_more() {
    let Some(kubectl) = kubectl("cluster_mode_role_grants_what_fluxgate_reads_and_no_more") else {
        return;
    };
    let mut cfg = Config::new()
        .user(ADMIN_TOKEN, ADMIN_USER)
        .user(SA_TOKEN, SA_USER);
    for file in ["role.yaml", "cluster-mode/role.yaml"] {
        for rule in common::deploy_role_rules(file, NS) {
            cfg = cfg.allow(SA_USER, rule);
        }
    }
    let api = StandIn::start(cfg).unwrap();
    let ws = Workspace::new(&api, kubectl);
    let kubeconfig = ws.path("fluxgate.kubeconfig");
    api.write_kubeconfig(&kubeconfig, SA_TOKEN).unwrap();
    let can = |args: &[&str]| ws.can_i(&kubeconfig, args);
    for verb in ["get", "list", "watch"] {
        assert!(
            can(&[verb, "receivers.notification.toolkit.fluxcd.io", "-n", NS]),
            "{verb}"
        );
    }
    for verb in ["create", "update", "patch", "delete"] {
        assert!(
            !can(&[verb, "receivers.notification.toolkit.fluxcd.io", "-n", NS]),
            "{verb}"
        );
    }
    assert!(!can(&[
        "patch",
        "receivers.notification.toolkit.fluxcd.io/status",
        "-n",
        NS
    ]));
    assert!(!can(&[
        "list",
        "receivers.notification.toolkit.fluxcd.io",
        "-n",
        "apps"
    ]));
    assert!(can(&["get", "secret/webhook-token", "-n", NS]));
    assert!(!can(&["get", "secret/fluxgate-token", "-n", NS]));
    for verb in ["list", "watch"] {
        assert!(!can(&[verb, "secrets", "-n", NS]), "{verb} secrets");
    }
    assert!(!can(&["update", "secret/webhook-token", "-n", NS]));
}

// ---------------------------------------------------------------------------------------------
// deploy/kubeconfig.sh against the stand-in API

fn git_repository(name: &str, namespace: &str) -> Value {
    json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
           "metadata": {"name": name, "namespace": namespace, "labels": {"app": "podinfo"}},
           "spec": {"interval": "10m", "url": "https://github.com/stefanprodan/podinfo"}})
}

/// The token Secret, filled in as the token controller does when `filled`.
fn token_secret(api: &StandIn, filled: bool) -> Value {
    let mut s = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "fluxgate-token", "namespace": NS,
                     "annotations": {"kubernetes.io/service-account.name": "fluxgate"}},
        "type": "kubernetes.io/service-account-token"});
    if filled {
        s["data"] = json!({
            "token": b64(SA_TOKEN.as_bytes()),
            "ca.crt": b64(api.ca_pem().as_bytes()),
            "namespace": b64(NS.as_bytes()),
        });
    }
    s
}

/// A stand-in cluster after `kubectl apply -k deploy/`: an admin who may do everything, the
/// service account with the Role's rules, and some Flux objects.
fn cluster() -> StandIn {
    let mut cfg = Config::new()
        .user(ADMIN_TOKEN, ADMIN_USER)
        .allow(ADMIN_USER, Rule::new(&["*"], &["*"], &["*"]))
        .user(SA_TOKEN, SA_USER)
        .object(git_repository("podinfo", NS))
        .object(git_repository("podinfo", "apps"))
        .object(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "webhook-token", "namespace": NS},
            "data": {"token": b64(b"receiver-token")}}));
    for rule in common::deploy_role_rules("role.yaml", NS) {
        cfg = cfg.allow(SA_USER, rule);
    }
    StandIn::start(cfg).unwrap()
}

/// A working directory with the admin kubeconfig, and a private HOME and kubectl cache.
struct Workspace {
    dir: tempfile::TempDir,
    kubectl: String,
}

impl Workspace {
    fn new(api: &StandIn, kubectl: String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        api.write_kubeconfig(&dir.path().join("admin.kubeconfig"), ADMIN_TOKEN)
            .unwrap();
        Workspace { dir, kubectl }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.current_dir(self.dir.path())
            .env("HOME", self.path("home"))
            .env("KUBECACHEDIR", self.path("cache"))
            .env("KUBECONFIG", self.path("admin.kubeconfig"))
            .env("KUBECTL", &self.kubectl)
    }

    /// `sh deploy/kubeconfig.sh ARGS` as the admin.
    fn script(&self, args: &[&str]) -> Output {
        self.env(
            Command::new("sh")
                .arg(deploy_dir().join("kubeconfig.sh"))
                .args(args),
        )
        .output()
        .unwrap()
    }

    /// kubectl with the kubeconfig the script wrote.
    fn as_fluxgate(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        self.env(
            Command::new(&self.kubectl)
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(args),
        )
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
    }

    /// `kubectl auth can-i` as fluxgate: true for "yes", false for "no".
    fn can_i(&self, kubeconfig: &Path, args: &[&str]) -> bool {
        let mut full = vec!["auth", "can-i"];
        full.extend_from_slice(args);
        let o = self.as_fluxgate(kubeconfig, &full);
        match text(&o.stdout).trim() {
            "yes" if o.status.success() => true,
            "no" if o.status.code() == Some(1) => false,
            _ => panic!("kubectl auth can-i {args:?}: {}", describe(&o)),
        }
    }
}

#[test]
fn kubeconfig_script_writes_a_working_kubeconfig() {
    let Some(kubectl) = kubectl("kubeconfig_script_writes_a_working_kubeconfig") else {
        return;
    };
    let api = cluster();
    api.put_object(token_secret(&api, true));
    let ws = Workspace::new(&api, kubectl);

    // Defaults: ./fluxgate.kubeconfig, flux-system/fluxgate-token, the admin context's server.
    let o = ws.script(&["--context", ADMIN_CONTEXT]);
    assert!(o.status.success(), "kubeconfig.sh: {}", describe(&o));
    let out = ws.path("fluxgate.kubeconfig");
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("fluxgate check --config"),
        "next step: {stdout}"
    );
    assert!(stdout.contains(&out.display().to_string()) || stdout.contains("fluxgate.kubeconfig"));
    assert!(
        !stdout.contains(SA_TOKEN) && !text(&o.stderr).contains(SA_TOKEN),
        "the token was printed"
    );
    assert_eq!(common::mode(&out), 0o600, "mode of {}", out.display());

    // It holds the Secret's ca.crt as it is, the token decoded, the admin context's server.
    let written: Value = serde_saphyr::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let cluster = &written["clusters"][0]["cluster"];
    assert_eq!(cluster["server"], api.url());
    assert_eq!(
        cluster["certificate-authority-data"],
        b64(api.ca_pem().as_bytes())
    );
    assert_eq!(written["users"][0]["user"]["token"], SA_TOKEN);
    assert_eq!(written["current-context"], "fluxgate");

    // Real kubectl, with that file alone, as the service account.
    let o = ws.as_fluxgate(
        &out,
        &[
            "get",
            "--raw",
            "/apis/source.toolkit.fluxcd.io/v1/namespaces/flux-system/gitrepositories/podinfo",
        ],
    );
    assert!(o.status.success(), "get --raw: {}", describe(&o));
    let repo: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(repo["metadata"]["name"], "podinfo");

    let o = ws.as_fluxgate(
        &out,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert!(o.status.success(), "auth whoami: {}", describe(&o));
    assert_eq!(text(&o.stdout).trim(), SA_USER);

    // What fluxgate does: list by label selector, then the merge patch.
    let o = ws.as_fluxgate(
        &out,
        &[
            "-n",
            NS,
            "get",
            "gitrepositories",
            "-l",
            "app=podinfo",
            "-o",
            "name",
        ],
    );
    assert!(o.status.success(), "list: {}", describe(&o));
    assert_eq!(
        text(&o.stdout).trim(),
        "gitrepository.source.toolkit.fluxcd.io/podinfo"
    );
    let o = ws.as_fluxgate(
        &out,
        &[
            "-n",
            NS,
            "patch",
            "gitrepository",
            "podinfo",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"annotations":{"reconcile.fluxcd.io/requestedAt":"2025-01-01T00:00:00Z"}}}"#,
        ],
    );
    assert!(o.status.success(), "patch: {}", describe(&o));
    let stored = api
        .object(
            "source.toolkit.fluxcd.io/v1",
            "GitRepository",
            NS,
            "podinfo",
        )
        .unwrap();
    assert_eq!(
        stored["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"],
        "2025-01-01T00:00:00Z"
    );

    // And nothing more: no Secrets, no other verbs, no other namespace.
    let fluxgate_may = |args: &[&str]| ws.can_i(&out, args);
    assert!(!fluxgate_may(&["get", "secrets", "-n", NS]));
    assert!(!fluxgate_may(&["list", "secrets", "-n", NS]));
    for (group, resource) in DEFAULT_TARGETS {
        let r = format!("{resource}.{group}");
        for verb in ["list", "patch"] {
            assert!(fluxgate_may(&[verb, &r, "-n", NS]), "{verb} {r}");
        }
        assert!(!fluxgate_may(&["delete", &r, "-n", NS]), "delete {r}");
        assert!(
            !fluxgate_may(&["patch", &r, "-n", "apps"]),
            "patch {r} in apps"
        );
    }
    let r = "gitrepositories.source.toolkit.fluxcd.io";
    assert!(fluxgate_may(&["get", r, "-n", NS]));
    for verb in ["watch", "create", "update", "deletecollection"] {
        assert!(!fluxgate_may(&[verb, r, "-n", NS]), "{verb} {r}");
    }
    assert!(!fluxgate_may(&["list", r, "--all-namespaces"]));
    assert!(!fluxgate_may(&[
        "patch",
        "imagepolicies.image.toolkit.fluxcd.io",
        "-n",
        NS
    ]));
    let o = ws.as_fluxgate(&out, &["-n", NS, "get", "secret", "webhook-token"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("Forbidden"), "{}", describe(&o));
    let o = ws.as_fluxgate(
        &out,
        &[
            "get",
            "--raw",
            "/apis/source.toolkit.fluxcd.io/v1/namespaces/apps/gitrepositories/podinfo",
        ],
    );
    assert!(!o.status.success(), "read in apps: {}", describe(&o));

    // The step the script prints next: `fluxgate check` with that kubeconfig finds every
    // target allowed (patch, and list for a selector) and no excess rights.
    let check = fluxgate_check(&ws, &out);
    let stdout = text(&check.stdout);
    assert!(
        check.status.success(),
        "fluxgate check: {}",
        describe(&check)
    );
    assert!(!stdout.contains("problem:"), "{stdout}");
    assert!(
        !stdout
            .lines()
            .any(|l| l.starts_with("warning:") && l.contains("service account")),
        "excess rights: {stdout}"
    );
    for line in ["may patch", "may list", "kubernetes API https://127.0.0.1:"] {
        assert!(stdout.contains(line), "no {line:?} in {stdout}");
    }
}

/// `fluxgate check` with a configuration whose receiver targets Flux objects in flux-system
/// by name and by label selector, through `kubeconfig`.
fn fluxgate_check(ws: &Workspace, kubeconfig: &Path) -> Output {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    std::fs::write(ws.path("tls.crt"), cert.cert.pem()).unwrap();
    std::fs::write(ws.path("tls.key"), cert.key_pair.serialize_pem()).unwrap();
    std::fs::write(ws.path("webhook-token"), "receiver-token").unwrap();
    // As the README's guide has them: only fluxgate's account may read them (check fails else).
    for f in ["tls.key", "webhook-token"] {
        common::owner_only(&ws.path(f));
    }
    let d = ws.dir.path().display();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:18443\"\nadmin_listen = \"127.0.0.1:19102\"\n\
         tls_cert = \"{d}/tls.crt\"\ntls_key = \"{d}/tls.key\"\n\n\
         [kubernetes]\nkubeconfig = \"{k}\"\n\n\
         [[receivers]]\nname = \"github-receiver\"\nnamespace = \"flux-system\"\n\
         type = \"github\"\nevents = [\"push\"]\nsecret_file = \"{d}/webhook-token\"\n\
         resources = [\n\
           {{ kind = \"GitRepository\", name = \"podinfo\" }},\n\
           {{ kind = \"Kustomization\", apiVersion = \"kustomize.toolkit.fluxcd.io/v1\", \
              name = \"*\", matchLabels = {{ app = \"podinfo\" }} }},\n\
           {{ kind = \"HelmRelease\", apiVersion = \"helm.toolkit.fluxcd.io/v2\", name = \"podinfo\" }},\n\
         ]\n",
        k = kubeconfig.display()
    );
    std::fs::write(ws.path("fluxgate.toml"), config).unwrap();
    ws.env(
        Command::new(env!("CARGO_BIN_EXE_fluxgate"))
            .args(["check", "--config"])
            .arg(ws.path("fluxgate.toml")),
    )
    .env_remove("KUBECONFIG")
    .output()
    .unwrap()
}

#[test]
fn kubeconfig_script_options_and_an_existing_file() {
    let Some(kubectl) = kubectl("kubeconfig_script_options_and_an_existing_file") else {
        return;
    };
    let api = cluster();
    let mut secret = token_secret(&api, true);
    secret["metadata"]["name"] = json!("other-token");
    api.put_object(secret);
    let ws = Workspace::new(&api, kubectl);

    // An output file that exists with a looser mode is replaced by a mode-600 file.
    let out = ws.path("etc/kubeconfig");
    std::fs::create_dir(ws.path("etc")).unwrap();
    std::fs::write(&out, "old").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    // --server for an admin context that uses another address (here localhost, which the
    // stand-in's certificate also names); options as "--opt=value" too.
    let server = format!("https://localhost:{}", api.addr().port());
    let o = ws.script(&[
        "--output",
        out.to_str().unwrap(),
        &format!("--server={server}"),
        "--namespace",
        NS,
        "--secret=other-token",
        "--wait",
        "5",
    ]);
    assert!(o.status.success(), "kubeconfig.sh: {}", describe(&o));
    assert_eq!(common::mode(&out), 0o600);
    let written: Value = serde_saphyr::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(written["clusters"][0]["cluster"]["server"], server.as_str());
    let leftovers: Vec<_> = std::fs::read_dir(ws.path("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "temporary files left: {leftovers:?}");

    let o = ws.as_fluxgate(
        &out,
        &["-n", NS, "get", "gitrepository", "podinfo", "-o", "name"],
    );
    assert!(o.status.success(), "through --server: {}", describe(&o));

    // Bad options say so.
    for (args, why) in [
        (&["--server", "http://127.0.0.1:6443"][..], "https://"),
        (&["--wait", "soon"][..], "--wait"),
        (&["--bogus"][..], "unknown argument"),
        (&["--output"][..], "needs a value"),
    ] {
        let o = ws.script(args);
        assert!(!o.status.success(), "{args:?}: {}", describe(&o));
        assert!(text(&o.stderr).contains(why), "{args:?}: {}", describe(&o));
    }
}

#[test]
fn kubeconfig_script_gives_up_on_an_unfilled_secret() {
    let Some(kubectl) = kubectl("kubeconfig_script_gives_up_on_an_unfilled_secret") else {
        return;
    };
    let api = cluster();
    api.put_object(token_secret(&api, false));
    let ws = Workspace::new(&api, kubectl);

    let started = Instant::now();
    let o = ws.script(&["--wait", "2"]);
    let took = started.elapsed();
    assert!(!o.status.success(), "{}", describe(&o));
    let stderr = text(&o.stderr);
    assert!(
        stderr.contains("flux-system/fluxgate-token still has no token")
            && stderr.contains("after 2s"),
        "{stderr}"
    );
    assert!(stderr.contains("token controller"), "{stderr}");
    assert!(took >= Duration::from_secs(2), "gave up after {took:?}");
    assert!(took < Duration::from_secs(30), "waited {took:?}");
    assert!(!ws.path("fluxgate.kubeconfig").exists());

    // Filled in later, as the controller does, the script picks it up while waiting.
    let late = {
        let secret = token_secret(&api, true);
        let api = &api;
        std::thread::scope(|s| {
            let h = s.spawn(|| ws.script(&["--wait", "20"]));
            std::thread::sleep(Duration::from_secs(2));
            api.put_object(secret);
            h.join().unwrap()
        })
    };
    assert!(late.status.success(), "{}", describe(&late));
    assert!(text(&late.stderr).contains("waiting up to 20s"));
    assert_eq!(common::mode(&ws.path("fluxgate.kubeconfig")), 0o600);
}

#[test]
fn kubeconfig_script_says_when_the_secret_is_missing() {
    let Some(kubectl) = kubectl("kubeconfig_script_says_when_the_secret_is_missing") else {
        return;
    };
    let api = cluster();
    let ws = Workspace::new(&api, kubectl);
    let o = ws.script(&["--wait", "0"]);
    assert!(!o.status.success(), "{}", describe(&o));
    let stderr = text(&o.stderr);
    assert!(
        stderr.contains("fluxgate-token not found") && stderr.contains("kubectl apply -k deploy/"),
        "{stderr}"
    );

    // A Secret of another type is not mistaken for the token.
    api.put_object(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "fluxgate-token", "namespace": NS},
        "data": {"token": b64(b"not-a-service-account-token")}}));
    let o = ws.script(&["--wait", "0"]);
    assert!(!o.status.success(), "{}", describe(&o));
    assert!(
        text(&o.stderr).contains("not kubernetes.io/service-account-token"),
        "{}",
        describe(&o)
    );
}

// ---------------------------------------------------------------------------------------------
// deploy/kubeconfig.sh for a fleet: one kubeconfig per admin context

/// The fleet's admin contexts: two plain names and an EKS-style ARN, whose ':' and '/' cannot
/// be part of a file name as they are.
const FLEET: &[&str] = &[
    "prod-eu",
    "prod-us",
    "arn:aws:eks:us-east-1:123456789012:cluster/staging",
];
const STAGING_FILE: &str = "arn_aws_eks_us-east-1_123456789012_cluster_staging.kubeconfig";

/// One cluster of a fleet after `kubectl --context X apply -k deploy/`: its own stand-in API
/// (its own CA), its own admin token and its own service-account token.
struct FleetCluster {
    context: &'static str,
    api: StandIn,
    admin_token: String,
    sa_token: String,
}

fn fleet_cluster(n: usize, context: &'static str, with_secret: bool) -> FleetCluster {
    let admin_token = format!("admin-token-of-cluster-{n}");
    // Shaped like a service-account JWT, and different in every cluster.
    let sa_token = format!("eyJhbGciOiJSUzI1NiJ9.eyJjbHVzdGVyIjoi{n}In0.c2lnbmF0dXJl-{n}");
    let mut cfg = Config::new()
        .user(&admin_token, ADMIN_USER)
        .allow(ADMIN_USER, Rule::new(&["*"], &["*"], &["*"]))
        .user(&sa_token, SA_USER)
        .object(git_repository("podinfo", NS));
    for rule in common::deploy_role_rules("role.yaml", NS) {
        cfg = cfg.allow(SA_USER, rule);
    }
    let api = StandIn::start(cfg).unwrap();
    if with_secret {
        let mut secret = token_secret(&api, true);
        secret["data"]["token"] = json!(b64(sa_token.as_bytes()));
        api.put_object(secret);
    }
    FleetCluster {
        context,
        api,
        admin_token,
        sa_token,
    }
}

/// A workspace whose admin kubeconfig has one context per cluster (the first is current).
fn fleet_workspace(clusters: &[FleetCluster], kubectl: String) -> Workspace {
    let q = |s: &str| serde_json::to_string(s).unwrap();
    let mut kinds = [String::new(), String::new(), String::new()];
    for (n, c) in clusters.iter().enumerate() {
        kinds[0] += &format!(
            "- name: cluster-{n}\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n",
            q(&c.api.url()),
            b64(c.api.ca_pem().as_bytes())
        );
        kinds[1] += &format!(
            "- name: admin-{n}\n  user:\n    token: {}\n",
            q(&c.admin_token)
        );
        kinds[2] += &format!(
            "- name: {}\n  context:\n    cluster: cluster-{n}\n    user: admin-{n}\n",
            q(c.context)
        );
    }
    let [clusters_yaml, users, contexts] = kinds;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("admin.kubeconfig"),
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n{clusters_yaml}users:\n{users}\
             contexts:\n{contexts}current-context: {}\n",
            q(clusters[0].context)
        ),
    )
    .unwrap();
    Workspace { dir, kubectl }
}

/// The kubeconfig the script wrote holds this cluster's server, CA and token, and works with
/// the real kubectl as the service account in that cluster alone.
fn assert_kubeconfig_for(ws: &Workspace, file: &Path, c: &FleetCluster, stamp: &str) {
    assert_eq!(common::mode(file), 0o600, "mode of {}", file.display());
    let written: Value = serde_saphyr::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let cluster = &written["clusters"][0]["cluster"];
    assert_eq!(cluster["server"], c.api.url(), "{}", c.context);
    assert_eq!(
        cluster["certificate-authority-data"],
        b64(c.api.ca_pem().as_bytes()),
        "{}",
        c.context
    );
    assert_eq!(written["users"][0]["user"]["token"], c.sa_token.as_str());

    let o = ws.as_fluxgate(
        file,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert!(
        o.status.success(),
        "{}: whoami: {}",
        c.context,
        describe(&o)
    );
    assert_eq!(text(&o.stdout).trim(), SA_USER);
    let patch = format!(
        r#"{{"metadata":{{"annotations":{{"reconcile.fluxcd.io/requestedAt":"{stamp}"}}}}}}"#
    );
    let o = ws.as_fluxgate(
        file,
        &[
            "-n",
            NS,
            "patch",
            "gitrepository",
            "podinfo",
            "--type",
            "merge",
            "-p",
            &patch,
        ],
    );
    assert!(o.status.success(), "{}: patch: {}", c.context, describe(&o));
    assert!(
        !ws.can_i(file, &["get", "secrets", "-n", NS]),
        "{}",
        c.context
    );
}

/// The annotation fluxgate's patch leaves on podinfo in this cluster, if any.
fn requested_at(c: &FleetCluster) -> Value {
    let repo = c
        .api
        .object(
            "source.toolkit.fluxcd.io/v1",
            "GitRepository",
            NS,
            "podinfo",
        )
        .unwrap();
    repo["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"].clone()
}

fn file_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn assert_no_token_printed(o: &Output, clusters: &[FleetCluster]) {
    for c in clusters {
        assert!(
            !text(&o.stdout).contains(&c.sa_token) && !text(&o.stderr).contains(&c.sa_token),
            "the token of {} was printed: {}",
            c.context,
            describe(o)
        );
    }
}

#[test]
fn kubeconfig_script_writes_one_kubeconfig_per_context() {
    let Some(kubectl) = kubectl("kubeconfig_script_writes_one_kubeconfig_per_context") else {
        return;
    };
    let fleet: Vec<FleetCluster> = FLEET
        .iter()
        .enumerate()
        .map(|(n, ctx)| fleet_cluster(n, ctx, true))
        .collect();
    let ws = fleet_workspace(&fleet, kubectl);
    let [eu, us, staging] = &fleet[..] else {
        unreachable!()
    };

    // --context repeated: one file per named context, in a directory the script creates
    // owner-only; the contexts not named are left alone.
    let o = ws.script(&[
        "--output-dir",
        "clusters",
        "--context",
        "prod-eu",
        "--context=prod-us",
    ]);
    assert!(o.status.success(), "kubeconfig.sh: {}", describe(&o));
    assert_no_token_printed(&o, &fleet);
    let dir = ws.path("clusters");
    assert_eq!(common::mode(&dir), 0o700, "mode of {}", dir.display());
    assert_eq!(
        file_names(&dir),
        BTreeSet::from(["prod-eu.kubeconfig".into(), "prod-us.kubeconfig".into()]),
        "files (and no temporaries)"
    );
    assert_kubeconfig_for(
        &ws,
        &dir.join("prod-eu.kubeconfig"),
        eu,
        "2025-01-01T00:00:01Z",
    );
    assert_kubeconfig_for(
        &ws,
        &dir.join("prod-us.kubeconfig"),
        us,
        "2025-01-01T00:00:02Z",
    );
    // Each file reached its own cluster, and only that one.
    assert_eq!(requested_at(eu), "2025-01-01T00:00:01Z");
    assert_eq!(requested_at(us), "2025-01-01T00:00:02Z");
    assert_eq!(requested_at(staging), Value::Null);

    // The next step: a [[clusters]] table per file, with a name fluxgate accepts.
    let stdout = text(&o.stdout);
    let abs = dir.canonicalize().unwrap();
    for name in ["prod-eu", "prod-us"] {
        assert!(
            stdout.contains(&format!(
                "  [[clusters]]\n  name = \"{name}\"\n  kubeconfig = \"{}/{name}.kubeconfig\"\n",
                abs.display()
            )),
            "no [[clusters]] table for {name}: {stdout}"
        );
        assert!(
            stdout.contains(&format!("from context '{name}'")),
            "{stdout}"
        );
    }
    assert!(stdout.contains("fluxgate check --config"), "{stdout}");

    // --all-contexts: every context of the admin kubeconfig, the ARN as a safe file name and
    // a DNS-label cluster name.
    let o = ws.script(&["--all-contexts", "--output-dir=all"]);
    assert!(o.status.success(), "--all-contexts: {}", describe(&o));
    assert_no_token_printed(&o, &fleet);
    let all = ws.path("all");
    assert_eq!(
        file_names(&all),
        BTreeSet::from([
            "prod-eu.kubeconfig".into(),
            "prod-us.kubeconfig".into(),
            STAGING_FILE.into()
        ])
    );
    assert_kubeconfig_for(
        &ws,
        &all.join(STAGING_FILE),
        staging,
        "2025-01-01T00:00:03Z",
    );
    assert_eq!(requested_at(staging), "2025-01-01T00:00:03Z");
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("name = \"arn-aws-eks-us-east-1-123456789012-cluster-staging\""),
        "{stdout}"
    );
    assert_eq!(stdout.matches("  [[clusters]]\n").count(), 3, "{stdout}");

    // One --context and no --output-dir is today's single-cluster use: ./fluxgate.kubeconfig.
    let o = ws.script(&["--context", "prod-us"]);
    assert!(o.status.success(), "single context: {}", describe(&o));
    assert!(text(&o.stdout).contains("[kubernetes]"), "{}", describe(&o));
    assert!(
        !text(&o.stdout).contains("[[clusters]]"),
        "{}",
        describe(&o)
    );
    assert_kubeconfig_for(
        &ws,
        &ws.path("fluxgate.kubeconfig"),
        us,
        "2025-01-01T00:00:04Z",
    );
}

#[test]
fn kubeconfig_script_per_context_failures_and_options() {
    let Some(kubectl) = kubectl("kubeconfig_script_per_context_failures_and_options") else {
        return;
    };
    // prod-us has no token Secret yet (deploy/ not applied there), staging is down.
    let fleet: Vec<FleetCluster> = FLEET
        .iter()
        .enumerate()
        .map(|(n, ctx)| fleet_cluster(n, ctx, n != 1))
        .collect();
    fleet[2].api.set_down(true);
    let ws = fleet_workspace(&fleet, kubectl);

    // The others are still written; each failing context is named with its reason, and the
    // script exits 1.
    let started = Instant::now();
    let o = ws.script(&["--all-contexts", "--output-dir", "out", "--wait", "0"]);
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert_no_token_printed(&o, &fleet);
    let stderr = text(&o.stderr);
    assert!(
        stderr.contains("context prod-us: Secret flux-system/fluxgate-token not found"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("context {}: cannot read Secret", FLEET[2])),
        "{stderr}"
    );
    // In kubectl's order (by name).
    assert!(
        stderr.contains(&format!(
            "no kubeconfig written for context(s) {}, prod-us",
            FLEET[2]
        )),
        "{stderr}"
    );
    assert_eq!(
        file_names(&ws.path("out")),
        BTreeSet::from(["prod-eu.kubeconfig".into()])
    );
    assert_kubeconfig_for(
        &ws,
        &ws.path("out/prod-eu.kubeconfig"),
        &fleet[0],
        "2025-01-01T00:00:05Z",
    );
    let stdout = text(&o.stdout);
    assert_eq!(stdout.matches("  [[clusters]]\n").count(), 1, "{stdout}");
    assert!(stdout.contains("name = \"prod-eu\""), "{stdout}");
    assert!(took < Duration::from_secs(30), "took {took:?}");

    // Options that cannot mean anything with several contexts say so, before touching any
    // cluster.
    for (args, why) in [
        (
            &[
                "--context",
                "prod-eu",
                "--context",
                "prod-us",
                "--output",
                "x",
            ][..],
            "--output names one file",
        ),
        (
            &[
                "--context",
                "prod-eu",
                "--context",
                "prod-us",
                "--server",
                "https://10.0.0.1",
            ][..],
            "--server is one cluster's address",
        ),
        (
            &["--all-contexts", "--context", "prod-eu"][..],
            "exclude each other",
        ),
        (
            &["--context", "prod-eu", "--context", "prod-eu"][..],
            "--context prod-eu is given twice",
        ),
        (
            &["--context", "a/b", "--context", "a:b"][..],
            "same file name a_b.kubeconfig",
        ),
    ] {
        let o = ws.script(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", describe(&o));
        assert!(text(&o.stderr).contains(why), "{args:?}: {}", describe(&o));
        assert!(!ws.path("x").exists());
    }

    // A context the admin kubeconfig does not have is named.
    let o = ws.script(&["--output-dir", "none", "--context", "prod-ap"]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let stderr = text(&o.stderr);
    assert!(
        stderr.contains("context prod-ap: cannot read the API server URL"),
        "{stderr}"
    );
    assert!(file_names(&ws.path("none")).is_empty());
}

// ---------------------------------------------------------------------------------------------
// deploy/events: the optional component for relay.events

#[test]
fn events_component_renders_least_privilege() {
    let Some(kubectl) = kubectl("events_component_renders_least_privilege") else {
        return;
    };
    let k: Value = serde_saphyr::from_str(&read_deploy("events/kustomization.yaml")).unwrap();
    assert_eq!(k["kind"], "Component");
    assert_eq!(str_list(&k["resources"]), ["role.yaml", "rolebinding.yaml"]);
    // Off as shipped; the comment says how to turn it on.
    assert!(read_deploy("kustomization.yaml").contains("#   - events\n"));

    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("deploy");
    std::fs::create_dir_all(copy.join("events")).unwrap();
    for dir in ["", "events"] {
        for e in std::fs::read_dir(deploy_dir().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                std::fs::copy(&p, copy.join(dir).join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    let on = read_deploy("kustomization.yaml").replace(COMPONENT_OFF, "components:\n  - events\n");
    std::fs::write(copy.join("kustomization.yaml"), on).unwrap();
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(&copy)
        .env("HOME", tmp.path())
        .env("KUBECACHEDIR", tmp.path().join("cache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        describe(&out)
    );
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text(&out.stdout)).unwrap();
    assert_eq!(docs.len(), 6, "{docs:#?}");
    for d in &docs {
        assert_eq!(d["metadata"]["namespace"], NS, "{d}");
    }
    let named = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    assert_eq!(
        named("Role", "fluxgate-events")["rules"],
        json!([{"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}])
    );
    assert_eq!(
        named("RoleBinding", "fluxgate-events")["subjects"],
        json!([{"kind": "ServiceAccount", "name": "fluxgate", "namespace": NS}])
    );
}

// ---------------------------------------------------------------------------------------------
// deploy/acme: the optional component for ACME storage in the cluster

#[test]
fn acme_component_renders_least_privilege() {
    let Some(kubectl) = kubectl("acme_component_renders_least_privilege") else {
        return;
    };
    let k: Value = serde_saphyr::from_str(&read_deploy("acme/kustomization.yaml")).unwrap();
    assert_eq!(k["kind"], "Component");
    assert_eq!(
        str_list(&k["resources"]),
        ["objects.yaml", "role.yaml", "rolebinding.yaml"]
    );
    // Off as shipped; the comment says how to turn it on.
    assert!(read_deploy("kustomization.yaml").contains("#   - acme\n"));

    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("deploy");
    std::fs::create_dir_all(copy.join("acme")).unwrap();
    for dir in ["", "acme"] {
        for e in std::fs::read_dir(deploy_dir().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                std::fs::copy(&p, copy.join(dir).join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    let on = read_deploy("kustomization.yaml").replace(COMPONENT_OFF, "components:\n  - acme\n");
    std::fs::write(copy.join("kustomization.yaml"), on).unwrap();
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(&copy)
        .env("HOME", tmp.path())
        .env("KUBECACHEDIR", tmp.path().join("cache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        describe(&out)
    );
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text(&out.stdout)).unwrap();
    assert_eq!(docs.len(), 9, "{docs:#?}");
    for d in &docs {
        assert_eq!(d["metadata"]["namespace"], NS, "{d}");
    }
    let named = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    // get/update only, only on the named objects: no create (which Kubernetes cannot restrict
    // by name), list, watch, patch or delete anywhere.
    assert_eq!(
        named("Role", "fluxgate-acme")["rules"],
        json!([
            {"apiGroups": [""], "resources": ["secrets"],
             "resourceNames": ["fluxgate-tls", "fluxgate-acme-account"],
             "verbs": ["get", "update"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "resourceNames": ["fluxgate-acme"], "verbs": ["get", "update"]}
        ])
    );
    // So the component creates the objects, empty, and Flux creates them only when missing.
    let tls = named("Secret", "fluxgate-tls");
    assert_eq!(tls["type"], "kubernetes.io/tls");
    assert_eq!(tls["data"], json!({"tls.crt": "", "tls.key": ""}));
    assert_eq!(named("Secret", "fluxgate-acme-account")["type"], "Opaque");
    named("Lease", "fluxgate-acme");
    for (kind, name) in [
        ("Secret", "fluxgate-tls"),
        ("Secret", "fluxgate-acme-account"),
        ("Lease", "fluxgate-acme"),
    ] {
        assert_eq!(
            named(kind, name)["metadata"]["annotations"]["kustomize.toolkit.fluxcd.io/ssa"],
            "IfNotPresent"
        );
    }
    assert_eq!(
        named("RoleBinding", "fluxgate-acme")["subjects"],
        json!([{"kind": "ServiceAccount", "name": "fluxgate", "namespace": NS}])
    );
    assert_eq!(
        named("RoleBinding", "fluxgate-acme")["roleRef"]["name"],
        "fluxgate-acme"
    );
}
