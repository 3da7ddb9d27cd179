//! Process trees spread (issue 10 part 3): `mosrun -t make -j4` at node 1 of a cluster of
//! daemons each in its own cgroup capped at half a CPU places every program its tree starts
//! (at its exec, before its first instruction): the compilers run on other nodes, and the
//! build gives byte-identical objects and binary, and make's exit code, as a plain local make;
//! an interrupt of make's process group at home ends the whole tree on every node.
//!
//! Needs root (cgroups, ptrace), the cgroup v1 `cpu` hierarchy, make and cc; skips with the
//! reason otherwise, and fails instead under `CI=true`. Every cgroup, daemon and process it
//! creates is removed by Drop guards, also when an assertion fails. Addresses 127.0.31.N.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use omnode_tests::cgcluster::{CgCluster, Children, quote, skip_or_fail, unsupported};
use omnode_tests::omnode_bin;

/// Why these tests cannot run here, if they cannot.
fn cannot() -> Option<String> {
    unsupported().or_else(|| {
        ["make", "cc"]
            .iter()
            .find(|t| {
                Command::new("sh")
                    .args(["-c", &format!("command -v {t}")])
                    .output()
                    .map_or(true, |o| !o.status.success())
            })
            .map(|t| format!("needs {t}"))
    })
}

/// A small C project in `dir`: `n` source files, each with a function that takes a while to
/// compile at -O2 (unrolled arithmetic), a main calling them all, and a Makefile.
fn project(dir: &Path, n: usize, broken: Option<usize>) {
    std::fs::create_dir_all(dir).unwrap();
    let mut main = String::from("#include <stdio.h>\n");
    for i in 0..n {
        main.push_str(&format!("unsigned long f{i}(unsigned long);\n"));
        let mut body = format!("unsigned long f{i}(unsigned long x) {{\n  unsigned long a = x;\n");
        for k in 0..400 {
            body.push_str(&format!(
                "  a = a * {} + (a >> {}) ^ {}UL;\n",
                2 * (k + i) + 1,
                k % 13 + 1,
                k * 7919 + i
            ));
        }
        body.push_str("  return a;\n}\n");
        if broken == Some(i) {
            body.push_str("this is not C\n");
        }
        std::fs::write(dir.join(format!("f{i}.c")), body).unwrap();
    }
    main.push_str("int main(void) {\n  unsigned long s = 0;\n");
    for i in 0..n {
        main.push_str(&format!("  s += f{i}({i}UL);\n"));
    }
    main.push_str("  printf(\"%lu\\n\", s);\n  return 0;\n}\n");
    std::fs::write(dir.join("main.c"), main).unwrap();
    let objs: Vec<String> = (0..n)
        .map(|i| format!("f{i}.o"))
        .chain(["main.o".into()])
        .collect();
    std::fs::write(
        dir.join("Makefile"),
        format!(
            "OBJS = {}\nprog: $(OBJS)\n\tcc -o prog $(OBJS)\n%.o: %.c\n\tcc -O2 -c $< -o $@\n",
            objs.join(" ")
        ),
    )
    .unwrap();
}

/// `make -j4` run by `mosrun -t` at node 1, in `dir`; its output and exit code.
fn tree_make(cc: &CgCluster, dir: &Path) -> (std::process::Output, u32) {
    let args = vec![
        omnode_bin().display().to_string(),
        "run".into(),
        "--socket".into(),
        cc.c.socket(1).display().to_string(),
        "-t".into(),
        "--".into(),
        "make".into(),
        "-j4".into(),
    ];
    let child = cc
        .command_in(1, &format!("{} 2>&1", quote(&args)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut kids = Children(vec![child]);
    let mut stdout = kids.0[0].stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut b);
        b
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = kids.0[0].try_wait().unwrap() {
            break st;
        }
        // the Drop guards end it (and the cluster) when this fails
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "mosrun -t make did not end in 300 s\n{}",
            cc.logs(4)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::process::Output {
        status,
        stdout: reader.join().unwrap(),
        stderr: Vec::new(),
    };
    (out, pid)
}

/// Children of `pid` placed on another node and moved there, by the program they ran, from
/// node 1's log: (child PID, program file name).
fn placed(log: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for line in log
        .lines()
        .filter(|l| l.contains("mosrun --tree: placed on node"))
    {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(|v| v.trim_matches('"').to_string())
        };
        if let (Some(child), Some(exe)) = (field("child="), field("exe=")) {
            let name = Path::new(&exe)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Ok(c) = child.parse() {
                out.push((c, name));
            }
        }
    }
    out
}

