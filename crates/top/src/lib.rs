//! `understudy top --agent ADDR`: the group live in a terminal — who is active, every node's state,
//! epoch, readiness (or why not), its service's self-report, and the last failure events with
//! their phases — refreshed in place. `q` or Esc quits.
//!
//! The screen is a pure function of what the agent answered ([`Model`] → [`draw`]), tested on
//! ratatui's test backend; the loop only fetches, draws and reads keys.
#![forbid(unsafe_code)]

use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table};
use ratatui::Frame;
use serde_json::Value;
use understudy_control::{ago, AgentClient};

/// What one refresh learnt.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// The agent asked.
    pub agent: String,
    /// `GET /group`, when it answered.
    pub group: Option<Value>,
    /// `GET /events`, when it answered.
    pub events: Option<Value>,
    /// Why the agent did not answer.
    pub error: Option<String>,
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn fresh(m: &Value) -> bool {
    m.get("fresh").and_then(Value::as_bool) != Some(false)
}

/// The active node's name: the fresh Hot record with the highest epoch.
pub fn active(group: &Value) -> Option<String> {
    group
        .get("members")?
        .as_array()?
        .iter()
        .filter(|m| s(m, "mode") == "Hot" && fresh(m))
        .max_by_key(|m| m.get("epoch").and_then(Value::as_u64).unwrap_or(0))
        .map(|m| s(m, "node").to_string())
}

/// Draw one screen.
pub fn draw(f: &mut Frame, m: &Model) {
    let [head, table, events, foot] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(5),
        Constraint::Length(9),
        Constraint::Length(1),
    ])
    .areas(f.area());

    let title = match (&m.group, &m.error) {
        (_, Some(e)) => Line::from(vec![
            Span::styled(" UNREACHABLE ", Style::new().bg(Color::Red).fg(Color::White)),
            Span::raw(format!(" {}: {e}", m.agent)),
        ]),
        (Some(g), None) => {
            let group = s(g, "group");
            match active(g) {
                Some(a) => Line::from(vec![
                    Span::raw(format!("group {group}  ")),
                    Span::styled(
                        format!(" ACTIVE {a} "),
                        Style::new().bg(Color::Green).fg(Color::Black),
                    ),
                ]),
                None => Line::from(vec![
                    Span::raw(format!("group {group}  ")),
                    Span::styled(
                        " NO ACTIVE NODE ",
                        Style::new()
                            .bg(Color::Red)
                            .fg(Color::White)
                            .add_modifier(Modifier::BOLD),
                    ),
                ]),
            }
        }
        (None, None) => Line::raw(format!("asking {} …", m.agent)),
    };
    f.render_widget(
        Paragraph::new(title).block(Block::default().borders(Borders::ALL).title(" understudy top ")),
        head,
    );

    let act = m.group.as_ref().and_then(active);
    let rows: Vec<Row> = m
        .group
        .as_ref()
        .and_then(|g| g.get("members"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|n| {
            let name = s(n, "node");
            let hot = act.as_deref() == Some(name);
            let ready = n.get("ready").and_then(Value::as_bool) == Some(true);
            let (state, style) = if !fresh(n) {
                ("gone", Style::new().fg(Color::DarkGray))
            } else if hot {
                ("ACTIVE", Style::new().fg(Color::Green).add_modifier(Modifier::BOLD))
            } else if s(n, "mode") == "Hot" {
                ("Hot?", Style::new().fg(Color::Red))
            } else if ready {
                ("standby ready", Style::new().fg(Color::Yellow))
            } else {
                ("not ready", Style::new().fg(Color::Red))
            };
            let why = if hot || !fresh(n) {
                s(n, "detail").to_string()
            } else {
                let w = s(n, "waiting");
                let d = s(n, "detail");
                if d.is_empty() { w.to_string() } else { format!("{w} · {d}") }
            };
            Row::new(vec![
                Cell::from(name.to_string()),
                Cell::from(state).style(style),
                Cell::from(s(n, "name").to_string()),
                Cell::from(
                    n.get("epoch")
                        .and_then(Value::as_u64)
                        .map(|e| e.to_string())
                        .unwrap_or_default(),
                ),
                Cell::from(
                    n.get("since_unix_ms")
                        .and_then(Value::as_u64)
                        .map(ago)
                        .unwrap_or_default(),
                ),
                Cell::from(format!(
                    "{}{}",
                    s(n, "service"),
                    n.get("pid")
                        .and_then(Value::as_u64)
                        .filter(|_| fresh(n))
                        .map(|p| format!(" pid {p}"))
                        .unwrap_or_default()
                )),
                Cell::from(why),
            ])
        })
        .collect();
    let header = Row::new(["NODE", "STATE", "MODE", "EPOCH", "SINCE", "SERVICE", "WHY / DETAIL"])
        .style(Style::new().add_modifier(Modifier::BOLD));
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(12),
                Constraint::Length(14),
                Constraint::Length(13),
                Constraint::Length(6),
                Constraint::Length(12),
                Constraint::Length(18),
                Constraint::Min(20),
            ],
        )
        .header(header)
        .block(Block::default().borders(Borders::ALL).title(" nodes ")),
        table,
    );

    let mut lines = Vec::new();
    let tks = m
        .events
        .as_ref()
        .and_then(|e| e.get("takeovers"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for t in tks.iter().rev().take(7) {
        let mut phases: Vec<(String, f64)> = t
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.ends_with("_ms") && !k.ends_with("unix_ms"))
            .filter_map(|(k, v)| Some((k.trim_end_matches("_ms").replace('_', " "), v.as_f64()?)))
            .collect();
        phases.sort_by(|a, b| a.1.total_cmp(&b.1));
        lines.push(Line::from(format!(
            "epoch {:>4}  {:>10}  {}  — {}",
            t.get("epoch").and_then(Value::as_u64).unwrap_or(0),
            t.get("detected_unix_ms").and_then(Value::as_u64).map(ago).unwrap_or_default(),
            phases
                .iter()
                .map(|(k, v)| format!("{k} +{v:.2}"))
                .collect::<Vec<_>>()
                .join(" → "),
            s(t, "cause"),
        )));
    }
    if lines.is_empty() {
        lines.push(Line::raw("no takeovers by this node"));
    }
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(format!(
            " takeovers by {} (ms from detection) ",
            m.group.as_ref().map(|g| s(g, "node")).unwrap_or("")
        ))),
        events,
    );
    f.render_widget(Paragraph::new("q: quit · refreshes every 500 ms"), foot);
}

