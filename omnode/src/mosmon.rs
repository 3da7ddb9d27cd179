//! `omnode mon` (classic name `mosmon`): a live terminal view of the cluster, one bar per
//! node, refreshed from the control socket's `status` every second. The openMosix keys: `l`
//! load, `s` speed, `m` memory, `u` utilisation, `d` show dead (down) nodes too, `t` a
//! totals line, `q` quit, arrows scroll when the nodes do not fit.
//!
//! Owns only the drawing and the keys; the figures are the daemon's (`status`). The screen
//! model ([`View`]) is plain data, tested without a terminal.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Style};
use ratatui::text::Line;
use ratatui::widgets::{Bar, BarChart, BarGroup, Block, Borders, Paragraph};

use crate::Error;
use crate::control::{self, NodeRow, Request, Response, StatusReport};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    #[command(flatten)]
    pub socket: crate::SocketArg,
}

/// What the bars show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Load,
    Speed,
    Memory,
    Util,
}

impl Mode {
    fn title(self) -> &'static str {
        match self {
            Mode::Load => "load (runnable processes)",
            Mode::Speed => "speed (MHz x capacity)",
            Mode::Memory => "memory used (%)",
            Mode::Util => "utilisation (%)",
        }
    }
}

/// The screen model: the last report and the user's choices.
#[derive(Debug, Clone)]
pub struct View {
    pub mode: Mode,
    pub dead: bool,
    pub totals: bool,
    /// The first node shown (scrolling).
    pub first: usize,
    pub report: Option<StatusReport>,
    pub error: Option<String>,
}

/// One bar: the node, its value scaled for the chart, and the text on it.
#[derive(Debug, Clone, PartialEq)]
pub struct BarModel {
    pub id: u32,
    pub value: u64,
    pub label: String,
}

impl View {
    pub fn new() -> View {
        View {
            mode: Mode::Load,
            dead: false,
            totals: false,
            first: 0,
            report: None,
            error: None,
        }
    }

    /// Applies a key; false when it means quit.
    pub fn key(&mut self, k: KeyCode) -> bool {
        match k {
            KeyCode::Char('q') | KeyCode::Esc => return false,
            KeyCode::Char('l') => self.mode = Mode::Load,
            KeyCode::Char('s') => self.mode = Mode::Speed,
            KeyCode::Char('m') => self.mode = Mode::Memory,
            KeyCode::Char('u') => self.mode = Mode::Util,
            KeyCode::Char('d') => self.dead = !self.dead,
            KeyCode::Char('t') => self.totals = !self.totals,
            KeyCode::Right | KeyCode::Down => {
                self.first = (self.first + 1).min(self.rows().len().saturating_sub(1));
            }
            KeyCode::Left | KeyCode::Up => self.first = self.first.saturating_sub(1),
            _ => {}
        }
        true
    }

    fn rows(&self) -> Vec<&NodeRow> {
        self.report
            .iter()
            .flat_map(|r| r.nodes.iter())
            .filter(|n| self.dead || (n.up && n.load.is_some()))
            .collect()
    }

    /// The bars of the nodes shown, from the first scrolled to.
    pub fn bars(&self) -> Vec<BarModel> {
        self.rows()
            .into_iter()
            .skip(self.first)
            .map(|n| {
                let (value, label) = match (n.up, self.figure(n)) {
                    (true, Some((v, l))) => (v, l),
                    _ => (0, "DEAD".to_string()),
                };
                BarModel {
                    id: n.id,
                    value,
                    label,
                }
            })
            .collect()
    }

    /// The bar value (hundredths, or MHz) and its text for node `n` in the current mode.
    fn figure(&self, n: &NodeRow) -> Option<(u64, String)> {
        Some(match self.mode {
            Mode::Load => {
                let l = n.load?;
                ((l * 100.0).round() as u64, format!("{l:.2}"))
            }
            Mode::Speed => {
                let s = f64::from(n.speed?) * n.capacity.unwrap_or(1.0);
                (s.round() as u64, format!("{s:.0}"))
            }
            Mode::Memory => {
                let (t, f) = (n.total_mem?, n.free_mem?);
                let pct = if t == 0 {
                    0
                } else {
                    (t.saturating_sub(f) * 100 / t) as u64
                };
                (pct, format!("{pct}%"))
            }
            Mode::Util => {
                let u = u64::from(crate::mosctl::utilisation(n.load?, n.capacity?));
                (u, format!("{u}%"))
            }
        })
    }

    /// The totals line (`t`): nodes up, the summed load, speed and memory.
    pub fn totals_line(&self) -> String {
        let rows: Vec<&NodeRow> = self
            .report
            .iter()
            .flat_map(|r| r.nodes.iter())
            .filter(|n| n.up)
            .collect();
        let load: f64 = rows.iter().filter_map(|n| n.load).sum();
        let cap: f64 = rows.iter().filter_map(|n| n.capacity).sum();
        let mem: u64 = rows.iter().filter_map(|n| n.total_mem).sum();
        let free: u64 = rows.iter().filter_map(|n| n.free_mem).sum();
        format!(
            "total: {} nodes up, load {load:.2} on {cap:.2} CPUs, {} MiB free of {} MiB",
            rows.len(),
            free >> 20,
            mem >> 20
        )
    }

