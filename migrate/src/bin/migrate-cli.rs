//! Minimal driver of the engine, for tests and debugging without the omnode binary:
//! `migrate-cli freeze PID FILE [--leave-running]`, `migrate-cli thaw FILE [--wait] [--same-pid]`, `migrate-cli image FILE`.
use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::OpenOptionsExt;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let flag = |f: &str| a.iter().any(|x| x == f);
    match a.get(1).map(String::as_str) {
        Some("freeze") => {
            // 0600: an image holds the process's memory
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&a[3])
                .unwrap();
            let o = migrate::FreezeOptions {
                leave_running: flag("--leave-running"),
            };
            match migrate::freeze(a[2].parse().unwrap(), &f, &o) {
                Ok(r) => eprintln!("{r:?}"),
                Err(e) => {
                    eprintln!("migrate-cli: {e}");
                    std::process::exit(1)
                }
            }
        }
        Some("thaw") => {
            let f = BufReader::with_capacity(1 << 20, File::open(&a[2]).unwrap());
            let o = migrate::ThawOptions {
                same_pid: flag("--same-pid"),
                ..Default::default()
            };
            match migrate::thaw(f, &o) {
                Ok(t) => {
                    eprintln!("{t:?}");
                    if flag("--wait") {
                        let mut st = 0;
                        // SAFETY: waiting for our own child.
                        unsafe { libc::waitpid(t.pid, &mut st, 0) };
                        eprintln!("status {st:#x}");
                    }
                }
                Err(e) => {
                    eprintln!("migrate-cli: {e}");
                    std::process::exit(1)
                }
            }
        }
        Some("image") => match migrate::inspect(BufReader::new(File::open(&a[2]).unwrap())) {
            Ok(s) => {
                for (v, n) in s.process.vmas.iter().zip(&s.vma_bytes) {
                    println!(
                        "{:x}-{:x} {:o} {} {:?} {}",
                        v.start, v.end, v.prot, n, v.kind, v.name
                    );
                }
                println!("{:#?}", s.process.fds);
                println!("itimers {:?}", s.process.itimers);
                let x = &s.process.xstate;
                println!("xstate {} bytes, xstate_bv {:x?}", x.len(), x.get(512..520));
            }
            Err(e) => eprintln!("migrate-cli: {e}"),
        },
        _ => eprintln!("usage: migrate-cli freeze PID FILE | thaw FILE | image FILE"),
    }
}
