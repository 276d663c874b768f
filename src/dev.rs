//! `fluxgate dev`: the whole path of a delivery on one machine with nothing else installed.
//! A self-signed certificate, a stand-in Kubernetes API holding a few Flux objects, a receiver
//! configuration written to a folder, and a signed `curl` to paste.

use crate::edge::{self, RunOptions};
use crate::hook_path::flux_hook_path;
use crate::verify::{signature, Algorithm};
use kube_standin::{Config as ApiConfig, Rule, StandIn};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The sample delivery: a real GitHub push payload (octokit/webhooks, MIT; see
/// tests/fixtures/NOTICE.md).
const PUSH: &[u8] = include_bytes!("../tests/fixtures/github/push.json");
const SERVICE_ACCOUNT: &str = "system:serviceaccount:flux-system:fluxgate";

#[derive(clap::Args, Debug)]
pub struct DevOptions {
    /// The gateway's HTTPS listener.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// The admin listener (/healthz, /readyz).
    #[arg(long, default_value = "127.0.0.1:9102")]
    admin_listen: SocketAddr,
    /// Where to write the certificate, secrets, kubeconfig and configuration
    /// (default: a new folder under the system's temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Serve this certificate (PEM) instead of a new self-signed one; needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Use this receiver token instead of a random one.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The receiver's name (with namespace flux-system it makes the hook path).
    #[arg(long, default_value = "github-receiver")]
    receiver: String,
    /// For load tests (bench/peers/run.sh): rate limits wide open, no penalty box, no
    /// deduplication (load generators repeat one signed body with fresh ids), answers 202 as
    /// soon as a delivery is queued, an in-memory queue, and only warnings logged.
    #[arg(long)]
    pub bench: bool,
    /// Start this many stand-in APIs, each its own cluster (`dev-1`..`dev-N`, its own server,
    /// CA and token, the same Flux objects), all reached by the receiver: the fan-out of a
    /// fleet. With 1 (the default), the single stand-in is the cluster `default`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=MAX_CLUSTERS))]
    clusters: u16,
}

/// Each stand-in is a thread with its own runtime: enough for a fleet on a laptop.
const MAX_CLUSTERS: i64 = 100;

/// One stand-in API and the name of the cluster it plays.
struct DevCluster {
    name: String,
    api: StandIn,
}

fn random_hex(n: usize) -> Result<String, String> {
    let mut buf = vec![0u8; n];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut buf)
        .map_err(|_| "no system randomness".to_string())?;
    Ok(hex::encode(buf))
}

fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> Result<PathBuf, String> {
    let p = dir.join(name);
    std::fs::write(&p, contents).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    Ok(p)
}

/// A key or token, readable by its owner only, as `serve` asks of them (and warns otherwise).
/// The file is owner-only before the secret is in it, also when `--dir` already held one.
fn write_private(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> Result<PathBuf, String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let p = dir.join(name);
    let cannot = |e: std::io::Error| format!("cannot write {}: {e}", p.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&p)
        .map_err(cannot)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(cannot)?;
    f.write_all(contents.as_ref()).map_err(cannot)?;
    Ok(p)
}

/// A new folder under `parent` (the shared temporary folder), kept after exit for the files
/// the user is shown: a random name nobody can plant a link at beforehand (a name taken,
/// link or not, is never reused: another is drawn), created owner-only in the same step.
fn fresh_dir(parent: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix("fluxgate-dev-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)
        .map(tempfile::TempDir::keep)
        .map_err(|e| format!("cannot create a folder in {}: {e}", parent.display()))
}

fn flux_objects() -> Vec<serde_json::Value> {
    let labels = json!({"app.kubernetes.io/part-of": "podinfo"});
    vec![
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
               "metadata": {"name": "podinfo", "namespace": "flux-system", "labels": labels},
               "spec": {"url": "https://github.com/stefanprodan/podinfo", "interval": "10m"}}),
        json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
               "metadata": {"name": "podinfo", "namespace": "flux-system", "labels": labels},
               "spec": {"path": "./kustomize", "interval": "10m", "prune": true}}),
        json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
               "metadata": {"name": "podinfo-extras", "namespace": "flux-system", "labels": labels},
               "spec": {"path": "./extras", "interval": "10m", "prune": true}}),
    ]
}

/// A stand-in API holding the Flux objects, where the service account `sa_token` may get,
/// list and patch them (and nothing else), in flux-system.
fn start_standin(sa_token: &str) -> Result<StandIn, String> {
    let mut api = ApiConfig::new().user(sa_token, SERVICE_ACCOUNT).allow(
        SERVICE_ACCOUNT,
        Rule::new(
            &["get", "list", "patch"],
            &["source.toolkit.fluxcd.io", "kustomize.toolkit.fluxcd.io"],
            &["gitrepositories", "kustomizations"],
        )
        .in_namespaces(&["flux-system"]),
    );
    for o in flux_objects() {
        api = api.object(o);
    }
    StandIn::start(api).map_err(|e| format!("cannot start the stand-in API: {e}"))
}