/// `mosrun -t make -j4` builds the same objects and binary as a local `make -j4`, with
/// compilers (cc1, as) moved to other nodes at their exec; make's exit code is 0 as at home.
/// A syntax error in one file gives make's failure exit code, as a local make does.
#[test]
fn tree_make_builds_the_same_binary_with_compilers_elsewhere() {
    const TEST: &str = "tree_make_builds_the_same_binary_with_compilers_elsewhere";
    if let Some(r) = cannot() {
        return skip_or_fail(TEST, &r);
    }
    let cc = CgCluster::start("1 127.0.31.1 4\n", 4, "h10tree-make");
    let root = cc.c.dir.path();
    let (local, spread) = (root.join("local"), root.join("spread"));
    project(&local, 8, None);
    project(&spread, 8, None);
    let plain = Command::new("make")
        .arg("-j4")
        .current_dir(&local)
        .output()
        .unwrap();
    assert!(plain.status.success(), "local make: {plain:?}");

    let (out, _) = tree_make(&cc, &spread);
    let log = cc.c.log_text(1);
    assert!(
        out.status.success(),
        "mosrun -t make: {:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        cc.logs(4)
    );
    for f in (0..8)
        .map(|i| format!("f{i}.o"))
        .chain(["main.o".into(), "prog".into()])
    {
        let a = std::fs::read(local.join(&f)).unwrap();
        let b = std::fs::read(spread.join(&f)).unwrap_or_default();
        assert!(a == b, "{f} differs from the local build\n{}", cc.logs(4));
    }
    let run = Command::new(spread.join("prog")).output().unwrap();
    let want = Command::new(local.join("prog")).output().unwrap();
    assert_eq!(run.stdout, want.stdout);
    // compilers ran elsewhere: placed at their exec, and moved
    let moved: BTreeSet<String> = placed(&log)
        .into_iter()
        .filter(|(c, _)| log.contains(&format!("process {c} moved to node")))
        .map(|(_, name)| name)
        .collect();
    assert!(
        moved.contains("cc1") || moved.iter().any(|n| n.ends_with("-as")),
        "no compiler moved to another node: {moved:?}\n{}",
        cc.logs(4)
    );

    // a syntax error: make fails as at home
    let (bad_local, bad_spread) = (root.join("bad-local"), root.join("bad-spread"));
    project(&bad_local, 8, Some(3));
    project(&bad_spread, 8, Some(3));
    let plain = Command::new("make")
        .arg("-j4")
        .current_dir(&bad_local)
        .output()
        .unwrap();
    assert!(!plain.status.success());
    let (out, _) = tree_make(&cc, &bad_spread);
    assert_eq!(
        out.status.code(),
        plain.status.code(),
        "exit code differs from a local make\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        cc.logs(4)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("f3.c"),
        "the compiler's error is missing: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Every process whose command line mentions `marker` (all nodes run on this machine, so
/// one `/proc` shows them all).
fn running(marker: &str) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(marker) {
            out.push((pid, cmd));
        }
    }
    out
}

/// An interrupt (SIGINT to make's process group at home, as Ctrl-C sends it) ends the whole
/// tree: make ends, and no process of it is left on any node (no mps row, nothing in /proc).
#[test]
fn interrupt_of_the_group_ends_the_tree_on_every_node() {
    const TEST: &str = "interrupt_of_the_group_ends_the_tree_on_every_node";
    if let Some(r) = cannot() {
        return skip_or_fail(TEST, &r);
    }
    let cc = CgCluster::start("1 127.0.31.11 4\n", 4, "h10tree-int");
    let dir = cc.c.dir.path().join("spin");
    std::fs::create_dir_all(&dir).unwrap();
    let prog = omnode_tests::moving::compile(cc.c.dir.path(), "lcg");
    // four jobs that each spin far longer than the test waits
    let spin = dir.join("h10tree-spin");
    std::fs::copy(&prog, &spin).unwrap();
    let jobs: Vec<String> = (0..4).map(|i| format!("j{i}")).collect();
    let mut mk = format!("all: {}\n", jobs.join(" "));
    for j in &jobs {
        mk.push_str(&format!("{j}:\n\t{} 100000000\n", spin.display()));
    }
    std::fs::write(dir.join("Makefile"), mk).unwrap();
    let args = vec![
        omnode_bin().display().to_string(),
        "run".into(),
        "--socket".into(),
        cc.c.socket(1).display().to_string(),
        "-t".into(),
        "--".into(),
        "make".into(),
        "-j4".into(),
    ];
    // its own process group (setsid: sh is no group leader, so setsid execs in place)
    let child = cc
        .command_in(1, &format!("setsid {}", quote(&args)))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let make = child.id() as i32;
    let mut kids = Children(vec![child]);
    let marker = spin.display().to_string();
    // the four jobs run, and at least one was moved
    let seen = omnode_tests::wait_for(Duration::from_secs(60), || {
        let elsewhere = cc.ps(1).len();
        (running(&marker).len() >= 4 && elsewhere >= 1).then_some(elsewhere)
    });
    assert!(
        seen.is_some(),
        "the jobs did not start or none moved: {:?}, mps {:?}\n{}",
        running(&marker),
        cc.ps(1),
        cc.logs(4)
    );
    // SAFETY: kill of our own process group (make's, created by setsid above).
    assert_eq!(unsafe { libc::kill(-make, libc::SIGINT) }, 0);
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = kids.0[0].try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "make did not end after SIGINT; left: {:?}\n{}",
            running(&marker),
            cc.logs(4)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "make ended with {status:?}");
    let gone = omnode_tests::wait_for(Duration::from_secs(15), || {
        let left = running(&marker);
        let rows: Vec<_> = (1..=4).flat_map(|n| cc.ps_all(n)).collect();
        (left.is_empty() && rows.is_empty()).then_some(())
    });
    assert!(
        gone.is_some(),
        "left after SIGINT: {:?}, mps rows {:?}\n{}",
        running(&marker),
        (1..=4).flat_map(|n| cc.ps_all(n)).collect::<Vec<_>>(),
        cc.logs(4)
    );
}
