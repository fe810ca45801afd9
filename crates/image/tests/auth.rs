//! Basic and token auth against the registry fixture.

mod common;

use agora_image::auth::Credentials;
use agora_image::reference::Reference;
use agora_image::registry::RegistryError;
use agora_image::store::{PullOptions, Store, StoreConfig, StoreError};
use common::{fixtures_dir, Registry};

fn config(root: &std::path::Path, host: &str, creds: Option<(&str, &str)>) -> StoreConfig {
    let mut c = StoreConfig::new(root);
    c.registry.insecure = vec![host.to_string()];
    c.registry.attempts = 1;
    c.sync = false;
    if let Some((u, p)) = creds {
        c.registry.credentials.insert(host, Credentials::new(u, p));
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth() {
    if fixtures_dir().is_none() {
        return;
    }
    let reg = Registry::start("--auth");
    let tmp = tempfile::tempdir().expect("tempdir");
    let r = Reference::parse(&format!("{}/busybox:latest", reg.addr)).expect("ref");
    let anon = Store::open(config(&tmp.path().join("a"), &reg.addr, None)).await.expect("open");
    let err = anon.pull(&r, &PullOptions::default()).await.expect_err("anonymous pull must fail");
    assert!(matches!(err, StoreError::Registry { source: RegistryError::Unauthorized { .. }, .. }), "{err}");
    let wrong = Store::open(config(&tmp.path().join("w"), &reg.addr, Some(("test", "nope")))).await.expect("open");
    let err = wrong.pull(&r, &PullOptions::default()).await.expect_err("wrong password must fail");
    assert!(err.to_string().contains("401"), "{err}");
    let ok = Store::open(config(&tmp.path().join("o"), &reg.addr, Some(("test", "test")))).await.expect("open");
    let img = ok.pull(&r, &PullOptions::default()).await.expect("pull with credentials");
    assert_eq!(img.layers.len(), 1);
    // Credentials from a docker config.json file.
    let cfg_path = tmp.path().join("config.json");
    std::fs::write(&cfg_path, format!(r#"{{"auths":{{"http://{}":{{"auth":"dGVzdDp0ZXN0"}}}}}}"#, reg.addr))
        .expect("write");
    let mut c = config(&tmp.path().join("f"), &reg.addr, None);
    c.registry.credentials = agora_image::auth::DockerConfig::load(&cfg_path).expect("load");
    let s = Store::open(c).await.expect("open");
    s.pull(&Reference::parse(&format!("{}/httpd:v2s2", reg.addr)).expect("ref"), &PullOptions::default())
        .await
        .expect("pull with config.json credentials");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth() {
    if fixtures_dir().is_none() {
        return;
    }
    let reg = Registry::start("--token");
    let tmp = tempfile::tempdir().expect("tempdir");
    let r = Reference::parse(&format!("{}/multilayer:latest", reg.addr)).expect("ref");
    // Anonymous tokens may pull.
    let anon = Store::open(config(&tmp.path().join("a"), &reg.addr, None)).await.expect("open");
    let img = anon.pull(&r, &PullOptions::default()).await.expect("anonymous token pull");
    assert_eq!(img.layers.len(), 3);
    // With credentials, the token service is asked with them.
    let ok = Store::open(config(&tmp.path().join("o"), &reg.addr, Some(("test", "test")))).await.expect("open");
    ok.pull(&Reference::parse(&format!("{}/multiarch:latest", reg.addr)).expect("ref"), &PullOptions::default())
        .await
        .expect("token pull with credentials");
    // A wrong password is refused by the token service: a clear error naming it.
    let wrong = Store::open(config(&tmp.path().join("w"), &reg.addr, Some(("test", "bad")))).await.expect("open");
    let err = wrong.pull(&r, &PullOptions::default()).await.expect_err("wrong password must fail");
    assert!(matches!(err, StoreError::Registry { source: RegistryError::Token { .. }, .. }), "{err}");
    assert!(wrong.list().is_empty());
}
