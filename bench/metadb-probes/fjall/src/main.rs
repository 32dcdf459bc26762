//! fjall 2.x metadata prototype for berth: fill / open / crash subcommands.
use fjall::{Config, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};
use rand::Rng;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MiB: u64 = 1024 * 1024;
const THREADS: u64 = 8;
const REPOS: u64 = 10_000;
const ACCESS_EVERY: u64 = 1024;
const ACCESS_N: usize = 1024;
const STRIPES: usize = 64;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E3779B97F4A7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}

fn digest(i: u64) -> [u8; 32] {
    let mut d = [0u8; 32];
    for k in 0..4 {
        d[k * 8..k * 8 + 8].copy_from_slice(&splitmix(i * 4 + k as u64).to_be_bytes());
    }
    d
}

fn is_manifest(i: u64) -> bool {
    i % 3 == 0
}
fn tag_byte(i: u64) -> u8 {
    if is_manifest(i) { b'm' } else { b'b' }
}
fn repo_of(i: u64) -> u64 {
    splitmix(i ^ 0xABCDEF) % REPOS
}

fn object_key(i: u64) -> Vec<u8> {
    let mut k = vec![tag_byte(i)];
    k.extend_from_slice(&digest(i));
    k
}
fn lru_key(at: u64, i: u64) -> Vec<u8> {
    let mut k = at.to_be_bytes().to_vec();
    k.extend(object_key(i));
    k
}
fn repo_name(i: u64) -> String {
    format!("docker.io\0library/repo-{}", repo_of(i))
}
fn record(i: u64, stored: u64, used: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(80);
    out.push(1u8);
    let size = 1000 + (splitmix(i) % 50_000_000);
    for n in [size, (size + 4095) / 4096 * 4096, stored, used] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    if is_manifest(i) {
        out.extend_from_slice(b"application/vnd.oci.image.manifest.v1+json");
    }
    out
}
fn used_at(rec: &[u8]) -> u64 {
    u64::from_be_bytes(rec[25..33].try_into().unwrap())
}
fn set_used_at(rec: &mut [u8], at: u64) {
    rec[25..33].copy_from_slice(&at.to_be_bytes());
}

fn status() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let get = |name: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}
fn rss() -> String {
    let (r, h) = status();
    let m = unsafe { libc::mallinfo2() };
    format!(
        "VmRSS {:.1} MiB, VmHWM {:.1} MiB (malloc in use {:.1} MiB, free-but-held {:.1} MiB)",
        r as f64 / 1024.0, h as f64 / 1024.0,
        (m.uordblks + m.hblkhd) as f64 / MiB as f64, m.fordblks as f64 / MiB as f64
    )
}
fn cpu_secs() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}
fn du(dir: &Path) -> String {
    let out = std::process::Command::new("du").arg("-sh").arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("?").to_string()
}

struct Db {
    ks: Keyspace,
    objects: PartitionHandle,
    lru: PartitionHandle,
    links: PartitionHandle,
    tags: PartitionHandle,
    tag_refs: PartitionHandle,
    census: PartitionHandle,
    meta: PartitionHandle,
}

fn knob(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    arg(&args, name).map(|v| v.parse().unwrap()).unwrap_or(default)
}

fn open_db(dir: &Path) -> Db {
    let (cache, wb, journal, memtable) = (
        knob("--cache-mib", 64),
        knob("--wb-mib", 32),
        knob("--journal-mib", 64),
        knob("--memtable-mib", 8),
    );
    let ks = Config::new(dir)
        .cache_size(cache * MiB)
        .max_write_buffer_size(wb * MiB)
        .max_journaling_size(journal * MiB)
        .open()
        .unwrap();
    let opts = || PartitionCreateOptions::default().max_memtable_size((memtable * MiB) as u32);
    let p = |name: &str| ks.open_partition(name, opts()).unwrap();
    Db {
        objects: p("objects"),
        lru: p("lru"),
        links: p("links"),
        tags: p("tags"),
        tag_refs: p("tag_refs"),
        census: p("census"),
        meta: p("meta"),
        ks,
    }
}

