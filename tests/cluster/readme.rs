//! Three replicas started from the README's "Running several replicas"
//! configuration as a new user copies it, against a Redis that requires a
//! password and a bucket the test did not configure for them: the TOML
//! blocks of that section are read from the README at run time, so the
//! test follows the README rather than a copy of it.
//!
//! What the test changes is what only this machine can say, each named in
//! [`localize`]: the addresses (Garage's endpoint, Redis's URL, the peer
//! listener on a free loopback port), and the secrets,
//! which go where the README's fields say (the environment variable or
//! the file it names). Then an image pulled through all three at once
//! costs the upstream one GET per blob, and every byte is right.

use std::path::{Path, PathBuf};

use crate::common::berth::Process;
use crate::common::content::{Fixture, Pusher};
use crate::common::garage::Garage;
use crate::common::random_hex;
use crate::common::redis::Redis;
use crate::common::registry::Registry;
use crate::support::{merge, pull_image, REPLICAS};

const SECTION: &str = "## Running several replicas";

/// The README's TOML blocks of [`SECTION`], merged in order.
fn readme_config() -> toml::Table {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("read README.md");
    let start = readme
        .find(SECTION)
        .unwrap_or_else(|| panic!("README.md has no {SECTION:?} section"));
    let rest = &readme[start + SECTION.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut config = toml::Table::new();
    let mut blocks = section.split("```toml\n").skip(1).peekable();
    assert!(
        blocks.peek().is_some(),
        "{SECTION} in README.md has no ```toml block"
    );
    for block in blocks {
        let text = &block[..block.find("```").expect("a closed ```toml block")];
        let table: toml::Table = text
            .parse()
            .unwrap_or_else(|e| panic!("a ```toml block of {SECTION} does not parse: {e}\n{text}"));
        merge(&mut config, table);
    }
    for table in ["storage", "cluster"] {
        assert!(
            config.contains_key(table),
            "{SECTION} in README.md configures no [{table}]: {config:#?}"
        );
    }
    config
}

/// The secrets a replica needs, by the README field that says where it
/// reads each one from.
struct Secrets {
    s3_key_id: String,
    s3_secret: String,
    redis_password: String,
    peer_secret: String,
}

impl Secrets {
    /// The secret the field `<name>_env` or `<name>_file` stands for.
    fn for_field(&self, name: &str) -> &str {
        match name {
            "access_key_id" => &self.s3_key_id,
            "secret_access_key" => &self.s3_secret,
            "redis_password" => &self.redis_password,
            "peer_secret" => &self.peer_secret,
            other => panic!("the README names a secret the test does not know: {other}"),
        }
    }
}

/// The README's config made to run here, for one replica whose peer
/// listener takes a free loopback port (port 0); the environment it needs. Every change is one a
/// user on another machine makes too: addresses, and secrets put where
/// the README's fields say.
fn localize(
    readme: &toml::Table,
    garage: &Garage,
    redis: &Redis,
    secrets: &Secrets,
    secret_dir: &Path,
) -> (toml::Table, Vec<(String, String)>) {
    let mut config = readme.clone();
    // Process::start gives each replica its own listener, data directory
    // and the test's upstream.
    for machine_specific in ["listen", "data_dir", "upstream", "admin_listen"] {
        config.remove(machine_specific);
    }
    let mut env = Vec::new();
    let s3 = table(&mut config, &["storage", "s3"]);
    s3.insert("endpoint".into(), garage.endpoint().into());
    s3.insert("region".into(), garage.region().into());
    s3.insert("bucket".into(), garage.bucket().into());
    s3.insert("path_style".into(), true.into());
    place_secrets(s3, secrets, secret_dir, &mut env);
    let cluster = table(&mut config, &["cluster"]);
    cluster.insert(
        "redis_url".into(),
        format!("{}/0", redis.url_without_password()).into(),
    );
    cluster.insert("peer_listen".into(), "127.0.0.1:0".into());
    cluster.remove("peer_advertise");
    place_secrets(cluster, secrets, secret_dir, &mut env);
    (config, env)
}

fn table<'a>(config: &'a mut toml::Table, path: &[&str]) -> &'a mut toml::Table {
    let mut at = config;
    for key in path {
        at = at
            .get_mut(*key)
            .and_then(toml::Value::as_table_mut)
            .unwrap_or_else(|| panic!("the README's config has no [{}]", path.join(".")));
    }
    at
}

/// For each `<name>_env` field, the secret in that variable of the
/// replica's environment; for each `<name>_file`, in a file of its own
/// whose path replaces the README's.
fn place_secrets(
    table: &mut toml::Table,
    secrets: &Secrets,
    dir: &Path,
    env: &mut Vec<(String, String)>,
) {
    let fields: Vec<(String, String)> = table
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect();
    for (field, value) in fields {
        if let Some(name) = field.strip_suffix("_env") {
            env.push((value, secrets.for_field(name).to_owned()));
        } else if let Some(name) = field.strip_suffix("_file").filter(|n| *n != "ca") {
            let path: PathBuf = dir.join(name);
            std::fs::write(&path, secrets.for_field(name)).expect("write a secret file");
            table.insert(field, path.display().to_string().into());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_from_the_readme_share_one_upstream_fetch_through_a_password_redis() {
    let readme = readme_config();
    let garage = Garage::start();
    let redis = Redis::start_with_password(&random_hex(16));
    let mut registry = Registry::start();
    let image = Fixture::big_image("test/readme", "v1", 8 << 20);
    Pusher::to(&registry)
        .push_all(std::slice::from_ref(&image))
        .await;
    let secrets = Secrets {
        s3_key_id: garage.access_key_id().to_owned(),
        s3_secret: garage.secret_access_key().to_owned(),
        redis_password: redis.password().expect("a password").to_owned(),
        peer_secret: random_hex(24),
    };
    // An ACL user, if the README names one.
    if let Some(user) = readme
        .get("cluster")
        .and_then(|c| c.get("redis_username"))
        .and_then(toml::Value::as_str)
    {
        let pass = format!(">{}", secrets.redis_password);
        redis.cli(&["ACL", "SETUSER", user, "on", &pass, "~*", "&*", "+@all"]);
    }
    let secret_dir = tempfile::tempdir().expect("temp dir");

    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        let (config, env) = localize(&readme, &garage, &redis, &secrets, secret_dir.path());
        let text = toml::to_string(&config).expect("serialize the localized config");
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        replicas.push(Process::start(&text, &registry.url(), &env).await);
    }

    // One pull through each replica, all at once.
    let pulls: Vec<_> = replicas
        .iter()
        .map(|r| {
            let (url, image) = (r.url(), image.clone());
            tokio::spawn(async move { pull_image(&url, &image).await })
        })
        .collect();
    for pull in pulls {
        pull.await.expect("a pull through a replica failed");
    }
    for blob in &image.blobs {
        registry.wait_for_blob_gets(&blob.digest, 1).await;
    }
    // A graceful stop makes the access log complete.
    registry.stop();
    for blob in &image.blobs {
        assert_eq!(
            registry.blob_gets(&blob.digest),
            1,
            "{REPLICAS} replicas from the README's config pulled {}: one upstream GET\n{}",
            blob.digest,
            registry.log()
        );
    }
    // They really used the Redis that requires the password.
    for r in &replicas {
        let up = crate::common::replica::metric(&r.url(), "berth_redis_up", &[]).await;
        assert_eq!(up, 1.0, "berth_redis_up of {}\n{}", r.url(), r.log());
    }
}
