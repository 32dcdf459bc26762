//! sled 0.34.7 vs redb under berth's metadata workload. See README.md.
//!
//! metadb fill  --engine sled|redb --dir D --n 1000000
//! metadb open  --engine E --dir D [--probe START COUNT]
//! metadb crash --engine E --dir D [--quick-repair]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

const MEDIA: &str = "application/vnd.oci.image.manifest.v1+json";
const REPOS: u64 = 20_000;
const ACCESS_EVERY: u64 = 1024;
const ACCESS_BATCH: usize = 1024;
const CRASH_WRITES: u64 = 20_000;
const READS: usize = 100_000;

// ---------- berth's records ----------

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0 ^ 0x5555) % n.max(1)
    }
}
fn digest(i: u64) -> [u8; 32] {
    let mut d = [0u8; 32];
    for w in 0..4u64 {
        d[w as usize * 8..w as usize * 8 + 8].copy_from_slice(&mix(i * 4 + w).to_be_bytes());
    }
    d
}
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
/// `Digest::to_key`: algorithm byte + 32 bytes.
fn dkey(i: u64) -> Vec<u8> {
    let mut k = vec![b'2'];
    k.extend(digest(i));
    k
}
fn is_manifest(i: u64) -> bool {
    i % 3 == 0
}
fn obj_key(i: u64) -> Vec<u8> {
    let mut k = vec![if is_manifest(i) { b'm' } else { b'b' }];
    k.extend(dkey(i));
    k
}
fn lru_key(at: u64, i: u64) -> Vec<u8> {
    let mut k = at.to_be_bytes().to_vec();
    k.extend(obj_key(i));
    k
}
fn repo_key(i: u64) -> Vec<u8> {
    format!("docker.io\0library/repo-{}", i % REPOS).into_bytes()
}
fn link_key(i: u64) -> Vec<u8> {
    let mut k = dkey(i);
    k.extend(repo_key(i));
    k
}
fn tag_key(i: u64) -> Vec<u8> {
    let mut k = repo_key(i);
    k.extend(format!("\0tag-{}", i / REPOS).as_bytes());
    k
}
fn tag_ref_key(i: u64) -> Vec<u8> {
    let mut k = dkey(i);
    k.extend(tag_key(i));
    k
}
fn tag_value(i: u64, now: u64) -> Vec<u8> {
    let h = hex(&digest(i));
    format!(r#"{{"digest":"sha256:{h}","fetched_at_ms":{now},"etag":"\"{}\""}}"#, &h[..24]).into_bytes()
}
fn size_of(i: u64) -> u64 {
    1000 + mix(i ^ 0xDEAD) % 50_000_000
}
/// `ObjectRecord::encode`: version, size, disk, stored_at, used_at, media type.
fn record(i: u64, stored: u64, used: u64) -> Vec<u8> {
    let size = size_of(i);
    let mut out = vec![1u8];
    for n in [size, size.div_ceil(4096) * 4096, stored, used] {
        out.extend(n.to_be_bytes());
    }
    if is_manifest(i) {
        out.extend(MEDIA.as_bytes());
    }
    out
}
fn used_at(rec: &[u8]) -> u64 {
    u64::from_be_bytes(rec[25..33].try_into().unwrap())
}
fn with_used_at(rec: &[u8], at: u64) -> Vec<u8> {
    let mut r = rec.to_vec();
    r[25..33].copy_from_slice(&at.to_be_bytes());
    r
}
fn counts(i: u64) -> [i64; 3] {
    [1, size_of(i) as i64, is_manifest(i) as i64]
}
fn enc_counts(c: [i64; 3]) -> Vec<u8> {
    c.iter().flat_map(|n| n.to_be_bytes()).collect()
}
fn dec_counts(raw: &[u8]) -> [i64; 3] {
    let n = |k: usize| i64::from_be_bytes(raw[k * 8..k * 8 + 8].try_into().unwrap());
    [n(0), n(1), n(2)]
}
fn census_merge(_k: &[u8], old: Option<&[u8]>, change: &[u8]) -> Option<Vec<u8>> {
    let a = old.map(dec_counts).unwrap_or_default();
    let b = dec_counts(change);
    Some(enc_counts([a[0] + b[0], a[1] + b[1], a[2] + b[2]]))
}

// ---------- engines ----------

trait Engine: Send + Sync {
    fn put(&self, i: u64, now: u64);
    /// Moves the objects' access-index entries to `now`; returns how many were found.
    fn access(&self, idx: &[u64], now: u64) -> usize;
    fn get(&self, i: u64) -> bool;
    /// A clean stop's last write; the drop that follows closes.
    fn close(&self);
    fn report(&self) {}
}

struct Sled {
    db: sled::Db,
    objects: sled::Tree,
    lru: sled::Tree,
    links: sled::Tree,
    tags: sled::Tree,
    tag_refs: sled::Tree,
    census: sled::Tree,
    _others: Vec<sled::Tree>,
}

fn open_sled(dir: &Path) -> Sled {
    let db = sled::Config::new()
        .path(dir.join("db"))
        .cache_capacity(16 << 20)
        .open()
        .expect("sled open");
    let census = db.open_tree("census").unwrap();
    census.set_merge_operator(census_merge);
    let others = ["referrers2", "tag_lists", "meta", "pins", "pins_by_rule", "sync_rules"]
        .iter()
        .map(|n| db.open_tree(n).unwrap())
        .collect();
    Sled {
        objects: db.open_tree("objects").unwrap(),
        lru: db.open_tree("lru").unwrap(),
        links: db.open_tree("links2").unwrap(),
        tags: db.open_tree("tags").unwrap(),
        tag_refs: db.open_tree("tag_refs").unwrap(),
        census,
        _others: others,
        db,
    }
}

impl Engine for Sled {
    fn put(&self, i: u64, now: u64) {
        // As berth's store does: one write per tree (a single-op batch).
        self.links.insert(link_key(i), &[]).unwrap();
        self.objects.insert(obj_key(i), record(i, now, now)).unwrap();
        self.lru.insert(lru_key(now, i), &[]).unwrap();
        if is_manifest(i) {
            self.tags.insert(tag_key(i), tag_value(i, now)).unwrap();
            self.tag_refs.insert(tag_ref_key(i), &[]).unwrap();
        }
        self.census.merge(repo_key(i), enc_counts(counts(i))).unwrap();
    }
    fn access(&self, idx: &[u64], now: u64) -> usize {
        // berth's `flush_times`: a batch for the records, then one for the index.
        let (mut records, mut index) = (sled::Batch::default(), sled::Batch::default());
        let mut found = 0;
        for &i in idx {
            let k = obj_key(i);
            let Some(rec) = self.objects.get(&k).unwrap() else { continue };
            found += 1;
            let old = used_at(&rec);
            if old >= now {
                continue;
            }
            index.remove(lru_key(old, i));
            index.insert(lru_key(now, i), &[]);
            records.insert(k, with_used_at(&rec, now));
        }
        self.objects.apply_batch(records).unwrap();
        self.lru.apply_batch(index).unwrap();
        found
    }
    fn get(&self, i: u64) -> bool {
        self.objects.get(obj_key(i)).unwrap().is_some()
    }
    fn close(&self) {
        self.db.flush().unwrap();
    }
}

type T = TableDefinition<'static, &'static [u8], &'static [u8]>;
const OBJECTS: T = TableDefinition::new("objects");
const LRU: T = TableDefinition::new("lru");
const LINKS: T = TableDefinition::new("links2");
const TAGS: T = TableDefinition::new("tags");
const TAG_REFS: T = TableDefinition::new("tag_refs");
const CENSUS: T = TableDefinition::new("census");

#[derive(Default)]
struct Commits {
    n: u64,
    wait: Duration,
    commit: Duration,
    max_wait: Duration,
    max_commit: Duration,
}

struct Redb {
    db: Database,
    quick_repair: bool,
    stop: AtomicBool,
    durable: Mutex<Commits>,
    nondurable: AtomicU64,
    nondurable_ns: AtomicU64,
}

fn open_redb(dir: &Path, quick_repair: bool) -> (Redb, u64) {
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let db = Database::builder()
        .set_cache_size(64 << 20)
        .set_repair_callback(move |_s| {
            c.fetch_add(1, Relaxed);
        })
        .create(dir.join("db.redb"))
        .expect("redb open");
    // Create the tables once, so a read transaction finds them.
    let tx = db.begin_write().unwrap();
    for t in [OBJECTS, LRU, LINKS, TAGS, TAG_REFS, CENSUS] {
        tx.open_table(t).unwrap();
    }
    tx.commit().unwrap();
    let r = Redb {
        db,
        quick_repair,
        stop: AtomicBool::new(false),
        durable: Mutex::default(),
        nondurable: AtomicU64::new(0),
        nondurable_ns: AtomicU64::new(0),
    };
    (r, calls.load(Relaxed))
}

impl Redb {
    fn db(&self) -> &Database {
        &self.db
    }
    fn begin(&self) -> redb::WriteTransaction {
        let mut tx = self.db().begin_write().unwrap();
        tx.set_durability(Durability::None).unwrap();
        tx
    }
    fn commit_nd(&self, tx: redb::WriteTransaction) {
        let t = Instant::now();
        tx.commit().unwrap();
        self.nondurable.fetch_add(1, Relaxed);
        self.nondurable_ns.fetch_add(t.elapsed().as_nanos() as u64, Relaxed);
    }
    /// An empty write transaction committed with `Durability::Immediate`:
    /// makes every earlier non-durable commit durable.
    fn durable_commit(&self) {
        let t0 = Instant::now();
        let mut tx = self.db().begin_write().unwrap();
        let t1 = Instant::now();
        tx.set_durability(Durability::Immediate).unwrap();
        tx.set_quick_repair(self.quick_repair);
        tx.commit().unwrap();
        let (w, c) = (t1 - t0, t1.elapsed());
        let mut s = self.durable.lock().unwrap();
        s.n += 1;
        s.wait += w;
        s.commit += c;
        s.max_wait = s.max_wait.max(w);
        s.max_commit = s.max_commit.max(c);
    }
    /// sled's flusher, for redb: a durable commit every 500 ms.
    fn flusher(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let me = self.clone();
        std::thread::spawn(move || {
            while !me.stop.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                if !me.stop.load(Relaxed) {
                    me.durable_commit();
                }
            }
        })
    }
}

