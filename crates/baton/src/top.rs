//! `baton top`: the dashboard in a terminal (ratatui), refreshing in place: every group's
//! leader, term, grant rate and queue depth, and the hottest names with their holders and
//! waiters. `q`, Esc or Ctrl-C quits; `--iterations N` stops by itself after N refreshes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use baton_proto::v1 as pb;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use ratatui::Frame;

use super::*;

/// What one refresh fetched.
struct Sample {
    at: Instant,
    status: Option<pb::StatusResponse>,
    hot: Option<pb::HotResponse>,
    error: Option<String>,
}

pub(crate) async fn top(eps: String, interval: Duration, limit: u32, iterations: u64) -> ExitCode {
    let client = match connect(&eps).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut terminal = ratatui::init();
    let mut previous: Option<Sample> = None;
    let mut refreshes = 0u64;
    let outcome = loop {
        let (status, hot) = tokio::join!(client.status(), client.hot(limit));
        let error = match (&status, &hot) {
            (Err(e), _) | (_, Err(e)) => Some(e.to_string()),
            _ => None,
        };
        let sample = Sample { at: Instant::now(), status: status.ok(), hot: hot.ok(), error };
        if let Err(e) = terminal.draw(|f| draw(f, &eps, &sample, previous.as_ref())) {
            break Err(format!("cannot draw: {e}"));
        }
        previous = Some(sample);
        refreshes += 1;
        if iterations > 0 && refreshes >= iterations {
            break Ok(());
        }
        // Wait for the next refresh, or a key that quits.
        let until = Instant::now() + interval;
        let mut quit = false;
        while !quit {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match event::poll(left) {
                Ok(true) => {
                    if let Ok(Event::Key(k)) = event::read() {
                        quit = matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                            || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL));
                    }
                }
                Ok(false) => break,
                Err(e) => {
                    ratatui::restore();
                    return fail(1, format!("cannot read the terminal: {e}"));
                }
            }
        }
        if quit {
            break Ok(());
        }
    };
    ratatui::restore();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, e),
    }
}

fn ms(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.1}s", v as f64 / 1000.0)
    } else {
        format!("{v}ms")
    }
}

fn draw(f: &mut Frame, eps: &str, now: &Sample, before: Option<&Sample>) {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let dim = Style::default().fg(Color::DarkGray);
    let groups = now.status.as_ref().map_or(0, |s| s.groups.len());
    let [head, groups_area, hot_area, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(groups as u16 + 3),
        Constraint::Min(5),
        Constraint::Length(1),
    ])
    .areas(f.area());

    let node = now.status.as_ref().map_or("?".to_string(), |s| s.node_id.to_string());
    f.render_widget(
        Paragraph::new(Line::from(format!(
            "baton top — node {node} via {eps} — {} — q quits",
            baton_server::obs::api::wall_time(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
            )
        )))
        .style(bold),
        head,
    );

    // Grants per second per group: fencing tokens are issued one per grant.
    let tokens_before: BTreeMap<u64, u64> = before
        .and_then(|b| b.status.as_ref())
        .map(|s| s.groups.iter().map(|g| (g.id, g.last_token)).collect())
        .unwrap_or_default();
    let elapsed = before.map_or(0.0, |b| now.at.duration_since(b.at).as_secs_f64());
    let rows: Vec<Row> = now.status.as_ref().map_or_else(Vec::new, |s| {
        s.groups
            .iter()
            .map(|g| {
                let rate = match tokens_before.get(&g.id) {
                    Some(t) if elapsed > 0.0 => format!("{:.0}", g.last_token.saturating_sub(*t) as f64 / elapsed),
                    _ => "-".to_string(),
                };
                let leader = if g.leader == 0 { "none".to_string() } else { format!("node {}", g.leader) };
                Row::new(vec![
                    Cell::from(g.id.to_string()),
                    Cell::from(leader).style(Style::default().fg(if g.leader == 0 {
                        Color::Yellow
                    } else {
                        Color::Green
                    })),
                    Cell::from(g.term.to_string()),
                    Cell::from(rate),
                    Cell::from(g.sessions.to_string()),
                    Cell::from(g.locks.to_string()),
                    Cell::from(g.waiters.to_string()),
                    Cell::from(g.applied_index.to_string()),
                ])
            })
            .collect()
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(12),
        ],
    )
    .header(Row::new(["GROUP", "LEADER", "TERM", "GRANTS/S", "SESSIONS", "NAMES", "WAITING", "APPLIED"]).style(dim))
    .block(Block::bordered().title(" groups "));
    f.render_widget(table, groups_area);

    let rows: Vec<Row> = now.hot.as_ref().map_or_else(Vec::new, |h| {
        let mut names: Vec<&pb::HotName> = h.names.iter().collect();
        names.sort_by(|a, b| b.weight.cmp(&a.weight).then(a.name.cmp(&b.name)));
        names
            .into_iter()
            .map(|n| {
                let holders: Vec<String> =
                    n.holders.iter().map(|h| format!("s{}/t{} {}", h.session_id, h.token, ms(h.held_for_ms))).collect();
                Row::new(vec![
                    Cell::from(n.name.clone()).style(Style::default().fg(Color::LightRed)),
                    Cell::from(n.group.to_string()),
                    Cell::from(if n.kind.is_empty() { "-".to_string() } else { n.kind.clone() }),
                    Cell::from(if holders.is_empty() { "-".to_string() } else { holders.join(", ") }),
                    Cell::from(n.waiters.to_string()),
                    Cell::from(ms(n.oldest_wait_ms)),
                    Cell::from(n.waits.to_string()),
                    Cell::from(n.handoffs.to_string()),
                    Cell::from(ms(n.wait_ms_total.checked_div(n.handoffs).unwrap_or(0))),
                    Cell::from(ms(n.wait_ms_max)),
                ])
            })
            .collect()
    });
    let empty = rows.is_empty();
    let table = Table::new(
        rows,
        [
            Constraint::Min(16),
            Constraint::Length(6),
            Constraint::Length(10),
            Constraint::Min(18),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(7),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(9),
        ],
    )
    .header(
        Row::new([
            "NAME", "GROUP", "KIND", "HOLDERS", "WAITING", "OLDEST", "WAITS", "HANDOFFS", "AVG WAIT", "MAX WAIT",
        ])
        .style(dim),
    )
    .block(Block::bordered().title(if empty {
        " hottest names: no contention in the last minute or two "
    } else {
        " hottest names (last 1–2 minutes) "
    }));
    f.render_widget(table, hot_area);

    let foot_text = match &now.error {
        Some(e) => Line::from(format!("last refresh failed: {e}")).style(Style::default().fg(Color::Yellow)),
        None => {
            Line::from("grants/s counts fencing tokens issued; waits and handoffs are the hot-name sketch's").style(dim)
        }
    };
    f.render_widget(Paragraph::new(foot_text), foot);
}
