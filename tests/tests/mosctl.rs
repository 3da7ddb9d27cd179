//! `mosctl` against real daemons: bare values and `--json` agree with `status`, flags set and
//! clear one by one, privileged verbs refuse another user (SO_PEERCRED), `setspeed` reaches
//! the other node through the load gossip, `isup` follows a node going down, and `expel` sends a
//! guest home (its home takes it back) and `bring` has nothing left to bring.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use omnode_tests::{Cluster, omnode_bin, wait_for};

fn cluster(map: &str, n: u32) -> Cluster {
    let mut c = Cluster::new(map);
    for i in 1..=n {
        c.start(i);
    }
    let want: Vec<u64> = (1..=u64::from(n)).collect();
    for i in 1..=n {
        wait_for(Duration::from_secs(30), || {
            c.up_with_load(i).filter(|up| *up == want)
        })
        .unwrap_or_else(|| panic!("node {i} never saw {want:?} up:\n{}", c.log_text(i)));
    }
    c
}

fn mosctl(c: &Cluster, node: u32, args: &[&str]) -> Output {
    let sock = c.socket(node);
    Command::new(omnode_bin())
        .arg("mosctl")
        .args(args)
        .args(["--socket", sock.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .expect("run omnode mosctl")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"))
}

fn row(c: &Cluster, from: u32, id: u64) -> serde_json::Value {
    let s = c.status(from).expect("status");
    s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
        .unwrap()
}

#[test]
fn figures_are_bare_values_and_json_agreeing_with_status() {
    let c = cluster("1 127.0.0.181 2\n", 2);
    let r2 = row(&c, 1, 2);
    let o = mosctl(&c, 1, &["getspeed", "2"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(text(&o), r2["speed"].to_string());
    assert_eq!(
        text(&mosctl(&c, 1, &["getmem", "2"])),
        r2["total_mem"].to_string()
    );
    let free: u64 = text(&mosctl(&c, 1, &["getfree"])).parse().unwrap();
    let mem: u64 = text(&mosctl(&c, 1, &["getmem"])).parse().unwrap();
    assert!(free > 0 && free <= mem, "free {free} mem {mem}");
    let load: f64 = text(&mosctl(&c, 2, &["getload"])).parse().unwrap();
    assert!(load.is_finite() && load >= 0.0);
    let util: u32 = text(&mosctl(&c, 2, &["getutil"])).parse().unwrap();
    assert!(util <= 100);
    let j = json(&mosctl(&c, 1, &["getspeed", "2", "--json"]));
    assert_eq!(j["node"], 2);
    assert_eq!(j["speed"], r2["speed"]);
    assert!(json(&mosctl(&c, 1, &["getload", "--json"]))["load"].is_number());

    // whois: this node's number; a number's address; an address's number
    assert_eq!(text(&mosctl(&c, 2, &["whois"])), "2");
    assert_eq!(text(&mosctl(&c, 1, &["whois", "2"])), "127.0.0.182");
    assert_eq!(text(&mosctl(&c, 1, &["whois", "127.0.0.182"])), "2");
    let bad = mosctl(&c, 1, &["whois", "9"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no node 9"));

    // isup follows node 2 going down
    let up = mosctl(&c, 1, &["isup", "2"]);
    assert!(up.status.success());
    assert_eq!(text(&up), "yes");
    let mut c = c;
    c.kill(2);
    let down = wait_for(Duration::from_secs(30), || {
        let o = mosctl(&c, 1, &["isup", "2"]);
        (text(&o) == "no").then_some(o)
    })
    .expect("node 2 never reported down");
    assert!(!down.status.success(), "isup of a down node exits non-zero");
    assert_eq!(json(&mosctl(&c, 1, &["isup", "2", "--json"]))["up"], false);
}

#[test]
fn flags_set_and_clear_one_by_one_and_setspeed_reaches_the_peers() {
    let c = cluster("1 127.0.0.184 2\n", 2);
    let flags = |n| json(&mosctl(&c, n, &["status", "--json"]));
    let f = flags(1);
    for k in ["stay", "lstay", "block", "quiet"] {
        assert_eq!(f[k], false, "{f}");
    }
    for (on, off, key) in [
        ("stay", "nostay", "stay"),
        ("lstay", "nolstay", "lstay"),
        ("block", "noblock", "block"),
        ("quiet", "noquiet", "quiet"),
    ] {
        let o = mosctl(&c, 1, &[on]);
        assert!(o.status.success(), "{o:?}");
        let f = flags(1);
        for k in ["stay", "lstay", "block", "quiet"] {
            assert_eq!(f[k], k == key, "after {on}: {f}");
        }
        assert_eq!(flags(2)[key], false, "node 2 changed by node 1's {on}");
        assert!(text(&mosctl(&c, 1, &["status"])).contains(&format!("{key}: yes")));
        assert!(mosctl(&c, 1, &[off]).status.success());
        assert_eq!(flags(1)[key], false, "after {off}");
    }

    let o = mosctl(&c, 1, &["setspeed", "1234"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(flags(1)["speed"], 1234);
    let seen = wait_for(Duration::from_secs(15), || {
        (text(&mosctl(&c, 2, &["getspeed", "1"])) == "1234").then_some(())
    });
    assert!(seen.is_some(), "node 2 never saw node 1's new speed");
    assert_eq!(text(&mosctl(&c, 1, &["getspeed"])), "1234");
    let bad = mosctl(&c, 1, &["setspeed", "fast"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("'fast' is not a speed"));
}

/// Another user may read figures but not change the node (checked with SO_PEERCRED).
#[test]
fn privileged_verbs_refuse_another_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but this test needs root (to run mosctl as another user)"
        );
        eprintln!("SKIPPED: needs root to run mosctl as uid 65534");
        return;
    }
    let c = cluster("1 127.0.0.187 1\n", 1);
    let as_nobody = |args: &[&str]| {
        Command::new(omnode_bin())
            .arg("mosctl")
            .args(args)
            .args(["--socket", c.socket(1).to_str().unwrap()])
            .uid(65534)
            .gid(65534)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    for verb in [
        "block", "noblock", "stay", "lstay", "quiet", "expel", "bring",
    ] {
        let o = as_nobody(&[verb]);
        assert!(!o.status.success(), "{verb} as nobody: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("uid 65534 may not change this node"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let o = as_nobody(&["setspeed", "5"]);
    assert!(!o.status.success());
    let f = json(&mosctl(&c, 1, &["status", "--json"]));
    for k in ["stay", "lstay", "block", "quiet"] {
        assert_eq!(f[k], false, "{f}");
    }
    assert_eq!(f["speed"], serde_json::Value::Null);
    // reading is for everyone
    let o = as_nobody(&["getload"]);
    assert!(o.status.success(), "{o:?}");
    assert!(as_nobody(&["status"]).status.success());
}

struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn compile(dir: &Path, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("progs/{name}.c"));
    let out = dir.join(name);
    let st = Command::new("gcc")
        .args(["-O1", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("gcc is needed for these tests");
    assert!(st.success(), "gcc failed on {}", src.display());
    out
}

/// `expel` on the node a guest runs on sends it home (its home takes it back) and sets
/// block; `bring` on the home node then has nothing to move and sets lstay. (Bring with
/// processes away, and their outputs: tests/balance_moves.rs.)
#[test]
fn bring_and_expel_account_for_every_process() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but this test needs root (ptrace)"
        );
        eprintln!("SKIPPED: needs root to move processes");
        return;
    }
    let c = cluster("1 127.0.0.191 2\n", 2);
    let prog = compile(c.dir.path(), "lcg");
    let kid = Kid(Command::new(omnode_bin())
        .args([
            "run",
            "-j2",
            "--socket",
            c.socket(1).to_str().unwrap(),
            "--",
        ])
        .arg(&prog)
        .arg("100000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let pid = kid.0.id();
    let listed = |node: u32| {
        let o = Command::new(omnode_bin())
            .args(["ps", "--json", "--socket", c.socket(node).to_str().unwrap()])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v["processes"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["pid"] == pid && r["node"] == 2))
    };
    // generous: on a busy machine the exec and the move can take a while
    wait_for(Duration::from_secs(60), || listed(2).then_some(())).unwrap_or_else(|| {
        panic!(
            "{pid} never ran on node 2\n{}\n{}",
            c.log_text(1),
            c.log_text(2)
        )
    });

    // expel on node 2 asks node 1 to take its guest back: it leaves node 2
    let o = mosctl(&c, 2, &["expel"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        o.status.success(),
        "expel: {err}\n{}\n{}",
        c.log_text(1),
        c.log_text(2)
    );
    assert_eq!(text(&o), pid.to_string(), "expel: {err}");
    // home has it back when expel answers; node 2 drops its ended copy's entry right after
    assert!(
        wait_for(Duration::from_secs(5), || (!listed(2)).then_some(())).is_some(),
        "expel succeeded but {pid} still runs on node 2"
    );
    assert_eq!(json(&mosctl(&c, 2, &["status", "--json"]))["block"], true);
    // nothing of node 1 runs elsewhere now: bring moves nothing, says nothing, sets lstay
    let o = mosctl(&c, 1, &["bring", "--json"]);
    assert!(o.status.success(), "{o:?}");
    let j = json(&o);
    assert_eq!(j["moved"], serde_json::json!([]), "{j}");
    assert_eq!(j["failed"], serde_json::json!([]), "{j}");
    assert_eq!(json(&mosctl(&c, 1, &["status", "--json"]))["lstay"], true);
    drop(kid);
}