impl Engine for Redb {
    fn put(&self, i: u64, now: u64) {
        let tx = self.begin();
        {
            tx.open_table(LINKS).unwrap().insert(link_key(i).as_slice(), [].as_slice()).unwrap();
            tx.open_table(OBJECTS).unwrap().insert(obj_key(i).as_slice(), record(i, now, now).as_slice()).unwrap();
            tx.open_table(LRU).unwrap().insert(lru_key(now, i).as_slice(), [].as_slice()).unwrap();
            if is_manifest(i) {
                tx.open_table(TAGS).unwrap().insert(tag_key(i).as_slice(), tag_value(i, now).as_slice()).unwrap();
                tx.open_table(TAG_REFS).unwrap().insert(tag_ref_key(i).as_slice(), [].as_slice()).unwrap();
            }
            let mut c = tx.open_table(CENSUS).unwrap();
            let rk = repo_key(i);
            let old = c.get(rk.as_slice()).unwrap().map(|g| g.value().to_vec());
            let new = census_merge(&rk, old.as_deref(), &enc_counts(counts(i))).unwrap();
            c.insert(rk.as_slice(), new.as_slice()).unwrap();
        }
        self.commit_nd(tx);
    }
    fn access(&self, idx: &[u64], now: u64) -> usize {
        let tx = self.begin();
        let mut found = 0;
        {
            let mut objects = tx.open_table(OBJECTS).unwrap();
            let mut lru = tx.open_table(LRU).unwrap();
            for &i in idx {
                let k = obj_key(i);
                let Some(rec) = objects.get(k.as_slice()).unwrap().map(|g| g.value().to_vec()) else {
                    continue;
                };
                found += 1;
                let old = used_at(&rec);
                if old >= now {
                    continue;
                }
                lru.remove(lru_key(old, i).as_slice()).unwrap();
                lru.insert(lru_key(now, i).as_slice(), [].as_slice()).unwrap();
                objects.insert(k.as_slice(), with_used_at(&rec, now).as_slice()).unwrap();
            }
        }
        self.commit_nd(tx);
        found
    }
    fn get(&self, i: u64) -> bool {
        let tx = self.db().begin_read().unwrap();
        let t = tx.open_table(OBJECTS).unwrap();
        let found = t.get(obj_key(i).as_slice()).unwrap().is_some();
        found
    }
    fn close(&self) {
        self.durable_commit();
    }
    fn report(&self) {
        let s = self.durable.lock().unwrap();
        let n = self.nondurable.load(Relaxed);
        println!(
            "redb_nondurable_commits={} mean_us={:.1}",
            n,
            self.nondurable_ns.load(Relaxed) as f64 / n.max(1) as f64 / 1e3
        );
        if s.n > 0 {
            println!(
                "redb_durable_commits={} quick_repair={} mean_wait_ms={:.2} max_wait_ms={:.2} mean_commit_ms={:.2} max_commit_ms={:.2}",
                s.n,
                self.quick_repair,
                s.wait.as_secs_f64() * 1e3 / s.n as f64,
                s.max_wait.as_secs_f64() * 1e3,
                s.commit.as_secs_f64() * 1e3 / s.n as f64,
                s.max_commit.as_secs_f64() * 1e3
            );
        }
    }
}

