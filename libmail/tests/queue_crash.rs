//! Crash simulation for the queue file layer.
//!
//! A child process (this test binary again, told by an environment
//! variable to act as the writer) writes queue files in a loop — single
//! syncs and group commits, short and long IDs, done marks, moves to
//! `deferred/` — and prints a line on stdout only after each step is
//! durable. The parent kills it with SIGKILL at random moments, 30 times,
//! in the same queue directory. Afterwards:
//!
//! * every file the child reported durable is there, complete, passes
//!   `verify`, and holds exactly what was written;
//! * every reported done mark and move is there;
//! * every file a scan calls complete opens and verifies: nothing
//!   incomplete passes for complete; what a kill left behind is only
//!   incomplete files (ID name, mode 0600) and empty `tmp.*` files.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use libmail::queue::{
    sync_many, Access, Found, IdStyle, Limits, NewRecipient, Ownership, Queue, QueueFile, QueueId,
    QueueLayout, Writer,
};

const CHILD_ENV: &str = "FACTEUR_QUEUE_CRASH_CHILD";
const TEST_NAME: &str = "queue_survives_kill9_at_random_moments";
const ROUNDS: usize = 30;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    (t ^ (u64::from(std::process::id()) << 32)) | 1
}

/// What a message with this ID holds: recipients and content lines,
/// derived from the ID so the parent can check it.
fn expected(id: &str) -> (Vec<String>, Vec<Vec<u8>>) {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    let mut r = Rng(h | 1);
    let rcpts = (0..1 + r.next() % 5)
        .map(|j| format!("r{j}.{id}@example.net"))
        .collect();
    let mut lines = vec![format!("Subject: {id}").into_bytes(), Vec::new()];
    for j in 0..r.next() % 12 {
        let len = (r.next() % 9000) as usize;
        lines.push(
            (0..len)
                .map(|k| b'!' + ((k as u64 + j) % 90) as u8)
                .collect(),
        );
    }
    (rcpts, lines)
}

fn layout(dir: &Path) -> QueueLayout {
    QueueLayout::new(dir, "incoming, deferred", 1).unwrap()
}

fn say(line: &str) {
    // Not println!: the test harness captures that. One write per line.
    let mut out = std::io::stdout().lock();
    out.write_all(format!("{line}\n").as_bytes()).unwrap();
    out.flush().unwrap();
}

fn child(dir: PathBuf) {
    let l = layout(&dir);
    let mut rng = Rng(seed());
    let started = Instant::now();
    say("READY");
    // Bounded, in case the parent is gone.
    while started.elapsed() < Duration::from_secs(10) {
        let batch = if rng.next() % 3 == 0 {
            1 + rng.next() % 6
        } else {
            1
        };
        let mut unsynced = Vec::new();
        for _ in 0..batch {
            let style = if rng.next() % 2 == 0 {
                IdStyle::Short
            } else {
                IdStyle::Long
            };
            let mut w = Writer::create(&l, Queue::Incoming, style).unwrap();
            let id = w.id().to_string();
            let (rcpts, lines) = expected(&id);
            w.sender(&format!("sender.{id}@example.org")).unwrap();
            for r in &rcpts {
                w.recipient(&NewRecipient::new(r)).unwrap();
            }
            w.start_content().unwrap();
            for line in &lines {
                w.content_line(line).unwrap();
            }
            unsynced.push(w.finish().unwrap());
        }
        let durable: Vec<_> = if unsynced.len() == 1 {
            vec![unsynced.pop().unwrap().sync().unwrap()]
        } else {
            sync_many(unsynced)
                .into_iter()
                .map(Result::unwrap)
                .collect()
        };
        for d in &durable {
            say(&format!("DURABLE {}", d.id()));
        }
        let d = &durable[0];
        match rng.next() % 4 {
            0 => {
                let mut q =
                    QueueFile::open(d.path(), Access::ReadWrite, &Limits::default()).unwrap();
                q.mark_done_durable(&[0]).unwrap();
                say(&format!("DONE {}", d.id()));
            }
            1 => {
                l.move_file(&d.id(), Queue::Incoming, Queue::Deferred, true)
                    .unwrap();
                say(&format!("MOVED {}", d.id()));
            }
            _ => {}
        }
    }
}