async fn fetch(client: &AgentClient, agent: &str) -> Model {
    let (g, e) = tokio::join!(client.group(), client.events());
    Model {
        agent: agent.to_string(),
        error: g.as_ref().err().map(|e| e.to_string()),
        group: g.ok(),
        events: e.ok(),
    }
}

/// Run until `q`, Esc or Ctrl-C.
pub fn run(agent: &str, interval: Duration) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = AgentClient::new(agent, Duration::from_millis(800));
    let mut terminal = ratatui::init();
    let result = (|| -> anyhow::Result<()> {
        loop {
            let model = rt.block_on(fetch(&client, agent));
            terminal.draw(|f| draw(f, &model))?;
            if event::poll(interval)? {
                if let Event::Key(k) = event::read()? {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if k.kind == KeyEventKind::Press
                        && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c)
                    {
                        return Ok(());
                    }
                }
            }
        }
    })();
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;
    use serde_json::json;

    fn screen(m: &Model) -> String {
        let mut t = Terminal::new(TestBackend::new(120, 30)).unwrap();
        t.draw(|f| draw(f, m)).unwrap();
        let buf = t.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn shows_the_active_the_standbys_and_why_not_ready() {
        let m = Model {
            agent: "127.0.0.1:7701".into(),
            group: Some(json!({"group": "fix", "node": "a", "members": [
                {"node": "a", "mode": "Hot", "name": "TryLock", "epoch": 7, "fresh": true, "service": "running", "pid": 42},
                {"node": "b", "mode": "Warm", "name": "TryLock", "epoch": 7, "fresh": true, "ready": true, "waiting": "waiting for the group lock"},
                {"node": "c", "mode": "Warm", "name": "TryLock", "epoch": 6, "fresh": true, "ready": false, "waiting": "service failed; rejoining in 3 s"}
            ]})),
            events: Some(json!({"takeovers": [{"epoch": 7, "cause": "node x died", "epoch_durable_ms": 0.4, "ready_ms": 1.5}]})),
            error: None,
        };
        let s = screen(&m);
        assert!(s.contains("ACTIVE a"), "{s}");
        assert!(s.contains("standby ready"), "{s}");
        assert!(s.contains("not ready") && s.contains("rejoining in 3 s"), "{s}");
        assert!(s.contains("epoch durable +0.40") && s.contains("node x died"), "{s}");
    }

    #[test]
    fn says_so_when_no_node_is_active_or_the_agent_is_unreachable() {
        let none = Model {
            agent: "x".into(),
            group: Some(json!({"group": "g", "members": [{"node": "b", "mode": "Warm", "fresh": true}]})),
            ..Default::default()
        };
        assert!(screen(&none).contains("NO ACTIVE NODE"));
        let down = Model {
            agent: "127.0.0.1:1".into(),
            error: Some("connection refused".into()),
            ..Default::default()
        };
        assert!(screen(&down).contains("UNREACHABLE"));
    }
}