// ---------- measuring ----------

fn status() -> String {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024)
            .unwrap_or(0)
    };
    format!(
        "VmRSS={}MiB VmHWM={}MiB RssAnon={}MiB RssFile={}MiB",
        get("VmRSS:"),
        get("VmHWM:"),
        get("RssAnon:"),
        get("RssFile:")
    )
}
fn cpu() -> Duration {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}
fn du(p: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap();
    let (mut blocks, mut len) = (m.blocks() * 512, if m.is_file() { m.len() } else { 0 });
    if m.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            let (b, l) = du(&e.unwrap().path());
            blocks += b;
            len += l;
        }
    }
    (blocks, len)
}
fn mib(b: u64) -> String {
    format!("{:.1}MiB", b as f64 / 1048576.0)
}
fn read_num(dir: &Path, name: &str) -> Option<u64> {
    std::fs::read_to_string(dir.join(name)).ok()?.trim().parse().ok()
}

fn open_engine(engine: &str, dir: &Path, quick_repair: bool) -> Arc<dyn Engine> {
    let (w0, c0) = (Instant::now(), cpu());
    let (e, repairs): (Arc<dyn Engine>, u64) = match engine {
        "sled" => (Arc::new(open_sled(dir)), 0),
        "redb" => {
            let (r, n) = open_redb(dir, quick_repair);
            (Arc::new(r), n)
        }
        _ => panic!("engine is sled or redb"),
    };
    println!(
        "open_wall_ms={:.1} open_cpu_ms={:.1} repair_callbacks={} {}",
        w0.elapsed().as_secs_f64() * 1e3,
        (cpu() - c0).as_secs_f64() * 1e3,
        repairs,
        status()
    );
    e
}