/// Where the receiver reaches: `[kubernetes]` alone, or every `[[clusters]]` table.
fn clusters_config(dir: &Path, clusters: &[DevCluster]) -> (String, &'static str) {
    if clusters.len() == 1 {
        return (
            format!(
                "[kubernetes]\nkubeconfig = \"{}/kubeconfig\"\n",
                dir.display()
            ),
            "",
        );
    }
    let mut out = String::new();
    for (i, c) in clusters.iter().enumerate() {
        // Odd and even clusters, to try `cluster_selector` by editing the configuration.
        let half = if i % 2 == 0 { "odd" } else { "even" };
        out.push_str(&format!(
            "[[clusters]]\nname = \"{name}\"\nkubeconfig = \"{dir}/kubeconfig-{name}\"\nlabels = {{ env = \"dev\", half = \"{half}\" }}\n\n",
            name = c.name,
            dir = dir.display(),
        ));
    }
    out.truncate(out.trim_end().len() + 1);
    (out, "clusters = [\"*\"]\n")
}

pub fn run(opts: DevOptions) -> Result<(), String> {
    let dir = match opts.dir {
        Some(d) => {
            std::fs::create_dir_all(&d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
            d
        }
        None => fresh_dir(&std::env::temp_dir())?,
    };

    let (cert_path, key_path) = match (&opts.tls_cert, &opts.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let cert =
                rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                    .map_err(|e| format!("cannot make a certificate: {e}"))?;
            (
                write(&dir, "tls.crt", cert.cert.pem())?,
                write_private(&dir, "tls.key", cert.key_pair.serialize_pem())?,
            )
        }
    };

    let fleet = opts.clusters > 1;
    let mut clusters = Vec::with_capacity(usize::from(opts.clusters));
    for i in 1..=opts.clusters {
        // Alone, the stand-in is `[kubernetes]`, as before; in a fleet each is `dev-I`.
        let (name, file) = if fleet {
            (format!("dev-{i}"), format!("kubeconfig-dev-{i}"))
        } else {
            (String::new(), "kubeconfig".to_string())
        };
        let sa_token = random_hex(32)?;
        let api = start_standin(&sa_token)?;
        let kubeconfig = dir.join(file);
        api.write_kubeconfig(&kubeconfig, &sa_token)
            .map_err(|e| format!("cannot write {}: {e}", kubeconfig.display()))?;
        clusters.push(DevCluster { name, api });
    }

    // The same token format `flux create secret receiver` generates.
    let (token, token_path) = match &opts.token_file {
        Some(f) => (
            crate::secret::Secret::from_file(f)
                .map(|s| String::from_utf8_lossy(s.expose()).into_owned())?,
            f.clone(),
        ),
        None => {
            let t = random_hex(32)?;
            let p = write_private(&dir, "webhook-token", &t)?;
            (t, p)
        }
    };
    let name = opts.receiver.as_str();
    let (cluster_tables, reach) = clusters_config(&dir, &clusters);
    let tuning = if opts.bench {
        "[relay]\nwait = \"0s\"\n\n[limits]\nper_ip = \"1000000/s\"\nper_ip_burst = 1000000\nper_receiver = \"1000000/s\"\nper_receiver_burst = 1000000\nblock_after_failures = 0\nmax_connections_per_ip = 0\n".to_string()
    } else {
        format!("[relay]\nqueue_dir = \"{}/queue\"\n", dir.display())
    };
    let config = format!(
        r#"# Written by `fluxgate dev`. Every key is explained in config/fluxgate.toml.
[server]
listen = "{listen}"
admin_listen = "{admin}"
tls_cert = "{cert}"
tls_key = "{key}"
upgrade_sock = "{dir}/upgrade.sock"

{clusters}
{tuning}
[[receivers]]
name = "{name}"
namespace = "flux-system"
type = "github"
events = ["ping", "push"]
secret_file = "{token}"
{replay}{reach}resources = [
  {{ kind = "GitRepository", name = "podinfo" }},
  {{ kind = "Kustomization", apiVersion = "kustomize.toolkit.fluxcd.io/v1", name = "*", matchLabels = {{ "app.kubernetes.io/part-of" = "podinfo" }} }},
]
"#,
        listen = opts.listen,
        admin = opts.admin_listen,
        dir = dir.display(),
        clusters = cluster_tables,
        token = token_path.display(),
        cert = cert_path.display(),
        key = key_path.display(),
        replay = if opts.bench {
            "replay_window = \"0s\"\n"
        } else {
            ""
        },
    );
    let config_path = write(&dir, "fluxgate.toml", config)?;
    let body_path = write(&dir, "push.json", PUSH)?;

    let (settings, kube) = crate::cli::prepare(&config_path)?;
    edge::check_bind(&settings)?;

    let hook = flux_hook_path(token.as_bytes(), name, "flux-system");
    let sig = signature::sign(Algorithm::Sha256, token.as_bytes(), PUSH);
    println!(
        "\nfluxgate dev: the whole delivery path on this machine, no cluster needed.\n\n\
         gateway     https://{listen}{hook}\n\
         admin       http://{admin}/readyz\n\
         {apis}\
         files       {dir} (configuration: fluxgate.toml)\n\n\
         Send a signed GitHub push from another terminal:\n\n  \
         curl --cacert {cert} -H 'Content-Type: application/json' -H 'X-GitHub-Event: push' \\\n    \
         -H 'X-GitHub-Delivery: 11111111-2222-3333-4444-555555555555' \\\n    \
         -H 'X-Hub-Signature-256: sha256={sig}' \\\n    \
         --data-binary @{body} https://{listen}{hook}\n\n\
         {printed} Stop with Ctrl-C.\n",
        listen = opts.listen,
        admin = opts.admin_listen,
        apis = describe(&clusters),
        printed = if fleet {
            "Each stand-in API prints each patch it accepts below, after its cluster's name."
        } else {
            "The stand-in API prints each patch it accepts below."
        },
        dir = dir.display(),
        cert = cert_path.display(),
        body = body_path.display(),
    );
    if opts.bench {
        std::thread::spawn(move || keep(clusters));
    } else {
        std::thread::spawn(move || report_patches(clusters));
    }
    edge::run(&config_path, settings, kube, RunOptions::default())
}

