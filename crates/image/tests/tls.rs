//! HTTPS: a TLS-terminating proxy (rustls server, certificate from the openssl CLI) in front
//! of the registry fixture. The pull trusts the test CA through `extra_ca_files`; without it
//! the pull fails with a certificate error; plain HTTP is not used for non-insecure registries.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;

use agora_image::reference::Reference;
use agora_image::store::{PullOptions, Store, StoreConfig};
use common::{fixtures_dir, Registry};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let st = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(st.is_ok_and(|s| s.success()), "openssl {args:?} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_over_https_with_a_private_ca() {
    if fixtures_dir().is_none() {
        return;
    }
    if Command::new("openssl").arg("version").stdout(Stdio::null()).status().is_err() {
        eprintln!("SKIP: openssl CLI not installed");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=agora test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        d,
        &["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "leaf.key", "-out", "leaf.csr"],
    );
    std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
        .expect("ext");
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "leaf.pem",
        ],
    );

    let reg = Registry::start("");
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(d.join("leaf.pem")).expect("pem").collect::<Result<_, _>>().expect("certs");
    let key = PrivateKeyDer::from_pem_file(d.join("leaf.key")).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let upstream = reg.addr.clone();
    let proxy = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else { return };
                let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });

    let host = addr.to_string();
    let r = Reference::parse(&format!("{host}/busybox:latest")).expect("ref");
    // Without the CA: a certificate error, not a silent fallback to HTTP.
    let mut c = StoreConfig::new(d.join("s1"));
    c.registry.attempts = 1;
    c.sync = false;
    let untrusted = Store::open(c).await.expect("open");
    let err = untrusted.pull(&r, &PullOptions::default()).await.expect_err("untrusted CA");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    // With it: the pull works over TLS.
    let mut c = StoreConfig::new(d.join("s2"));
    c.registry.extra_ca_files = vec![d.join("ca.pem")];
    c.sync = false;
    let trusted = Store::open(c).await.expect("open");
    let img = trusted.pull(&r, &PullOptions::default()).await.expect("https pull");
    assert_eq!(img.layers.len(), 1);
    proxy.abort();
}