/// `count` objects from `base` on, by 8 threads, with an access batch every 1,024.
fn drive(e: &Arc<dyn Engine>, base: u64, count: u64, threads: u64) {
    let next = AtomicU64::new(0);
    let (found, batches) = (AtomicU64::new(0), AtomicU64::new(0));
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (e, next, found, batches) = (e.clone(), &next, &found, &batches);
            s.spawn(move || {
                let mut rng = Rng(mix(base ^ t));
                loop {
                    let j = next.fetch_add(1, Relaxed);
                    if j >= count {
                        break;
                    }
                    e.put(base + j, now_ms());
                    if (j + 1) % ACCESS_EVERY == 0 {
                        let idx: Vec<u64> = (0..ACCESS_BATCH).map(|_| rng.below(base + j)).collect();
                        found.fetch_add(e.access(&idx, now_ms()) as u64, Relaxed);
                        batches.fetch_add(1, Relaxed);
                    }
                    if (j + 1) % 100_000 == 0 {
                        eprintln!(
                            "  {} objects, {:.0}/s, {}",
                            j + 1,
                            (j + 1) as f64 / start.elapsed().as_secs_f64(),
                            status()
                        );
                    }
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    println!(
        "objects={} secs={:.1} objects_per_s={:.0} access_batches={} access_found={}",
        count,
        secs,
        count as f64 / secs,
        batches.load(Relaxed),
        found.load(Relaxed)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).map(|p| args[p + 1].clone());
    let cmd = args.get(1).expect("fill|open|crash").as_str();
    let engine = arg("--engine").expect("--engine");
    let dir = PathBuf::from(arg("--dir").expect("--dir"));
    let qr = args.iter().any(|a| a == "--quick-repair");
    let threads: u64 = arg("--threads").map(|t| t.parse().unwrap()).unwrap_or(8);
    std::fs::create_dir_all(&dir).unwrap();
    println!("== {} engine={} dir={} quick_repair={} threads={}", cmd, engine, dir.display(), qr, threads);

    match cmd {
        "fill" | "crash" => {
            let (base, count) = if cmd == "fill" {
                (0, arg("--n").expect("--n").parse().unwrap())
            } else {
                let base = read_num(&dir, "next").or(read_num(&dir, "filled")).expect("filled");
                (base, CRASH_WRITES)
            };
            // redb needs its flusher thread beside the writers.
            let (e, redb): (Arc<dyn Engine>, Option<Arc<Redb>>) = if engine == "redb" {
                let (w0, c0) = (Instant::now(), cpu());
                let (r, n) = open_redb(&dir, qr);
                println!(
                    "open_wall_ms={:.1} open_cpu_ms={:.1} repair_callbacks={} {}",
                    w0.elapsed().as_secs_f64() * 1e3,
                    (cpu() - c0).as_secs_f64() * 1e3,
                    n,
                    status()
                );
                let r = Arc::new(r);
                (r.clone(), Some(r))
            } else {
                (open_engine(&engine, &dir, qr), None)
            };
            let flusher = redb.as_ref().map(|r| r.flusher());
            drive(&e, base, count, threads);
            println!("after_writes {}", status());
            if cmd == "crash" {
                std::fs::write(dir.join("next"), (base + count).to_string()).unwrap();
                e.report();
                println!("process_cpu_s={:.1}", cpu().as_secs_f64());
                println!("SIGKILL now (objects {}..{} written, not flushed by us)", base, base + count);
                use std::io::Write;
                std::io::stdout().flush().unwrap();
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                unreachable!();
            }
            if let (Some(r), Some(f)) = (&redb, flusher) {
                r.stop.store(true, Relaxed);
                f.join().unwrap();
            }
            e.report();
            drop(redb);
            let t = Instant::now();
            e.close();
            assert_eq!(Arc::strong_count(&e), 1);
            drop(e);
            println!("close_ms={:.1}", t.elapsed().as_secs_f64() * 1e3);
            std::fs::write(dir.join("filled"), count.to_string()).unwrap();
            let (blocks, len) = du(&dir);
            println!("du={} apparent={} {}", mib(blocks), mib(len), status());
            println!("process_cpu_s={:.1}", cpu().as_secs_f64());
        }
        "open" => {
            let e = open_engine(&engine, &dir, qr);
            let n = read_num(&dir, "filled").expect("filled");
            if let Some(p) = args.iter().position(|a| a == "--probe") {
                let start: u64 = args[p + 1].parse().unwrap();
                let count: u64 = args[p + 2].parse().unwrap();
                let present = (start..start + count).filter(|&i| e.get(i)).count();
                println!("probe: {present} of objects {start}..{} present after the crash", start + count);
            }
            let mut rng = Rng(now_ms());
            let mut lat = Vec::with_capacity(READS);
            let mut missing = 0;
            for _ in 0..READS {
                let i = rng.below(n);
                let t = Instant::now();
                let ok = e.get(i);
                lat.push(t.elapsed().as_nanos() as u64);
                missing += !ok as usize;
            }
            lat.sort_unstable();
            let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)] as f64 / 1e3;
            println!(
                "reads={} missing={} p50_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1} {}",
                READS,
                missing,
                p(0.5),
                p(0.99),
                p(0.999),
                p(1.0),
                status()
            );
            let t = Instant::now();
            e.close();
            assert_eq!(Arc::strong_count(&e), 1);
            drop(e);
            println!("close_ms={:.1}", t.elapsed().as_secs_f64() * 1e3);
            let (blocks, len) = du(&dir);
            println!("du={} apparent={}", mib(blocks), mib(len));
            println!("process_cpu_s={:.1}", cpu().as_secs_f64());
        }
        _ => panic!("fill|open|crash"),
    }
}
