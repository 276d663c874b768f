//! Finding the receiver a request names: `Routes::find` over 1 to 10,000 receivers loaded by
//! the real configuration loader from a generated file.
//!
//! `cargo bench --bench routing`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fluxgate::config::Settings;
use fluxgate::edge::routes::Routes;
use http::Uri;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

const SIZES: [usize; 4] = [1, 100, 1_000, 10_000];

/// Writes a configuration with `n` GitHub receivers that share one token file; each has its own
/// name, so each gets its own Flux hook path (`/hook/` + sha256(token + name + namespace)).
fn write_config(dir: &Path, n: usize) -> std::path::PathBuf {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("tls.crt"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), cert.key_pair.serialize_pem()).unwrap();
    std::fs::write(dir.join("kubeconfig"), "apiVersion: v1\nkind: Config\n").unwrap();
    std::fs::write(
        dir.join("token"),
        "8f3c1a9e5b7d2f4608e1c3a5b7d9f0e2a4c6e8f0b2d4f6a8c0e2a4c6e8f0b2d4\n",
    )
    .unwrap();
    let d = dir.display();
    let mut toml = format!(
        "[server]\nlisten = \"127.0.0.1:8443\"\nadmin_listen = \"127.0.0.1:9102\"\n\
         tls_cert = \"{d}/tls.crt\"\ntls_key = \"{d}/tls.key\"\n\n\
         [kubernetes]\nkubeconfig = \"{d}/kubeconfig\"\n"
    );
    for i in 0..n {
        write!(
            toml,
            "\n[[receivers]]\nname = \"app-{i}\"\nnamespace = \"flux-system\"\ntype = \"github\"\n\
             events = [\"push\"]\nsecret_file = \"{d}/token\"\n\
             resources = [{{ kind = \"GitRepository\", name = \"app-{i}\" }}]\n"
        )
        .unwrap();
    }
    let path = dir.join("fluxgate.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn uri(s: &str) -> Uri {
    s.parse().unwrap()
}

fn find(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing/find");
    for n in SIZES {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), n);
        let started = Instant::now();
        let settings = Settings::load(&config).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("routing: loaded {n} receivers in {:.1?}", started.elapsed());
        assert_eq!(settings.receivers.len(), n);
        let routes = Routes::new(&settings.receivers);
        assert_eq!(routes.len(), n);

        // Hits: every receiver's path in turn, as many providers' deliveries would arrive; a
        // large table no longer fits in the cache.
        let hits: Vec<Uri> = settings.receivers.iter().map(|r| uri(&r.path)).collect();
        for h in &hits {
            assert!(routes.find(h).is_some());
        }
        // A well-formed path that no receiver has, and a known path with a query string.
        let unknown = uri(&format!("/hook/{}", "0123456789abcdef".repeat(4)));
        let query = uri(&format!("{}?ref=main", settings.receivers[0].path));
        assert!(routes.find(&unknown).is_none());
        assert!(routes.find(&query).is_none());

        g.bench_with_input(BenchmarkId::new("hit", n), &hits, |b, hits| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % hits.len();
                routes.find(black_box(&hits[i])).is_some()
            })
        });
        // One receiver's path again and again: the lookup alone, with the table in cache.
        g.bench_with_input(BenchmarkId::new("hit-hot", n), &hits[n / 2], |b, u| {
            b.iter(|| routes.find(black_box(u)).is_some())
        });
        g.bench_with_input(BenchmarkId::new("miss", n), &unknown, |b, u| {
            b.iter(|| routes.find(black_box(u)).is_some())
        });
        g.bench_with_input(BenchmarkId::new("miss-query", n), &query, |b, u| {
            b.iter(|| routes.find(black_box(u)).is_some())
        });
    }
    g.finish();
}

criterion_group!(benches, find);
criterion_main!(benches);
