//! `mosmon` in a real terminal (tmux): its bars follow the keys (l s m u d q) with the
//! figures the daemons report, and `mps --watch` refreshes its table with a NODE column.
//! Needs tmux; skips when it is missing, and fails instead under `CI=true`. The tmux session
//! is killed on drop, also when an assertion fails.

use std::process::Command;
use std::time::Duration;

use omnode_tests::{Cluster, omnode_bin, wait_for};

struct Tmux(String);

impl Tmux {
    fn start(name: &str, cmd: &str) -> Tmux {
        let st = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "120",
                "-y",
                "30",
                cmd,
            ])
            .status()
            .expect("tmux");
        assert!(st.success(), "tmux new-session failed");
        Tmux(name.to_string())
    }

    fn screen(&self) -> String {
        let o = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn keys(&self, k: &str) {
        let st = Command::new("tmux")
            .args(["send-keys", "-t", &self.0, k])
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["has-session", "-t", &self.0])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Waits until the screen shows `want`.
    fn expect(&self, want: &str) -> String {
        wait_for(Duration::from_secs(10), || {
            let s = self.screen();
            s.contains(want).then_some(s)
        })
        .unwrap_or_else(|| panic!("screen never showed {want:?}:\n{}", self.screen()))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}

fn have_tmux() -> bool {
    if Command::new("tmux").arg("-V").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but tmux is missing"
    );
    eprintln!("SKIPPED: tmux is not installed");
    false
}

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

#[test]
fn mosmon_bars_follow_the_keys() {
    if !have_tmux() {
        return;
    }
    let mut c = cluster("1 127.0.0.201 3\n", 3);
    // node 2's speed, as the speed bars must show it (speed x capacity)
    let s = c.status(1).unwrap();
    let r2 = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == 2)
        .unwrap()
        .clone();
    let speed = (r2["speed"].as_f64().unwrap() * r2["capacity"].as_f64().unwrap()).round();
    let mem_pct = {
        let (t, f) = (
            r2["total_mem"].as_u64().unwrap(),
            r2["free_mem"].as_u64().unwrap(),
        );
        (t - f) * 100 / t
    };

    let cmd = format!(
        "'{}' mon --interval 0.3 --socket '{}'",
        omnode_bin().display(),
        c.socket(1).display()
    );
    let t = Tmux::start(&format!("omnode-mosmon-{}", std::process::id()), &cmd);
    let load = t.expect("mosmon: load");
    assert!(load.contains("node 1 of 3"), "{load}");
    t.keys("s");
    let scr = t.expect("mosmon: speed");
    assert!(
        scr.contains(&format!("{speed:.0}")),
        "speed {speed} not shown:\n{scr}"
    );
    t.keys("m");
    let scr = t.expect("mosmon: memory");
    // memory moves a little between samples: the percentage, give or take one
    assert!(
        (mem_pct.saturating_sub(1)..=mem_pct + 1).any(|p| scr.contains(&format!("{p}%"))),
        "memory {mem_pct}% not shown:\n{scr}"
    );
    t.keys("u");
    t.expect("mosmon: utilisation");
    t.keys("t");
    t.expect("total: 3 nodes up");
    // node 3 goes down: hidden, then shown DEAD with `d`
    c.kill(3);
    wait_for(Duration::from_secs(30), || {
        c.up(1).filter(|u| *u == vec![1, 2])
    })
    .expect("node 3 never seen down");
    t.expect("total: 2 nodes up");
    assert!(!t.screen().contains("DEAD"));
    t.keys("d");
    t.expect("DEAD");
    t.keys("l");
    t.expect("mosmon: load");
    t.keys("q");
    let gone = wait_for(Duration::from_secs(10), || (!t.alive()).then_some(()));
    assert!(gone.is_some(), "q did not quit:\n{}", t.screen());
}

#[test]
fn mps_watch_refreshes_with_a_node_column() {
    if !have_tmux() {
        return;
    }
    let c = cluster("1 127.0.0.205 1\n", 1);
    let cmd = format!(
        "'{}' ps --watch 0.3 --socket '{}'",
        omnode_bin().display(),
        c.socket(1).display()
    );
    let t = Tmux::start(&format!("omnode-mpsw-{}", std::process::id()), &cmd);
    let scr = t.expect("NODE");
    assert!(scr.contains("PID") && scr.contains("HOME"), "{scr}");
    // still refreshing: the daemon going away shows up on the screen
    drop(c);
    t.expect("omnode:");
}