#[test]
fn queue_survives_kill9_at_random_moments() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(PathBuf::from(dir));
        return;
    }
    let root = std::env::temp_dir().join(format!("facteur-queue-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let l = layout(&root);
    l.create_or_repair(&Ownership::CurrentUser).unwrap();

    let mut rng = Rng(seed());
    let mut durable: HashSet<String> = HashSet::new();
    let mut done: HashSet<String> = HashSet::new();
    let mut moved: HashSet<String> = HashSet::new();
    for _ in 0..ROUNDS {
        let mut c = Command::new(std::env::current_exe().unwrap())
            .args([TEST_NAME, "--exact", "--test-threads=1", "--nocapture"])
            .env(CHILD_ENV, &root)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = c.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                // A line cut by the kill has no newline: it never counted.
                if line.ends_with('\n') {
                    let _ = tx.send(line.trim_end().to_string());
                }
                line.clear();
            }
        });
        // Wait for the child to be running, then kill it at a random moment.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut lines = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                // The harness's "test ... " may precede it on the line.
                Ok(l) if l.ends_with("READY") => break,
                Ok(l) => lines.push(l),
                Err(_) => assert!(Instant::now() < deadline, "child never got ready"),
            }
        }
        std::thread::sleep(Duration::from_micros(rng.next() % 20_000));
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        for line in lines {
            let line = line.rsplit("... ").next().unwrap_or(&line);
            if let Some(id) = line.strip_prefix("DURABLE ") {
                durable.insert(id.to_string());
            } else if let Some(id) = line.strip_prefix("DONE ") {
                done.insert(id.to_string());
            } else if let Some(id) = line.strip_prefix("MOVED ") {
                moved.insert(id.to_string());
            }
        }
    }
    assert!(
        durable.len() >= ROUNDS,
        "too few messages written: {}",
        durable.len()
    );

    // Every durable message is there, whole, with its marks and moves.
    let limits = Limits::default();
    for id in &durable {
        let qid = QueueId::parse(id).unwrap();
        let (queue, path) = l
            .find(&qid, &[Queue::Incoming, Queue::Deferred])
            .unwrap_or_else(|| panic!("durable {id} lost"));
        if moved.contains(id) {
            assert_eq!(queue, Queue::Deferred, "{id} reported moved");
        }
        let q = QueueFile::open(&path, Access::ReadOnly, &limits).unwrap();
        q.verify().unwrap();
        let env = q.envelope();
        let (rcpts, lines) = expected(id);
        assert_eq!(env.sender, format!("sender.{id}@example.org"));
        let got: Vec<&str> = env.recipients.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(got, rcpts);
        if done.contains(id) {
            assert!(env.recipients[0].done, "{id}: done mark lost");
        }
        let mut c = q.content();
        let mut line = Vec::new();
        let mut got_lines = Vec::new();
        while c.read_line(&mut line, 1 << 20).unwrap() {
            got_lines.push(line.clone());
        }
        assert_eq!(got_lines, lines, "{id}: content differs");
    }

    // Nothing incomplete passes for complete; the rest is only debris.
    let mut complete: HashMap<String, PathBuf> = HashMap::new();
    let (mut incomplete, mut temporary) = (0, 0);
    for queue in [Queue::Incoming, Queue::Deferred] {
        for f in l.scan_all(queue) {
            match f.unwrap() {
                Found::Complete { id, path } => {
                    let q = QueueFile::open(&path, Access::ReadOnly, &limits)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    q.verify().unwrap();
                    assert!(
                        complete.insert(id.to_string(), path).is_none(),
                        "{id} twice"
                    );
                }
                Found::Incomplete { id, path, .. } => {
                    assert!(!durable.contains(id.as_str()), "durable {id} is incomplete");
                    let e = QueueFile::open(&path, Access::ReadOnly, &limits).unwrap_err();
                    assert!(e.is_incomplete(), "{id}: {e}");
                    incomplete += 1;
                }
                Found::Temporary { path, .. } => {
                    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
                    temporary += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let unreported = complete.keys().filter(|id| !durable.contains(*id)).count();
    eprintln!(
        "{} durable reported, {} complete on disk ({unreported} completed but unreported: \
         killed between chmod and print), {incomplete} incomplete and {temporary} tmp files \
         left by kills",
        durable.len(),
        complete.len()
    );
    std::fs::remove_dir_all(&root).unwrap();
}
