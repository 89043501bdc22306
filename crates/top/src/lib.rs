//! `understudy top --agent ADDR`: the group live in a terminal — who is active, every node's state
//! (Hot, or Warm and ready to take over, or why not), epoch, its service's self-report, and the
//! last failure events with their phases — refreshed in place. `q` or Esc quits.
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
use understudy_control::{ago, AgentClient};
use understudy_status::{Events, Group, State};

/// What one refresh learnt.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// The agent asked.
    pub agent: String,
    /// `GET /group`, when it answered.
    pub group: Option<Group>,
    /// `GET /events`, when it answered.
    pub events: Option<Events>,
    /// Why the agent did not answer.
    pub error: Option<String>,
}

/// The active node's name, when exactly one node is active.
pub fn active(group: &Group) -> Option<String> {
    match group.actives().as_slice() {
        [a] => Some(a.record.node.name.clone()),
        _ => None,
    }
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
            Span::styled(
                " UNREACHABLE ",
                Style::new().bg(Color::Red).fg(Color::White),
            ),
            Span::raw(format!(" {}: {e}", m.agent)),
        ]),
        (Some(g), None) => {
            let group = &g.group;
            match (active(g), g.actives().len()) {
                (Some(a), _) => Line::from(vec![
                    Span::raw(format!("group {group}  ")),
                    Span::styled(
                        format!(" ACTIVE {a} "),
                        Style::new().bg(Color::Green).fg(Color::Black),
                    ),
                ]),
                (None, 0) => Line::from(vec![
                    Span::raw(format!("group {group}  ")),
                    Span::styled(
                        " NO ACTIVE NODE ",
                        Style::new()
                            .bg(Color::Red)
                            .fg(Color::White)
                            .add_modifier(Modifier::BOLD),
                    ),
                ]),
                (None, n) => Line::from(vec![
                    Span::raw(format!("group {group}  ")),
                    Span::styled(
                        format!(" {n} NODES CLAIM TO BE ACTIVE "),
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
        Paragraph::new(title).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" understudy top "),
        ),
        head,
    );

    let rows: Vec<Row> = m
        .group
        .iter()
        .flat_map(|g| g.members.iter().map(move |member| (g, member)))
        .map(|(g, member)| {
            let (r, n) = (&member.record, &member.record.node);
            let detail = r.detail.as_deref().unwrap_or("");
            let (state, style) = if !member.fresh {
                ("gone", Style::new().fg(Color::DarkGray))
            } else if g.superseded(member) {
                ("stale", Style::new().fg(Color::DarkGray))
            } else if member.claims_hot() && g.actives().len() > 1 {
                ("Hot?", Style::new().fg(Color::Red))
            } else if member.claims_hot() {
                (
                    "Hot",
                    Style::new().fg(Color::Green).add_modifier(Modifier::BOLD),
                )
            } else if n.ready {
                ("Warm, ready", Style::new().fg(Color::Yellow))
            } else {
                ("Warm, not ready", Style::new().fg(Color::Red))
            };
            let why = if n.state == State::Hot || !member.fresh {
                detail.to_string()
            } else {
                let w = n.waiting.as_deref().unwrap_or("");
                if detail.is_empty() {
                    w.to_string()
                } else {
                    format!("{w} · {detail}")
                }
            };
            let pid = r
                .pid
                .filter(|_| member.fresh)
                .map(|p| format!(" pid {p}"))
                .unwrap_or_default();
            Row::new(vec![
                Cell::from(n.name.clone()),
                Cell::from(state).style(style),
                Cell::from(n.activation.to_string()),
                Cell::from(n.epoch.to_string()),
                Cell::from(ago(n.since_unix_ms)),
                Cell::from(format!("{}{pid}", r.service)),
                Cell::from(why),
            ])
        })
        .collect();
    let header = Row::new([
        "NODE",
        "STATE",
        "MODE",
        "EPOCH",
        "SINCE",
        "SERVICE",
        "WHY / DETAIL",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD));
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(12),
                Constraint::Length(15),
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
        .map(|e| e.takeovers.as_slice())
        .unwrap_or(&[]);
    for t in tks.iter().rev().take(7) {
        lines.push(Line::from(format!(
            "epoch {:>4}  {:>10}  {}  — {}",
            t.epoch,
            ago(t.detected_unix_ms),
            t.timeline()
                .iter()
                .map(|(v, k)| format!("{k} +{v:.2}"))
                .collect::<Vec<_>>()
                .join(" → "),
            t.cause,
        )));
    }
    if lines.is_empty() {
        lines.push(Line::raw("no takeovers by this node"));
    }
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(format!(
            " takeovers by {} (ms from detection) ",
            m.group.as_ref().map(|g| g.asked.as_str()).unwrap_or("")
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

/// One refresh as JSON (`understudy top --json`, for scripts and tests): the group, the active
/// node and the events, as the screen would show them; an error when the agent did not answer.
pub fn snapshot(client: &AgentClient, agent: &str) -> anyhow::Result<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let m = rt.block_on(fetch(client, agent));
    let Some(group) = &m.group else {
        anyhow::bail!(
            "{agent}: {}",
            m.error.as_deref().unwrap_or("no answer from the agent")
        );
    };
    Ok(serde_json::json!({
        "agent": m.agent,
        "active": active(group),
        "group": group,
        "events": m.events,
    }))
}

/// Run until `q`, Esc or Ctrl-C, asking the agent at `agent` through `client`.
pub fn run(client: AgentClient, agent: &str, interval: Duration) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
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
    use understudy_status::{ActivationMode, Member, MemberRecord, Node, ServiceState};

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

    fn member(name: &str, state: State, epoch: u64, ready: bool, waiting: &str) -> Member {
        Member {
            record: MemberRecord {
                service: ServiceState::Running,
                pid: Some(42),
                ..MemberRecord::of(Node {
                    name: name.into(),
                    group: "fix".into(),
                    state,
                    activation: ActivationMode::TryLock,
                    epoch,
                    since_unix_ms: 0,
                    waiting: (!waiting.is_empty()).then(|| waiting.to_string()),
                    holds_lock: state == State::Hot,
                    ready,
                    admin: "127.0.0.1:1".into(),
                    agent_pid: 1,
                })
            },
            age_ms: 0,
            fresh: true,
            agent_gone: false,
            renewal_age_ms: None,
        }
    }

    fn group(members: Vec<Member>) -> Option<Group> {
        Some(Group {
            group: "fix".into(),
            asked: "a".into(),
            members,
        })
    }

    #[test]
    fn shows_the_active_the_standbys_and_why_not_ready() {
        let m = Model {
            agent: "127.0.0.1:7701".into(),
            group: group(vec![
                member("a", State::Hot, 7, false, ""),
                member("b", State::Warm, 7, true, "waiting for the group lock"),
                member(
                    "c",
                    State::Warm,
                    6,
                    false,
                    "service failed; rejoining in 3 s",
                ),
            ]),
            events: Some(
                serde_json::from_value(json!({"node": "a", "events": [], "takeovers": [{
                    "epoch": 7, "cause": "node x died", "detected_unix_ms": 0,
                    "epoch_durable_ms": 0.4, "ready_ms": 1.5}]}))
                .unwrap(),
            ),
            error: None,
        };
        let s = screen(&m);
        assert!(s.contains("ACTIVE a"), "{s}");
        assert!(s.contains("Warm, ready"), "{s}");
        assert!(
            s.contains("Warm, not ready") && s.contains("rejoining in 3 s"),
            "{s}"
        );
        assert!(
            s.contains("epoch durable +0.40") && s.contains("node x died"),
            "{s}"
        );
        assert!(s.contains("takeovers by a"), "{s}");
    }

    #[test]
    fn says_so_when_no_node_or_two_nodes_are_active_or_the_agent_is_unreachable() {
        let none = Model {
            agent: "x".into(),
            group: group(vec![member("b", State::Warm, 1, true, "")]),
            ..Default::default()
        };
        assert!(screen(&none).contains("NO ACTIVE NODE"));
        let two = Model {
            agent: "x".into(),
            group: group(vec![
                member("a", State::Hot, 4, false, ""),
                member("b", State::Hot, 4, false, ""),
            ]),
            ..Default::default()
        };
        let s = screen(&two);
        assert!(
            s.contains("2 NODES CLAIM TO BE ACTIVE") && s.contains("Hot?"),
            "{s}"
        );
        let down = Model {
            agent: "127.0.0.1:1".into(),
            error: Some("connection refused".into()),
            ..Default::default()
        };
        assert!(screen(&down).contains("UNREACHABLE"));
    }
}