fn count(db: &Db) -> u64 {
    db.meta
        .get("count")
        .unwrap()
        .map(|v| u64::from_be_bytes(v[..8].try_into().unwrap()))
        .unwrap_or(0)
}

struct Shared {
    db: Db,
    stripes: Vec<Mutex<()>>,
    access: Mutex<()>,
    started: AtomicU64,
    /// per thread: how many objects it has committed
    done: Vec<AtomicU64>,
    base: u64,
    commit_max_us: AtomicU64,
    slow_commits: AtomicU64,
    slow_commit_us: AtomicU64,
    kill_at: u64,
}

fn write_object(s: &Shared, i: u64) {
    let db = &s.db;
    let now = now_ms();
    let d = digest(i);
    let mut b = db.ks.batch();
    b.insert(&db.objects, object_key(i), record(i, now, now));
    b.insert(&db.lru, lru_key(now, i), Vec::<u8>::new());
    let repo = repo_name(i);
    let mut link = d.to_vec();
    link.extend_from_slice(repo.as_bytes());
    b.insert(&db.links, link, Vec::<u8>::new());
    let mut tags_delta = 0i64;
    if is_manifest(i) {
        let tag = format!("tag-{}", i / 3);
        let tk = format!("{}\0{}", repo, tag);
        let hex: String = d.iter().map(|x| format!("{:02x}", x)).collect();
        let json = format!(
            "{{\"digest\":\"sha256:{}\",\"media_type\":\"application/vnd.oci.image.manifest.v1+json\",\"at\":{}}}",
            hex, now
        );
        b.insert(&db.tags, tk.as_bytes().to_vec(), json.into_bytes());
        let mut tr = d.to_vec();
        tr.extend_from_slice(tk.as_bytes());
        b.insert(&db.tag_refs, tr, Vec::<u8>::new());
        tags_delta = 1;
    }
    // census: read-modify-write under a (striped) mutex, committed with the batch
    let ck = repo.as_bytes().to_vec();
    let _g = s.stripes[(repo_of(i) as usize) % STRIPES].lock().unwrap();
    let mut c = [0i64; 3];
    if let Some(v) = db.census.get(&ck).unwrap() {
        for k in 0..3 {
            c[k] = i64::from_be_bytes(v[k * 8..k * 8 + 8].try_into().unwrap());
        }
    }
    c[0] += 1;
    c[1] += (splitmix(i) % 50_000_000) as i64;
    c[2] += tags_delta;
    let mut cv = Vec::with_capacity(24);
    for x in c {
        cv.extend_from_slice(&x.to_be_bytes());
    }
    b.insert(&db.census, ck, cv);
    let t = Instant::now();
    b.commit().unwrap();
    note_commit(s, t.elapsed());
}