const OBJECTS: &str = "GitRepository flux-system/podinfo and\n            \
                       Kustomizations flux-system/podinfo, flux-system/podinfo-extras";

/// The stand-in lines of the banner: one API as before, or one line per cluster.
fn describe(clusters: &[DevCluster]) -> String {
    match clusters {
        [one] => format!(
            "stand-in    Kubernetes API at {}, holding {OBJECTS}\n",
            one.api.url()
        ),
        _ => {
            let mut out = format!(
                "stand-ins   {} Kubernetes APIs, one per cluster (its own CA and token), each holding {OBJECTS}\n",
                clusters.len()
            );
            for c in clusters {
                out.push_str(&format!(
                    "            cluster {} at {}\n",
                    c.name,
                    c.api.url()
                ));
            }
            out
        }
    }
}

/// Keeps the stand-ins running for the life of the process, quietly.
fn keep(clusters: Vec<DevCluster>) {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
        let _ = clusters.len();
    }
}

/// Shows what reached each API, so a new user sees the delivery arrive at the cluster side,
/// in every cluster of a fleet.
fn report_patches(clusters: Vec<DevCluster>) {
    let mut seen = vec![0; clusters.len()];
    loop {
        std::thread::sleep(Duration::from_millis(200));
        for (c, seen) in clusters.iter().zip(seen.iter_mut()) {
            let reqs = c.api.requests();
            for r in reqs.iter().skip(*seen) {
                if r.method == "PATCH" {
                    println!("{}", patch_line(&c.name, r));
                }
            }
            *seen = reqs.len();
        }
    }
}

/// `stand-in API: PATCH ...` alone, `stand-in API dev-2: PATCH ...` in a fleet.
fn patch_line(cluster: &str, r: &kube_standin::Recorded) -> String {
    let who = if cluster.is_empty() {
        "stand-in API".to_string()
    } else {
        format!("stand-in API {cluster}")
    };
    format!(
        "{who}: {} {} -> {} {}",
        r.method,
        r.path,
        r.status,
        String::from_utf8_lossy(&r.body)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_default_folder_is_new_random_and_owner_only_whatever_was_planted() {
        let tmp = tempfile::tempdir().unwrap();
        // What another user could plant under the old predictable name, this process's pid.
        let elsewhere = tempfile::tempdir().unwrap();
        let planted = tmp
            .path()
            .join(format!("fluxgate-dev-{}", std::process::id()));
        std::os::unix::fs::symlink(elsewhere.path(), &planted).unwrap();
        let a = fresh_dir(tmp.path()).unwrap();
        let b = fresh_dir(tmp.path()).unwrap();
        assert_ne!(a, b);
        for d in [&a, &b] {
            let meta = std::fs::symlink_metadata(d).unwrap();
            assert!(
                meta.is_dir() && !meta.file_type().is_symlink(),
                "{}",
                d.display()
            );
            assert_eq!(mode(d), 0o700, "{}", d.display());
            assert_eq!(d.parent(), Some(tmp.path()));
            assert_ne!(d, &planted);
        }
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }

    #[test]
    fn keys_and_tokens_are_written_for_their_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_private(dir.path(), "webhook-token", "first").unwrap();
        assert_eq!(
            (mode(&p), std::fs::read_to_string(&p).unwrap()),
            (0o600, "first".into())
        );
        // A --dir used before, with a file others could read.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(dir.path(), "webhook-token", "second").unwrap();
        assert_eq!(
            (mode(&p), std::fs::read_to_string(&p).unwrap()),
            (0o600, "second".into())
        );
    }
}