    fn draw(&self, f: &mut ratatui::Frame) {
        let area = f.area();
        let [top, chart, bottom] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(2),
        ])
        .areas(area);
        let who = self
            .report
            .as_ref()
            .map_or("no answer yet".to_string(), |r| {
                format!("node {} of {}", r.node, r.nodes.len())
            });
        f.render_widget(
            Paragraph::new(format!("mosmon: {} | {who}", self.mode.title())),
            top,
        );
        let bars: Vec<Bar> = self
            .bars()
            .into_iter()
            .map(|b| {
                let under = if b.label == "DEAD" {
                    format!("{} DEAD", b.id)
                } else {
                    b.id.to_string()
                };
                Bar::default()
                    .value(b.value)
                    .text_value(b.label)
                    // a dead node's bar is empty: say so under it
                    .label(Line::from(under))
                    .style(Style::default().fg(Color::Cyan))
            })
            .collect();
        let width = 7u16;
        f.render_widget(
            BarChart::default()
                .block(Block::default().borders(Borders::ALL))
                .bar_width(width)
                .bar_gap(1)
                .data(BarGroup::default().bars(&bars)),
            chart,
        );
        let mut help = String::from(
            "l load  s speed  m memory  u util  d dead  t total  arrows scroll  q quit",
        );
        if self.totals {
            help = format!("{}\n{help}", self.totals_line());
        }
        if let Some(e) = &self.error {
            help = format!("{e}\n{help}");
        }
        f.render_widget(Paragraph::new(help), bottom);
    }
}

impl Default for View {
    fn default() -> Self {
        View::new()
    }
}

fn fetch(path: &PathBuf) -> Result<StatusReport, String> {
    match control::call(path, &Request::Status) {
        Ok(Response::Status(r)) => Ok(r),
        Ok(Response::Error(e)) => Err(e),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

pub fn run(a: Args) -> Result<(), Error> {
    let path = a.socket.socket.clone();
    // Fail before taking over the terminal when the daemon is not there.
    let first = fetch(&path).map_err(|reason| Error::Refused {
        path: path.clone(),
        reason,
    })?;
    let interval = Duration::from_secs_f64(a.interval.clamp(0.1, 3600.0));
    let mut view = View::new();
    view.report = Some(first);
    let mut term = ratatui::init();
    let result = (|| -> std::io::Result<()> {
        let mut next = Instant::now() + interval;
        loop {
            term.draw(|f| view.draw(f))?;
            let wait = next.saturating_duration_since(Instant::now());
            if event::poll(wait)? {
                if let Event::Key(k) = event::read()? {
                    if k.kind == KeyEventKind::Press && !view.key(k.code) {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= next {
                match fetch(&path) {
                    Ok(r) => {
                        view.report = Some(r);
                        view.error = None;
                    }
                    Err(e) => view.error = Some(format!("no answer from the daemon: {e}")),
                }
                next = Instant::now() + interval;
            }
        }
    })();
    ratatui::restore();
    result.map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u32, up: bool, load: f64) -> NodeRow {
        NodeRow {
            id,
            addr: format!("127.0.0.{id}"),
            up,
            local: id == 1,
            source: "map".into(),
            since_s: 1.0,
            last_seen_s: None,
            load: up.then_some(load),
            load_age_ms: Some(0),
            cpus: Some(2),
            speed: Some(2000),
            free_mem: Some(1 << 30),
            total_mem: Some(4 << 30),
            capacity: Some(0.5),
            norm_load: None,
            link: None,
            link_why: None,
        }
    }

    #[test]
    fn keys_change_the_bars() {
        let mut v = View::new();
        v.report = Some(StatusReport {
            node: 1,
            nodes: vec![row(1, true, 0.25), row(2, false, 0.0), row(3, true, 1.0)],
        });
        let ids = |v: &View| v.bars().iter().map(|b| b.id).collect::<Vec<_>>();
        assert_eq!(ids(&v), vec![1, 3], "dead nodes hidden");
        assert_eq!(v.bars()[0].label, "0.25");
        assert!(v.key(KeyCode::Char('u')));
        assert_eq!(v.bars()[0].label, "50%");
        v.key(KeyCode::Char('m'));
        assert_eq!(v.bars()[0].label, "75%");
        v.key(KeyCode::Char('s'));
        assert_eq!(v.bars()[1].label, "1000");
        v.key(KeyCode::Char('d'));
        assert_eq!(ids(&v), vec![1, 2, 3]);
        assert_eq!(v.bars()[1].label, "DEAD");
        v.key(KeyCode::Right);
        assert_eq!(ids(&v), vec![2, 3]);
        v.key(KeyCode::Right);
        v.key(KeyCode::Right);
        assert_eq!(ids(&v), vec![3], "scrolling stops at the last node");
        v.key(KeyCode::Left);
        assert_eq!(ids(&v), vec![2, 3]);
        assert!(
            v.totals_line()
                .contains("2 nodes up, load 1.25 on 1.00 CPUs")
        );
        assert!(!v.key(KeyCode::Char('q')));
    }
}