fn note_commit(s: &Shared, d: Duration) {
    let us = d.as_micros() as u64;
    s.commit_max_us.fetch_max(us, Ordering::Relaxed);
    if us >= 50_000 {
        s.slow_commits.fetch_add(1, Ordering::Relaxed);
        s.slow_commit_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// Move ACCESS_N random existing objects to a new last-used time, one batch.
fn access_batch(s: &Shared, upto: u64, rng: &mut impl Rng) {
    let _g = s.access.lock().unwrap();
    let db = &s.db;
    let now = now_ms();
    let mut b = db.ks.batch();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..ACCESS_N {
        let i = rng.gen_range(0..upto.max(1));
        if !seen.insert(i) {
            continue;
        }
        let k = object_key(i);
        let Some(v) = db.objects.get(&k).unwrap() else { continue };
        let mut rec = v.to_vec();
        let old = used_at(&rec);
        b.remove(&db.lru, lru_key(old, i));
        b.insert(&db.lru, lru_key(now, i), Vec::<u8>::new());
        set_used_at(&mut rec, now);
        b.insert(&db.objects, k, rec);
    }
    let t = Instant::now();
    b.commit().unwrap();
    note_commit(s, t.elapsed());
}

fn run_writers(s: &Arc<Shared>, n: u64) {
    let mut hs = vec![];
    for t in 0..THREADS {
        let s = s.clone();
        hs.push(std::thread::spawn(move || {
            let mut rng = rand::thread_rng();
            let mut j = t;
            while j < n {
                let i = s.base + j;
                write_object(&s, i);
                s.done[t as usize].fetch_add(1, Ordering::SeqCst);
                let started = s.started.fetch_add(1, Ordering::SeqCst) + 1;
                if started == s.kill_at {
                    println!("killing at {} objects: {} | {}", started, rss(), stats(&s.db));
                    use std::io::Write;
                    std::io::stdout().flush().unwrap();
                    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                }
                if started % ACCESS_EVERY == 0 {
                    // only objects surely committed: below base + min progress*THREADS
                    let minp = s.done.iter().map(|d| d.load(Ordering::SeqCst)).min().unwrap();
                    access_batch(&s, s.base + minp * THREADS, &mut rng);
                }
                j += THREADS;
            }
        }));
    }
    for h in hs {
        h.join().unwrap();
    }
}

/// Persists every 500 ms; records what was committed before each persist.
fn spawn_persister(s: Arc<Shared>, stop: Arc<AtomicBool>, marker: Option<PathBuf>) -> std::thread::JoinHandle<(u64, f64)> {
    std::thread::spawn(move || {
        let (mut n, mut worst) = (0u64, 0f64);
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(500));
            let snap: Vec<u64> = s.done.iter().map(|d| d.load(Ordering::SeqCst)).collect();
            let t = Instant::now();
            s.db.ks.persist(PersistMode::SyncData).unwrap();
            let el = t.elapsed().as_secs_f64();
            worst = worst.max(el);
            n += 1;
            if let Some(m) = &marker {
                let line: Vec<String> = snap.iter().map(|x| x.to_string()).collect();
                let tmp = m.with_extension("tmp");
                std::fs::write(&tmp, format!("{} {}\n", s.base, line.join(" "))).unwrap();
                std::fs::rename(&tmp, m).unwrap();
            }
        }
        (n, worst)
    })
}

fn commits(s: &Shared) -> String {
    format!(
        "commit max {:.1} ms; commits >= 50 ms: {} totalling {:.1} s (summed over threads)",
        s.commit_max_us.load(Ordering::Relaxed) as f64 / 1e3,
        s.slow_commits.load(Ordering::Relaxed),
        s.slow_commit_us.load(Ordering::Relaxed) as f64 / 1e6
    )
}

fn stats(db: &Db) -> String {
    format!(
        "journals {} ({:.1} MiB), write buffer {:.1} MiB, segments objects/lru/links/tags/tag_refs {}/{}/{}/{}/{}, flushes {}, compactions {} ({:.1}s compacting)",
        db.ks.journal_count(),
        db.ks.journal_disk_space() as f64 / MiB as f64,
        db.ks.write_buffer_size() as f64 / MiB as f64,
        db.objects.segment_count(),
        db.lru.segment_count(),
        db.links.segment_count(),
        db.tags.segment_count(),
        db.tag_refs.segment_count(),
        db.ks.flushes_completed(),
        db.ks.compactions_completed(),
        db.ks.time_compacting().as_secs_f64(),
    )
}

fn close(db: Db, flush: bool) -> f64 {
    let t = Instant::now();
    db.ks.persist(PersistMode::SyncData).unwrap();
    if flush {
        // write every memtable out to a segment so the next open replays no journal
        for p in [&db.objects, &db.lru, &db.links, &db.tags, &db.tag_refs, &db.census, &db.meta] {
            p.rotate_memtable_and_wait().unwrap();
        }
        println!("  flushed memtables on close in {:.3}s: {}", t.elapsed().as_secs_f64(), stats(&db));
    }
    drop(db);
    t.elapsed().as_secs_f64()
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|p| args.get(p + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cmd = args.get(1).cloned().unwrap_or_default();
    let dir = PathBuf::from(arg(&args, "--dir").expect("--dir"));
    let flush = args.iter().any(|a| a == "--flush-on-close");
    let marker = PathBuf::from(format!("{}.crash-marker", dir.display()));
    match cmd.as_str() {
        "fill" => {
            let n: u64 = arg(&args, "--n").map(|v| v.parse().unwrap()).unwrap_or(1_000_000);
            let idle: u64 = arg(&args, "--idle-secs").map(|v| v.parse().unwrap()).unwrap_or(0);
            let db = open_db(&dir);
            let base = count(&db);
            let s = Arc::new(Shared {
                db,
                stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
                access: Mutex::new(()),
                started: AtomicU64::new(0),
                done: (0..THREADS).map(|_| AtomicU64::new(0)).collect(),
                base,
                commit_max_us: AtomicU64::new(0),
                slow_commits: AtomicU64::new(0),
                slow_commit_us: AtomicU64::new(0),
                kill_at: knob("--kill-at", u64::MAX),
            });
            let stop = Arc::new(AtomicBool::new(false));
            let p = spawn_persister(s.clone(), stop.clone(), None);
            // progress reporter
            let s2 = s.clone();
            let stop2 = stop.clone();
            let rep = std::thread::spawn(move || {
                let t0 = Instant::now();
                let mut last = 0u64;
                while !stop2.load(Ordering::SeqCst) {
                    for _ in 0..100 {
                        if stop2.load(Ordering::SeqCst) { return; }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    let d: u64 = s2.done.iter().map(|x| x.load(Ordering::SeqCst)).sum();
                    println!(
                        "  t={:.0}s objects={} ({}/s last 10s) {} | {}",
                        t0.elapsed().as_secs_f64(), d, (d - last) / 10, rss(), stats(&s2.db)
                    );
                    last = d;
                }
            });
            let t0 = Instant::now();
            let c0 = cpu_secs();
            run_writers(&s, n);
            let el = t0.elapsed().as_secs_f64();
            s.db.meta.insert("count", (base + n).to_be_bytes().to_vec()).unwrap();
            stop.store(true, Ordering::SeqCst);
            let (np, worst) = p.join().unwrap();
            rep.join().unwrap();
            println!(
                "fill: {} objects in {:.1}s = {:.0} objects/s, process CPU {:.1}s; persists {} (worst {:.3}s)",
                n, el, n as f64 / el, cpu_secs() - c0, np, worst
            );
            println!("after fill: {} | disk {} | {}", rss(), du(&dir), stats(&s.db));
            println!("fill {}", commits(&s));
            if idle > 0 {
                let c1 = cpu_secs();
                for k in 0..(idle / 10).max(1) {
                    std::thread::sleep(Duration::from_secs(idle.min(10)));
                    println!("  idle {}s: {} | {}", (k + 1) * idle.min(10), rss(), stats(&s.db));
                }
                println!("after idle {}s: {} | disk {} | CPU while idle {:.1}s", idle, rss(), du(&dir), cpu_secs() - c1);
                unsafe { libc::malloc_trim(0) };
                println!("after malloc_trim(0): {}", rss());
            }
            let s = Arc::try_unwrap(s).ok().expect("sole owner");
            let ct = close(s.db, flush);
            println!("close: {:.3}s; disk after close {}", ct, du(&dir));
        }
        "open" => {
            let reads: usize = arg(&args, "--reads").map(|v| v.parse().unwrap()).unwrap_or(100_000);
            let t = Instant::now();
            let c = cpu_secs();
            let db = open_db(&dir);
            let (wall, cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - c);
            println!("open: {:.3}s wall, {:.3}s process CPU | {} | {}", wall, cpu, rss(), stats(&db));
            let n = match count(&db) { 0 => knob("--count", 0), c => c };
            if let Ok(m) = std::fs::read_to_string(&marker) {
                // verify writes of the killed `crash` run
                let v: Vec<u64> = m.split_whitespace().map(|x| x.parse().unwrap()).collect();
                let base = v[0];
                let (mut persisted, mut missing_persisted, mut later) = (0u64, 0u64, 0u64);
                for t in 0..THREADS {
                    let upto = v[1 + t as usize];
                    let mut j = 0;
                    loop {
                        let i = base + t + j * THREADS;
                        let there = db.objects.get(object_key(i)).unwrap().is_some();
                        if j < upto {
                            persisted += 1;
                            if !there { missing_persisted += 1; }
                        } else if there {
                            later += 1;
                        } else {
                            break;
                        }
                        j += 1;
                    }
                }
                println!(
                    "crash check: {} objects committed before the last persist, {} of them missing; {} more objects committed after it also present",
                    persisted, missing_persisted, later
                );
            }
            let mut rng = rand::thread_rng();
            let mut lat = Vec::with_capacity(reads);
            let mut found = 0;
            let t = Instant::now();
            let reads = if n == 0 { 0 } else { reads };
            lat.push(0);
            for _ in 0..reads {
                let i = rng.gen_range(0..n);
                let k = object_key(i);
                let t1 = Instant::now();
                if db.objects.get(&k).unwrap().is_some() {
                    found += 1;
                }
                lat.push(t1.elapsed().as_nanos() as u64);
            }
            let tot = t.elapsed().as_secs_f64();
            if reads > 0 { lat.remove(0); }
            let reads = lat.len();
            lat.sort();
            println!(
                "reads: {} of {} found (count {}), p50 {:.1}us, p99 {:.1}us, max {:.1}us, total {:.2}s | {}",
                found, reads, n,
                lat[reads / 2] as f64 / 1e3, lat[reads * 99 / 100] as f64 / 1e3, lat[reads - 1] as f64 / 1e3, tot, rss()
            );
            unsafe { libc::malloc_trim(0) };
            println!("after malloc_trim(0): {}", rss());
            let ct = close(db, flush);
            println!("close: {:.3}s", ct);
        }
        "crash" => {
            let n: u64 = arg(&args, "--n").map(|v| v.parse().unwrap()).unwrap_or(20_000);
            let _ = std::fs::remove_file(&marker);
            let db = open_db(&dir);
            let base = count(&db);
            std::fs::write(&marker, format!("{} 0 0 0 0 0 0 0 0\n", base)).unwrap();
            let s = Arc::new(Shared {
                db,
                stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
                access: Mutex::new(()),
                started: AtomicU64::new(0),
                done: (0..THREADS).map(|_| AtomicU64::new(0)).collect(),
                base,
                commit_max_us: AtomicU64::new(0),
                slow_commits: AtomicU64::new(0),
                slow_commit_us: AtomicU64::new(0),
                kill_at: knob("--kill-at", u64::MAX),
            });
            let stop = Arc::new(AtomicBool::new(false));
            let _p = spawn_persister(s.clone(), stop.clone(), Some(marker.clone()));
            let t0 = Instant::now();
            run_writers(&s, n);
            println!("crash: wrote {} objects in {:.1}s; {} | {}; {}; killing", n, t0.elapsed().as_secs_f64(), rss(), stats(&s.db), commits(&s));
            use std::io::Write;
            std::io::stdout().flush().unwrap();
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        _ => eprintln!("usage: fill|open|crash --dir D [--n N] [--idle-secs S] [--reads R]"),
    }
}
